"""Our generator on its own: step-by-step logits equal teacher forcing, items are independent, errors."""

from __future__ import annotations

import pytest
import torch

import fullduplex as fd
from fullduplex.lm import lm_preset
from fullduplex.lm.model import UNGENERATED_TOKEN

TINY = lm_preset("tiny")


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return fd.LMModel(TINY).eval()


def user_codes(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, TINY.card, (B, 8, T), generator=torch.Generator().manual_seed(seed))


def test_step_logits_equal_teacher_forced_logits(lm):
    """Generate greedily while recording logits, then teacher-force the produced sequence: same logits."""
    B, T = 2, 30
    user = user_codes(B, T, 1)
    gen = fd.Generator(lm, temp=0, temp_text=0)
    text_logits, audio_logits = [], []
    lm.text_linear.register_forward_hook(lambda m, i, o: text_logits.append(o.detach().clone()))
    hooks = [lin.register_forward_hook(lambda m, i, o: audio_logits.append(o.detach().clone())) for lin in lm.linears]
    outs = []
    try:
        with gen.streaming(B):
            outs = [gen.step(user[..., t : t + 1]) for t in range(T)]
    finally:
        lm.text_linear._forward_hooks.clear()
        for h in hooks:
            h.remove()
    generated = torch.cat(outs[1:], dim=-1)  # [B, 9, T - 1]: frame t's tokens arrive at step t + 1
    # The generator reads user frame t at step t where teacher forcing has frame t - 1 (its first user frame is
    # never seen): user frame t + 1 is teacher-forcing frame t.
    codes = torch.cat([generated, user[:, :, 1:T]], dim=1)  # [B, 17, T - 1]
    with torch.no_grad():
        forced = lm(codes)
    stepped_text = torch.cat(text_logits, dim=1)[:, : T - 1]  # [B, T-1, V]: step t predicts frame t's text
    assert (stepped_text - forced.text_logits[:, 0]).abs().max() < 1e-4
    stepped_audio = torch.stack(audio_logits, 0).view(T, 8, B, 1, -1)[:, :, :, 0]  # [T, 8, B, card]
    # Audio codebooks 1..7 are delayed one frame: step t samples cb0 of frame t and cb1..7 of frame t - 1.
    mask = forced.audio_mask
    for k in range(8):
        delay = TINY.delays[1 + k]
        for t in range(T - 1):
            step = t + delay
            if step < T and mask[0, k, t]:
                assert (stepped_audio[step, k].transpose(0, 1) - forced.audio_logits[:, k, t].t()).abs().max() < 1e-4


def test_reset_one_item_leaves_others_bit_identical(lm):
    B, T = 3, 30
    a, b = user_codes(B, T, 2), user_codes(B, T, 3)
    gen = fd.Generator(lm, temp=0, temp_text=0)
    with gen.streaming(B):
        solo = [gen.step(a[..., t : t + 1]) for t in range(T)]
    with gen.streaming(B):
        mixed = []
        for t in range(T):
            if t == 10:
                gen.reset(torch.tensor([False, True, False]))
            frame = a[..., t : t + 1].clone()
            if t >= 10:
                frame[1] = b[1, :, t - 10 : t - 9]
            mixed.append(gen.step(frame))
    with gen.streaming(1):
        fresh = [gen.step(b[1:2, :, t : t + 1]) for t in range(T - 10)]
    for t in range(1, T):
        assert torch.equal(mixed[t][[0, 2]], solo[t][[0, 2]])
    assert torch.equal(mixed[10][1], torch.full_like(mixed[10][1], UNGENERATED_TOKEN))  # just reset: nothing yet
    for t in range(11, T):
        assert torch.equal(mixed[t][1], fresh[t - 10][0])


def test_seeded_sampling_is_reproducible_and_validated(lm):
    user = user_codes(1, 8, 4)
    runs = []
    for _ in range(2):
        gen = fd.Generator(lm, seed=123)
        with gen.streaming(1):
            runs.append(torch.cat([gen.step(user[..., t : t + 1]) for t in range(8)][1:], dim=-1))
    assert torch.equal(runs[0], runs[1])
    gen = fd.Generator(lm)
    with pytest.raises(RuntimeError, match="streaming"):
        gen.step(user[..., :1])
    with gen.streaming(1), pytest.raises(ValueError, match="one frame per step"):
        gen.step(user[..., :2])
