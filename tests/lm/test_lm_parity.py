"""The Moshi LM against the reference (moshi==0.2.13) on shared random weights, saved in the released format."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import fullduplex as fd
from fullduplex.lm import lm_preset

loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")
from moshi.models import lm as reference_lm  # noqa: E402

TINY = lm_preset("tiny")


def fused_spelling(state: dict[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
    """The released files' names: fused attention projections, depth slices concatenated."""
    out: dict[str, torch.Tensor] = {}
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        if ".self_attn.in_projs." in key or ".self_attn.out_projs." in key:
            prefix, rest = key.split(".self_attn.")
            kind, index, _ = rest.split(".")
            name = f"{prefix}.self_attn." + ("in_proj_weight" if kind == "in_projs" else "out_proj.weight")
            pieces.setdefault(name, {})[int(index)] = value
        else:
            out[key] = value
    for name, parts in pieces.items():
        out[name] = torch.cat([parts[i] for i in sorted(parts)])
    assert "depformer.layers.0.self_attn.in_proj_weight" in out and out["depformer.layers.0.self_attn.in_proj_weight"].shape[0] == steps * 3 * 32
    return out


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(1)
    model = loaders.get_moshi_lm(None, TINY.to_moshi_dict(), device="cpu", dtype=torch.float32)
    with torch.no_grad():  # the default init leaves some weights at zero or one: make every one count
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=["module", "fused"])
def ours(request, reference, tmp_path_factory):
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if request.param == "fused":
        state = fused_spelling(state, TINY.dep_q)
    path = tmp_path_factory.mktemp(request.param) / "model.safetensors"
    save_file(state, str(path))
    return fd.load_lm(path, config=TINY)


def random_codes(config, B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, config.card, (B, config.num_streams, T), generator=g)
    codes[:, 0] = torch.randint(0, config.text_card, (B, T), generator=g)
    return codes


def test_teacher_forced_logits(reference, ours):
    codes = random_codes(TINY, 2, 30)  # 30 frames > context 12: the sliding window matters
    codes[0, 3, 5] = -1  # a zero token: zero embedding, masked target
    with torch.no_grad():
        ref, out = reference(codes), ours(codes)
    assert torch.equal(out.text_mask, ref.text_mask) and torch.equal(out.audio_mask, ref.mask)
    assert not out.audio_mask[0, 2, 5]
    assert (out.text_logits - ref.text_logits).nan_to_num().abs().max() < 1e-4
    assert (out.audio_logits - ref.logits).nan_to_num().abs().max() < 1e-4
    assert out.audio_logits.nan_to_num().abs().max() > 0.1  # not vacuous
    assert out.text_logits.shape == (2, 1, 30, TINY.text_card) and out.audio_logits.shape == (2, 8, 30, TINY.card)


@pytest.mark.parametrize("sampling", [False, True])
def test_generation_matches_reference_token_for_token(reference, ours, sampling):
    """Greedy, and sampling from the same global seed: the same tokens for 60 steps (5 contexts)."""
    B, T = 2, 60
    user = torch.randint(0, TINY.card, (B, 8, T), generator=torch.Generator().manual_seed(3))
    temps = (0.8, 0.7) if sampling else (0.0, 0.0)
    ref_gen = reference_lm.LMGen(reference, use_sampling=sampling, temp=0.8, temp_text=0.7, top_k=10, top_k_text=5)
    gen = fd.Generator(ours, temp=temps[0], temp_text=temps[1], top_k=10, top_k_text=5)
    torch.manual_seed(7)
    with ref_gen.streaming(B):
        expected = [ref_gen.step(user[..., t : t + 1]) for t in range(T)]
    torch.manual_seed(7)
    with gen.streaming(B):
        got = [gen.step(user[..., t : t + 1]) for t in range(T)]
    assert expected[0] is None and got[0] is None
    for t in range(1, T):
        assert torch.equal(got[t], expected[t]), f"step {t}"
