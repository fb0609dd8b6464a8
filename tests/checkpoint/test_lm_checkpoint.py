"""Loading Moshi LM checkpoints: formats, dtypes, config.json, the Hugging Face cache, loud failures."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import fullduplex as fd
from fullduplex.checkpoint import MOSHI_NAME
from fullduplex.errors import CheckpointError
from fullduplex.lm import lm_preset

TINY = lm_preset("tiny")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = fd.LMModel(TINY).eval()
    folder = tmp_path_factory.mktemp("lm")
    fd.save_lm(model, folder / MOSHI_NAME)
    return model, folder / MOSHI_NAME


def same_outputs(a: fd.LMModel, b: fd.LMModel) -> bool:
    codes = torch.randint(0, TINY.card, (1, TINY.num_streams, 6))
    with torch.no_grad():
        return torch.equal(a(codes).audio_logits.nan_to_num(), b(codes).audio_logits.nan_to_num())


def test_released_names_and_round_trip(tiny):
    model, path = tiny
    keys = load_file(str(path))
    assert keys["depformer.layers.0.self_attn.in_proj_weight"].shape == (8 * 3 * 32, 32)
    assert keys["depformer.layers.0.self_attn.out_proj.weight"].shape == (8 * 32, 32)
    assert "transformer.layers.1.self_attn.in_proj_weight" in keys and "out_norm.alpha" in keys
    assert "depformer.layers.1.gating.7.linear_in.weight" in keys
    loaded = fd.load_lm(path, config=TINY)
    assert same_outputs(model, loaded)
    assert loaded.transformer.rope_freqs is not None and not loaded.transformer.rope_freqs.is_meta


def test_bf16_file_and_dtypes(tiny, tmp_path):
    model, path = tiny
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(path)).items()}, str(tmp_path / "bf16.safetensors"))
    fp32 = fd.load_lm(tmp_path / "bf16.safetensors", config=TINY)
    assert fp32.text_emb.weight.dtype == torch.float32
    bf16 = fd.load_lm(path, config=TINY, dtype=torch.bfloat16)
    assert bf16.text_emb.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = bf16(torch.randint(0, TINY.card, (1, TINY.num_streams, 4)))
    assert out.audio_logits.dtype == torch.bfloat16


def test_config_json_in_folder_and_preset_names(tiny, tmp_path):
    model, path = tiny
    (tmp_path / MOSHI_NAME).write_bytes(path.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({**TINY.to_moshi_dict(), "moshi_name": MOSHI_NAME, "model_type": "moshi"}))
    assert fd.load_lm(tmp_path).config == TINY  # folder: config.json is read
    assert fd.load_lm(path, config="tiny").config == TINY
    assert fd.load_lm(path, config=tmp_path / "config.json").config == TINY
    (tmp_path / "config.json").write_text(json.dumps({**TINY.to_moshi_dict(), "quantize": True}))
    with pytest.raises(CheckpointError, match="quantize=True is not supported"):
        fd.load_lm(tmp_path)
    with pytest.raises(CheckpointError, match="unknown LM preset"):
        fd.load_lm(path, config="huge")


def test_hf_repo_through_the_cache(tiny, tmp_path, monkeypatch):
    _, path = tiny
    repo = tmp_path / "hub" / "models--someone--tiny-moshi"
    snapshot = repo / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / MOSHI_NAME).write_bytes(path.read_bytes())
    (snapshot / "config.json").write_text(json.dumps(TINY.to_moshi_dict()))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert fd.load_lm("hf://someone/tiny-moshi").config == TINY  # config.json from the repo
    assert fd.load_lm(hf_repo="someone/tiny-moshi").config == TINY
    assert fd.load_lm(f"hf://someone/tiny-moshi/{MOSHI_NAME}", config=TINY).config == TINY


def test_mismatches_are_named(tiny, tmp_path):
    _, path = tiny
    with pytest.raises(CheckpointError, match=r"missing: transformer.layers.2.*wrong shape: emb.0.weight: checkpoint \[33, 64\], model \[2049, 512\]"):
        fd.load_lm(path, config="small")
    state = load_file(str(path))
    del state["linears.3.weight"]
    state["lora_A.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing: linears.3.weight.*1 unexpected: lora_A.weight"):
        fd.load_lm(tmp_path / "broken.safetensors", config=TINY)
    save_file({"encoder.model.0.conv.conv.weight": torch.zeros(1)}, str(tmp_path / "mimi.safetensors"))
    with pytest.raises(CheckpointError, match="is a Mimi checkpoint, not the LM"):
        fd.load_lm(tmp_path / "mimi.safetensors", config=TINY)
    with pytest.raises(CheckpointError, match="not found"):
        fd.load_lm(tmp_path / "nothing.safetensors")
