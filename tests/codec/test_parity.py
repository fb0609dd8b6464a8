"""Parity with the reference implementation (moshi==0.2.13, a test-only oracle) on shared random weights.

The reference Mimi is built with random weights, saved in the released checkpoint format, and loaded with
``fd.load_mimi``: codes must be identical and decoded audio within 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import fullduplex as fd
from fullduplex.codec import MimiConfig, mimi_preset
from tests.helpers import randomize_, speech

loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")


def reference_mimi(config: MimiConfig, seed: int = 1):
    torch.manual_seed(seed)
    model = loaders.get_mimi(None, config.to_moshi_dict(), num_codebooks=config.quantizer.n_q)
    return randomize_(model.eval(), seed)


def legacy_spelling(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released file's fused attention names (``in_proj_weight``, ``out_proj.weight``)."""
    return {
        k.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight").replace(
            "self_attn.out_projs.0.weight", "self_attn.out_proj.weight"
        ): v
        for k, v in state.items()
    }


@pytest.fixture(scope="module")
def reference():
    return reference_mimi(MimiConfig())


@pytest.fixture(scope="module")
def audio():
    # 12 s of speech: longer than the bottleneck context (250 steps = 10 s), so the sliding window is exercised.
    return speech(12.0) * 0.9


def _check(ref, ours, audio, n_q: int) -> None:
    ref.set_num_codebooks(n_q)
    ours.num_codebooks = n_q
    with torch.no_grad():
        ref_codes = ref.encode(audio)
        codes = ours.encode(audio)
        assert codes.shape == ref_codes.shape == (1, n_q, 150)
        assert torch.equal(codes, ref_codes)
        ref_wav = ref.decode(ref_codes)
        wav = ours.decode(ref_codes)
    assert wav.shape == ref_wav.shape
    assert ref_wav.abs().max() > 0.01  # the comparison below is not vacuous
    assert (wav - ref_wav).abs().max() < 1e-4


@pytest.mark.parametrize("spelling", ["module", "legacy"])
def test_parity_released_format_fp32(tmp_path, reference, audio, spelling):
    state = reference.state_dict()
    if spelling == "legacy":
        state = legacy_spelling(state)
        assert "encoder_transformer.transformer.layers.0.self_attn.in_proj_weight" in state
    path = tmp_path / "tokenizer-e351c8d8-checkpoint125.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    ours = fd.load_mimi(path, num_codebooks=32)
    assert ours.config.quantizer.n_q == 32
    for n_q in (8, 32):
        _check(reference, ours, audio, n_q)


def test_parity_bf16_file(tmp_path, audio):
    ref = reference_mimi(MimiConfig(), seed=3)
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in legacy_spelling(ref.state_dict()).items()}
    path = tmp_path / "mimi-bf16.safetensors"
    save_file(state, str(path))
    ref.load_state_dict({k: v.float() for k, v in state.items()})  # the reference, on the same rounded weights
    ours = fd.load_mimi(path)
    assert ours.encoder.model[0].weight.dtype == torch.float32
    ref.set_num_codebooks(8)
    short = audio[..., : 24000 * 3]
    with torch.no_grad():
        ref_codes = ref.encode(short)
        assert torch.equal(ours.encode(short), ref_codes)
        assert (ours.decode(ref_codes) - ref.decode(ref_codes)).abs().max() < 1e-4


def test_parity_tiny_config_and_our_export_loads_in_reference(tmp_path):
    """A non-default architecture (tiny preset) matches too, and what we save loads into the reference."""
    config = mimi_preset("tiny")
    ours = randomize_(fd.Mimi(config, num_codebooks=config.quantizer.n_q).eval(), seed=5)
    path = fd.save_mimi(ours, tmp_path / "tiny.safetensors")
    ref = loaders.get_mimi(str(path), config.to_moshi_dict(), num_codebooks=config.quantizer.n_q).eval()
    wav = speech(3.0)
    with torch.no_grad():
        codes = ours.encode(wav)
        assert torch.equal(codes, ref.encode(wav))
        assert (ours.decode(codes) - ref.decode(codes)).abs().max() < 1e-5


def test_match_moshi_streams_bit_for_bit_past_the_context(tmp_path):
    """``Mimi.match_moshi``: streaming encode and decode, frame by frame, equal the reference's bit for bit, also
    past the transformer context (the tiny preset's 10 steps = 5 frames; 12 frames here), where the reference's
    ring overwrites keys its mask still allows. Without it both differ in rounding from the start."""
    torch.set_num_threads(1)  # torch's tiny convolutions run 5x slower on 2 busy cores (the fixture resets it)
    config = mimi_preset("tiny")
    ours = randomize_(fd.Mimi(config, num_codebooks=8).eval(), seed=7)
    path = fd.save_mimi(ours, tmp_path / "tiny.safetensors")
    frames, batch = 12, 2
    assert 2 * frames > 2 * config.transformer.context
    wav = (speech(1.0)[..., : frames * 1920] * 0.9).expand(batch, 1, -1).contiguous()
    codes = torch.randint(0, config.quantizer.bins, (batch, 8, frames), generator=torch.Generator().manual_seed(1))

    def stream(model, step):
        return [step(model, t) for t in range(frames)]

    def reference(mode):
        ref = loaders.get_mimi(str(path), config.to_moshi_dict(), num_codebooks=8).eval()
        ref.streaming_forever(batch)
        if mode == "encode":
            return stream(ref, lambda m, t: m.encode(wav[..., t * 1920 : (t + 1) * 1920]))
        return stream(ref, lambda m, t: m.decode(codes[..., t : t + 1]))

    def fullduplex(mode):
        with ours.streaming(batch):
            if mode == "encode":
                return stream(ours, lambda m, t: m.encode(wav[..., t * 1920 : (t + 1) * 1920]))
            return stream(ours, lambda m, t: m.decode(codes[..., t : t + 1]))

    with torch.no_grad():
        ref_codes, ref_audio = reference("encode"), reference("decode")
        default_audio = fullduplex("decode")
        ours.match_moshi()
        our_codes, our_audio = fullduplex("encode"), fullduplex("decode")
        ours.match_moshi(False)
    assert all(torch.equal(a, b) for a, b in zip(our_codes, ref_codes, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(our_audio, ref_audio, strict=True))
    assert ref_audio[-1].abs().max() > 0.01
    assert not torch.equal(default_audio[0], ref_audio[0])  # the default rounds differently (not vacuous)
