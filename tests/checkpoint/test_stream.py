"""The streaming safetensors writer and lazy reader: byte-compatible with safetensors, strict about order and
shapes, atomic."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from fullduplex.checkpoint.stream import LazyCheckpoint, TensorSpec, write_safetensors_streaming
from fullduplex.errors import CheckpointError


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b.bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "a.f32": torch.randn(1, 1, 7, generator=g),
        "c.i64": torch.arange(6).view(2, 3),
        "d.bool": torch.tensor([True, False, True]),
        "e.f16.scalar": torch.tensor(2.5, dtype=torch.float16),
        "f.empty": torch.zeros(0, 4),
    }


def test_round_trip_through_safetensors(tmp_path):
    state = tensors()
    specs = {k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in state.items()}
    path = write_safetensors_streaming(tmp_path / "x.safetensors", specs, iter(state.items()), {"format": "pt", "n": 1})
    loaded = load_file(str(path))
    assert list(loaded) != [] and set(loaded) == set(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    with LazyCheckpoint(path) as lazy:
        assert sorted(lazy.keys) == sorted(state) and lazy.metadata == {"format": "pt", "n": "1"}
        assert lazy.spec("b.bf16") == TensorSpec(torch.bfloat16, (3, 5)) and specs["b.bf16"].nbytes == 30
        assert torch.equal(lazy.get("c.i64"), state["c.i64"])
    save_file(state, str(tmp_path / "ref.safetensors"))
    pickle = tmp_path / "x.pt"
    torch.save({"model": state}, pickle)
    with LazyCheckpoint(pickle) as lazy:  # torch pickles: memory-mapped
        assert lazy.spec("a.f32").shape == (1, 1, 7) and torch.equal(lazy.get("a.f32"), state["a.f32"])


def test_refuses_what_the_header_does_not_say_and_leaves_no_file(tmp_path):
    state = tensors()
    specs = {k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in state.items()}
    path = tmp_path / "x.safetensors"
    wrong_order = list(state.items())[::-1]
    with pytest.raises(CheckpointError, match="arrived, expected 'b.bf16'"):
        write_safetensors_streaming(path, specs, iter(wrong_order), None)
    bad_shape = {**state, "a.f32": torch.zeros(7)}
    with pytest.raises(CheckpointError, match=r"'a.f32' is torch.float32 \[7\], the header says torch.float32 \[1, 1, 7\]"):
        write_safetensors_streaming(path, specs, iter(bad_shape.items()), None)
    with pytest.raises(CheckpointError, match="'f.empty' of the header was never written"):
        write_safetensors_streaming(path, specs, iter(list(state.items())[:-1]), None)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="could not read checkpoint .*junk.safetensors"):
        LazyCheckpoint(tmp_path / "junk.safetensors")


def test_truncated_file_is_named(tmp_path):
    save_file(tensors(), str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="cut.safetensors: tensor .* does not fit its bytes .*truncated"):
        LazyCheckpoint(tmp_path / "cut.safetensors")
