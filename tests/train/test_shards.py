"""The training-shard format: round trips, storage dtypes, lazy dataset, errors naming the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from fullduplex.data.shards import ShardDataset, ShardError, list_shards, read_shard, write_shard


def _codes(t: int, seed: int, high: int = 2048) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, high, (17, t), generator=g)
    codes[0] = torch.randint(0, 96, (t,), generator=g)
    return codes


def test_round_trip_and_storage_dtype(tmp_path):
    items = [
        {"codes": _codes(30, 0), "info": {"source": "a.wav", "side": "left", "frames": 30, "speakers": ["x", "y"]}},
        {"codes": _codes(7, 1), "info": {"source": "ü.wav", "side": "right", "frames": 7}},
    ]
    big = _codes(5, 2)
    big[0, 0] = 40000  # does not fit int16
    items.append({"codes": big, "info": {"source": "big.wav"}})
    path = tmp_path / "s" / "shard-000.safetensors"
    write_shard(path, items, {"corpus": "test", "hours": 0.01})
    assert [p.name for p in path.parent.iterdir()] == ["shard-000.safetensors"]  # nothing temporary left
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("codes.0").dtype == torch.int16
        assert f.get_tensor("codes.2").dtype == torch.int32
    back, meta = read_shard(path)
    assert meta == {"corpus": "test", "hours": 0.01}
    assert len(back) == 3
    for a, b in zip(items, back, strict=True):
        assert b["codes"].dtype == torch.int64
        assert torch.equal(a["codes"], b["codes"])
        assert a["info"] == b["info"]


def test_dataset_lazy_over_folder_and_index(tmp_path):
    write_shard(tmp_path / "b.safetensors", [{"codes": _codes(4, 3), "info": {"n": 2}}], {})
    write_shard(tmp_path / "a.safetensors", [{"codes": _codes(9, 4), "info": {"n": 0}},
                                             {"codes": _codes(6, 5), "info": {"n": 1}}], {"m": 1})
    (tmp_path / "index.json").write_text(json.dumps({"hours": 1.5, "items": 3}))
    ds = ShardDataset(tmp_path)
    assert len(ds) == 3 and ds.frames == [9, 6, 4] and ds.total_frames == 19
    assert ds.index == {"hours": 1.5, "items": 3}
    assert [item["info"]["n"] for item in ds] == [0, 1, 2]
    assert torch.equal(ds[2]["codes"], _codes(4, 3))
    # explicit files, in the given order
    ds2 = ShardDataset([tmp_path / "b.safetensors", tmp_path / "a.safetensors"])
    assert ds2.frames == [4, 9, 6] and ds2.index is None


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\[17, T\]"):
        write_shard(tmp_path / "x.safetensors", [{"codes": torch.zeros(9, 4, dtype=torch.long), "info": {}}], {})
    with pytest.raises(ValueError, match="integers"):
        write_shard(tmp_path / "x.safetensors", [{"codes": torch.zeros(17, 4), "info": {}}], {})
    assert not list(tmp_path.iterdir())
    with pytest.raises(ShardError, match="not found"):
        list_shards(tmp_path / "missing")
    with pytest.raises(ShardError, match="no \\*.safetensors"):
        ShardDataset(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ShardError, match="junk.safetensors"):
        ShardDataset(tmp_path)
