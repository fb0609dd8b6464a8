"""Loading Mimi checkpoints: local files, folders, hf:// through the Hugging Face cache, and loud failures."""

from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import fullduplex as fd
from fullduplex.checkpoint import MIMI_NAME
from fullduplex.codec import mimi_preset
from fullduplex.errors import CheckpointError
from tests.helpers import randomize_, speech

TINY = mimi_preset("tiny")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    model = randomize_(fd.Mimi(TINY).eval(), seed=2)
    path = fd.save_mimi(model, tmp_path_factory.mktemp("ckpt") / MIMI_NAME)
    return model, path


def test_round_trip_and_released_names(tiny_file):
    model, path = tiny_file
    keys = load_file(str(path))
    assert "decoder.model.2.convtr.convtr.weight" in keys
    assert "encoder.model.1.block.1.conv.conv.weight" in keys
    assert "encoder_transformer.transformer.layers.0.self_attn.in_proj_weight" in keys
    assert "quantizer.rvq_rest.vq.layers.4._codebook.embedding_sum" in keys
    assert "upsample.convtr.convtr.convtr.weight" in keys and "downsample.conv.conv.conv.weight" in keys
    loaded = fd.load_mimi(path, config=TINY)
    wav = speech(1.0)
    with torch.no_grad():
        assert torch.equal(loaded.encode(wav), model.encode(wav))
    assert not any(p.is_meta for p in loaded.parameters()) and not any(b.is_meta for b in loaded.buffers())


def test_folder_file_url_and_pickle(tiny_file, tmp_path):
    _, path = tiny_file
    assert fd.load_mimi(path.parent, config=TINY, num_codebooks=None).config == TINY
    assert fd.load_mimi(f"file://{path}", config=TINY, num_codebooks=None).num_codebooks == 8
    pt = tmp_path / "mimi.pt"
    torch.save({"model": load_file(str(path))}, pt)
    assert fd.load_mimi(pt, config=TINY, num_codebooks=2).num_codebooks == 2


def test_hf_reference_through_the_cache(tiny_file, tmp_path, monkeypatch):
    """hf://owner/repo resolves through huggingface_hub's cache layout, offline."""
    _, path = tiny_file
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--mimi-test" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / MIMI_NAME).write_bytes(path.read_bytes())
    (cache / "models--someone--mimi-test" / "refs").mkdir()
    (cache / "models--someone--mimi-test" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert fd.load_mimi("hf://someone/mimi-test", config=TINY, num_codebooks=None).config == TINY
    assert fd.load_mimi(f"hf://someone/mimi-test/{MIMI_NAME}", config=TINY, num_codebooks=None).config == TINY
    assert fd.load_mimi(hf_repo="someone/mimi-test", config=TINY, num_codebooks=None).config == TINY
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        fd.load_mimi("hf://someone/not-there", config=TINY, num_codebooks=None)
    # Online mode too: a cached file is used without contacting the hub (here an address that refuses).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    assert fd.load_mimi(f"hf://someone/mimi-test/{MIMI_NAME}", config=TINY, num_codebooks=None).config == TINY
    assert time.monotonic() - start < 5


def test_errors_name_the_problem(tiny_file, tmp_path):
    _, path = tiny_file
    with pytest.raises(CheckpointError, match="not found"):
        fd.load_mimi(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="has no " + MIMI_NAME):
        fd.load_mimi(tmp_path)
    state = load_file(str(path))

    bad = dict(state)
    bad["encoder.model.0.conv.conv.weight"] = torch.zeros(3, 1, 7)
    del bad["decoder.model.14.conv.conv.bias"]
    bad["encoder.extra.weight"] = torch.zeros(1)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as info:
        fd.load_mimi(tmp_path / "bad.safetensors", config=TINY)
    message = str(info.value)
    assert "decoder.model.14.bias" in message and "encoder.extra.weight" in message
    assert "encoder.model.0.weight: checkpoint [3, 1, 7], model [4, 1, 7]" in message

    save_file({"text_emb.weight": torch.zeros(4, 2), "text_linear.weight": torch.zeros(2, 2)}, str(tmp_path / "lm.safetensors"))
    with pytest.raises(CheckpointError, match="Moshi LM checkpoint, not Mimi"):
        fd.load_mimi(tmp_path / "lm.safetensors")
    save_file({"foo.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="does not look like a Mimi checkpoint"):
        fd.load_mimi(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        fd.load_mimi(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="holds 10 codebooks"):
        fd.load_mimi(path, config=TINY, num_codebooks=11)
    # The released architecture does not fit a tiny file: the message lists the mismatches.
    with pytest.raises(CheckpointError, match="wrong shape"):
        fd.load_mimi(path)


def test_released_architecture_default_and_legacy_codebook_names(tmp_path):
    model = randomize_(fd.Mimi(TINY, num_codebooks=10).eval(), seed=4)
    state = load_file(str(fd.save_mimi(model, tmp_path / "m.safetensors")))
    legacy = {}
    for k, v in state.items():
        k = k.replace("_codebook.embedding_sum", "_codebook.embed_avg").replace("_codebook.cluster_usage", "_codebook.cluster_size")
        legacy[k.replace("_codebook._initialized", "_codebook.inited")] = v
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    loaded = fd.load_mimi(tmp_path / "legacy.safetensors", config=TINY, num_codebooks=10)
    assert torch.equal(loaded.quantizer.rvq_rest.codebooks, model.quantizer.rvq_rest.codebooks)


def test_save_into_missing_folder_fails_cleanly(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        fd.save_mimi(fd.Mimi(TINY), tmp_path / "nope" / "m.safetensors")
    path = fd.save_mimi(fd.Mimi(TINY), tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not the temporary file's 0o600
