"""``--no_fuse_lora``: moshi-finetune adapters kept as separate low-rank layers compute what the folded weights
compute (float rounding apart), and what moshi's unfused layers compute (moshi==0.2.13, a test-only oracle), on
every layer moshi-finetune adapts (the depth transformer's per-step projections included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fullduplex as fd
from fullduplex.checkpoint.lora import UnfusedLoRAStepProjections
from fullduplex.codec import mimi_preset
from fullduplex.errors import CheckpointError
from fullduplex.lm import lm_preset
from fullduplex.nn.lora import UnfusedLoRALinear

loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A tiny LM (model.safetensors, config.json) and adapters on every linear layer moshi adapts (lora.safetensors)."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    config = lm_preset("tiny")
    fd.save_lm(fd.LMModel(config), root / "model.safetensors")
    (root / "config.json").write_text(json.dumps(config.to_moshi_dict()))
    wrapped = reference(root, lora_weights=None)  # moshi's LoRA wrappers: the names and shapes of every adapter
    g = torch.Generator().manual_seed(1)
    adapters = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in wrapped.state_dict().items() if "lora_" in k}
    save_file(adapters, str(root / "lora.safetensors"))
    return root


def reference(root: Path, **kwargs) -> torch.nn.Module:
    config = {**json.loads((root / "config.json").read_text()), "lora": True, "lora_rank": 4, "lora_scaling": 2.0}
    return loaders.get_moshi_lm(str(root / "model.safetensors"), lm_kwargs=config, device="cpu",
                                dtype=torch.float32, **kwargs)


def codes() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    c = torch.randint(0, 32, (2, 17, 12), generator=g)
    c[:, 0] = torch.randint(0, 96, (2, 12), generator=g)
    return c


def load(root: Path, **kwargs) -> fd.LMModel:
    return fd.load_lm(root / "model.safetensors", config=str(root / "config.json"), **kwargs)


def test_unfused_equals_fused_and_moshis_unfused(files):
    lora = files / "lora.safetensors"
    assert any(".depformer." in f".{k}" and "_projs." in k for k in load_file(str(lora)))  # per-step slices too
    plain, fused = load(files), load(files, lora_weight=lora, lora_scaling=2.0)
    kept = load(files, lora_weight=lora, lora_scaling=2.0, fuse_lora=False)
    wrapped = [m for m in kept.modules() if isinstance(m, UnfusedLoRALinear)]
    steps = [m for m in kept.modules() if isinstance(m, UnfusedLoRAStepProjections)]
    assert len(wrapped) == sum(1 for m in plain.modules() if isinstance(m, torch.nn.Linear))
    assert len(steps) == len(plain.depformer.layers)
    assert torch.equal(kept.text_linear.weight, plain.text_linear.weight)  # the base weights stay as released
    moshi_kept = reference(files, lora_weights=str(lora), fuse_lora=False)
    with torch.no_grad():
        ours, folded, base, ref = kept(codes()), fused(codes()), plain(codes()), moshi_kept(codes())
    for other in (folded, ref):
        assert (ours.text_logits - other.text_logits).nan_to_num().abs().max() < 1e-4
        audio = other.audio_logits if hasattr(other, "audio_logits") else other.logits
        assert (ours.audio_logits - audio).nan_to_num().abs().max() < 1e-4
    assert (ours.audio_logits - base.audio_logits).nan_to_num().abs().max() > 1e-2  # the adapters matter

    # Generation runs the depth transformer step by step (step_in / step_out), not all steps at once.
    x = torch.randn(2, 1, kept.config.depformer_dim)
    for k in range(kept.config.dep_q):
        with torch.no_grad():
            a = kept.depformer.step(x, k, kept.depformer.new_cache(2, x.device, x.dtype))
            b = fused.depformer.step(x, k, fused.depformer.new_cache(2, x.device, x.dtype))
        assert (a - b).abs().max() < 1e-5, k


def test_generate_with_no_fuse_lora(files, tmp_path):
    """The flag reaches the loader through the CLI; greedy tokens equal the folded model's."""
    from fullduplex.cli.main import main
    from fullduplex.codec.audio import read_audio, write_wav
    from tests.helpers import ASSETS, tiny_models

    _, _, tokenizer = tiny_models(tmp_path)
    mimi = fd.save_mimi(fd.Mimi(mimi_preset("tiny")), tmp_path / "mimi.safetensors")
    talk = tmp_path / "talk.wav"
    write_wav(talk, read_audio(ASSETS / "speech_en.wav")[..., : 6 * 1920], 24000)  # 6 frames
    tokens = {}
    for name, extra in (("fused", []), ("kept", ["--no_fuse_lora"])):
        out = tmp_path / f"{name}.safetensors"
        code = main(["generate", str(talk), "--tokens-out", str(out), "--moshi-weight",
                     str(files / "model.safetensors"), "--config", str(files / "config.json"), "--mimi-weight",
                     str(mimi), "--mimi-config", "tiny", "--tokenizer", str(tokenizer.path), "--device", "cpu",
                     "--lora-weight", str(files / "lora.safetensors"), "--temp", "0", "--temp-text", "0",
                     "--quiet", *extra])
        assert code == 0
        tokens[name] = load_file(str(out))["talk"]
    assert torch.equal(tokens["fused"], tokens["kept"])


def test_no_fuse_lora_refuses_quantize(files):
    with pytest.raises(CheckpointError, match="--no_fuse_lora keeps LoRA apart"):
        load(files, lora_weight=files / "lora.safetensors", fuse_lora=False, quantize="int8")
