"""Persona prompts: the schedule gives exactly the documented frames; forcing keeps step-by-step logits equal to
teacher forcing; forced and free items of one batch are independent; nothing forced changes nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import fullduplex as fd
from fullduplex.inference.prompt import (
    SILENCE_CODES,
    SINE_CODES,
    FillerCodes,
    Voice,
    build_schedule,
    prompt_step,
    role_tokens,
    run_prompt,
    step_inputs,
    wrap_system_tags,
)
from fullduplex.lm import lm_preset
from fullduplex.text import train_tokenizer

PERSONAPLEX = lm_preset("personaplex")
TINY = lm_preset("tiny")
TINY16 = replace(TINY, dep_q=16)
TINY_FILLER = FillerCodes(silence=(1, 2, 3, 4, 5, 6, 7, 8), sine=(9, 10, 11, 12, 13, 14, 15, 16))


def test_schedule_is_the_documented_frame_sequence():
    voice = Voice("v", codes=torch.arange(24).view(8, 3) + 100)  # 3 frames
    text = [17, 18, 19, 20]
    s = build_schedule(PERSONAPLEX, voice, text)
    assert s.tokens.shape == (17, 3 + 6 + 4 + 6) and not s.embedded.any() and s.embeddings is None
    assert s.phases == (("voice", 0, 3), ("silence", 3, 9), ("text", 9, 13), ("silence", 13, 19))
    pad, silence, sine = 3, torch.tensor(SILENCE_CODES), torch.tensor(SINE_CODES)
    for t in range(19):
        column = s.tokens[:, t]
        assert column[0] == (text[t - 9] if 9 <= t < 13 else pad), t
        assert torch.equal(column[1:9], voice.codes[:, t] if t < 3 else silence), t
        assert torch.equal(column[9:], sine), t  # the user's channel: the sine, throughout
    assert SILENCE_CODES == (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
    assert SINE_CODES == (430, 1268, 381, 1611, 1095, 1495, 56, 472)
    empty = build_schedule(PERSONAPLEX, None, [])  # no voice, empty role: the two silences only
    assert len(empty) == 12 and empty.phases == (("silence", 0, 6), ("silence", 6, 12))
    assert (empty.tokens[0] == 3).all() and torch.equal(empty.tokens[1:9, 5], silence)


def test_role_prompt_tokens(tmp_path):
    tok = train_tokenizer(["you are a kind teacher", "system prompt here"] * 10, tmp_path / "tok", 60, model_type="bpe")
    assert wrap_system_tags("  You are kind. ") == "<system> You are kind. <system>"
    assert wrap_system_tags("<system> as is <system>") == "<system> as is <system>"
    assert role_tokens(tok, "you are kind") == tok.encode("<system> you are kind <system>")
    assert role_tokens(tok, "   ") == [] and role_tokens(tok, None) == []


def test_step_inputs_force_what_each_step_samples():
    s = build_schedule(PERSONAPLEX, Voice("v", codes=torch.arange(16).view(8, 2)), [40, 41])
    inputs = step_inputs(s, PERSONAPLEX)
    T = len(s)
    for k, delay in enumerate(PERSONAPLEX.delays):
        for t in range(T):
            frame = t + 1 - delay
            assert bool(inputs.force_mask[k, t]) == (frame < T)
            if frame < T:
                assert inputs.force[k, t] == s.tokens[k, frame]
    assert torch.equal(inputs.user, s.tokens[9:])


@pytest.fixture(scope="module", params=["dep8", "dep16"])
def lm(request):
    torch.manual_seed(0)
    return fd.LMModel(TINY if request.param == "dep8" else TINY16).eval()


def tiny_schedule(config, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    voice = Voice("v", codes=torch.randint(0, config.card, (8, 4), generator=g))
    return build_schedule(config, voice, torch.randint(4, config.text_card, (5,), generator=g).tolist(), TINY_FILLER, silence_frames=2)


def test_step_logits_equal_teacher_forced_logits_with_the_prompt_forced(lm):
    cfg = lm.config
    schedule = tiny_schedule(cfg)
    P, T, B = len(schedule), len(schedule) + 14, 2
    user = torch.randint(0, cfg.card, (B, 8, T), generator=torch.Generator().manual_seed(1))
    user[:, :, :P] = schedule.tokens[9:, :P]
    gen = fd.Generator(lm, temp=0, temp_text=0)
    text_logits, audio_logits = [], []
    hooks = [lm.text_linear.register_forward_hook(lambda m, i, o: text_logits.append(o.detach().clone()))]
    hooks += [lin.register_forward_hook(lambda m, i, o: audio_logits.append(o.detach().clone())) for lin in lm.linears]
    inputs = step_inputs(schedule, cfg)
    try:
        with gen.streaming(B):
            outs = [prompt_step(gen, inputs, t) for t in range(P)]
            outs += [gen.step(user[..., t : t + 1]) for t in range(P, T)]
    finally:
        for h in hooks:
            h.remove()
    for t in range(1, P):  # forced frames come back as they were forced
        assert torch.equal(outs[t][:, :, 0], schedule.tokens[:9, t].expand(B, 9)), t
    generated = torch.cat(outs[1:], dim=-1)
    codes = torch.cat([generated, user[:, :, 1:T]], dim=1)  # [B, 17, T - 1]
    with torch.no_grad():
        forced = lm(codes)
    assert (torch.cat(text_logits, dim=1)[:, : T - 1] - forced.text_logits[:, 0]).abs().max() < 1e-4
    stepped = torch.stack(audio_logits, 0).view(T, cfg.dep_q, B, 1, -1)[:, :, :, 0]
    for k in range(min(cfg.dep_q, 9)):  # the user's later depth steps need the user's unknown cb0 (see test_personaplex)
        for t in range(1 if k >= 2 else 0, T - 1):
            step = t + cfg.delays[1 + k]
            if step < T and forced.audio_mask[0, k, t]:
                assert (stepped[step, k] - forced.audio_logits[:, k, t]).abs().max() < 1e-4, (k, t)


def test_nothing_forced_changes_nothing_and_items_are_independent(lm):
    cfg = lm.config
    T = 16
    user = torch.randint(0, cfg.card, (2, 8, T), generator=torch.Generator().manual_seed(2))
    runs = []
    for forced in (False, True):
        gen = fd.Generator(lm, seed=5)
        with gen.streaming(2):
            out = []
            for t in range(T):
                if forced:
                    none = torch.zeros(2, cfg.num_streams, 1, dtype=torch.bool)
                    out.append(gen.step(user[..., t : t + 1], torch.zeros(2, cfg.num_streams, 1, dtype=torch.long), none))
                else:
                    out.append(gen.step(user[..., t : t + 1]))
        runs.append(torch.cat(out[1:], dim=-1))
    assert torch.equal(runs[0], runs[1])
    # Item 0 in its prompt while item 1 talks: each equals its run alone (greedy).
    schedule = tiny_schedule(cfg, 3)
    P = len(schedule)
    inputs = step_inputs(schedule, cfg)
    gen = fd.Generator(lm, temp=0, temp_text=0)
    with gen.streaming(2):
        mixed = [prompt_step(gen, inputs, t, items=torch.tensor([True, False]), user=user[..., t : t + 1]) for t in range(P)]
        mixed += [gen.step(user[..., t : t + 1]) for t in range(P, T)]
    with gen.streaming(1):
        run_prompt(gen, schedule)
        alone0 = [gen.step(user[:1, :, t : t + 1]) for t in range(P, T)]
    with gen.streaming(1):
        alone1 = [gen.step(user[1:, :, t : t + 1]) for t in range(T)]
    for t in range(1, T):
        assert torch.equal(mixed[t][1], alone1[t][0]), t
    for t in range(P, T):
        assert torch.equal(mixed[t][0], alone0[t - P][0]), t
