"""Training shards: prepared conversations as safetensors files, read lazily by the trainer.

A shard is one ``.safetensors`` file holding N items. Item ``i`` is the tensor ``codes.{i}`` of shape [17, T]
(undelayed, 12.5 frames/s):

- row 0: the text stream of the speaker the model learns to be (pad 3, end-of-padding 0, word pieces);
- rows 1..8: that speaker's (left channel) 8 Mimi codebooks;
- rows 9..16: the other speaker's (right channel) 8 Mimi codebooks.

Codes are stored as int16 when every value fits, else int32, and always read back as int64. The safetensors
metadata holds ``format`` (``fullduplex-shard``), ``version``, ``items`` (a JSON list of per-item info dicts, in
order) and ``meta`` (a JSON dict about the whole shard). The header is written with its metadata keys sorted
(safetensors itself orders them at random), so the same items and meta always give the same bytes. A folder of shards may hold an ``index.json`` with
totals written by ``fullduplex data prepare``; :class:`ShardDataset` exposes it as ``index`` and never needs it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..atomic import atomic_output
from ..errors import FullduplexError

FORMAT = "fullduplex-shard"
VERSION = "1"
NUM_STREAMS = 17  # text + 8 own codebooks + 8 other codebooks
INDEX_NAME = "index.json"


class ShardError(FullduplexError, ValueError):
    """A shard file is missing, unreadable or not in the training-shard format."""


def _storage_dtype(codes: torch.Tensor) -> torch.dtype:
    """int16 when every value fits, else int32."""
    if codes.numel() == 0:
        return torch.int16
    lo, hi = int(codes.min()), int(codes.max())
    info = torch.iinfo(torch.int16)
    if info.min <= lo and hi <= info.max:
        return torch.int16
    if torch.iinfo(torch.int32).min <= lo and hi <= torch.iinfo(torch.int32).max:
        return torch.int32
    raise ValueError(f"codes hold values outside int32 ({lo}..{hi})")


def write_shard(path: str | os.PathLike[str], items: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``items`` (each ``{"codes": int tensor [17, T], "info": JSON-able dict}``) as one shard, atomically."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    infos = []
    for i, item in enumerate(items):
        if "codes" not in item:
            raise ValueError(f"{path}: item {i} has no 'codes'")
        codes = torch.as_tensor(item["codes"])
        if codes.dim() != 2 or codes.shape[0] != NUM_STREAMS:
            raise ValueError(f"{path}: item {i} codes must be [{NUM_STREAMS}, T], got {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"{path}: item {i} codes must be integers, got {codes.dtype}")
        tensors[f"codes.{i}"] = codes.to(_storage_dtype(codes)).contiguous().cpu()
        infos.append(item.get("info", {}))
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "items": json.dumps(infos, ensure_ascii=False),
        "meta": json.dumps(meta, ensure_ascii=False),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_bytes(_sorted_header(save(tensors, metadata=metadata)))


def _sorted_header(data: bytes) -> bytes:
    """A safetensors file's bytes with the ``__metadata__`` keys of its header sorted (the tensors' entries keep
    their order; their offsets count from the end of the header, so they stay valid)."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes, so the data stays aligned
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


def _open_header(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[int]]:
    """(item infos, meta, frames per item) from a shard's header, without reading the codes."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ShardError(f"{path}: not a training shard (metadata 'format' is {metadata.get('format')!r}, "
                                 f"expected {FORMAT!r}); write shards with `fullduplex data prepare`")
            infos = json.loads(metadata.get("items", "[]"))
            meta = json.loads(metadata.get("meta", "{}"))
            frames = []
            for i in range(len(infos)):
                name = f"codes.{i}"
                if name not in f.keys():
                    raise ShardError(f"{path}: item {i} is listed in the metadata but tensor {name!r} is missing")
                shape = f.get_slice(name).get_shape()
                if len(shape) != 2 or shape[0] != NUM_STREAMS:
                    raise ShardError(f"{path}: tensor {name!r} has shape {tuple(shape)}, expected [{NUM_STREAMS}, T]")
                frames.append(int(shape[1]))
    except ShardError:
        raise
    except (OSError, ValueError, SafetensorError) as e:
        raise ShardError(f"{path}: cannot read shard ({e})") from e
    return infos, meta, frames


def _read_codes(path: Path, i: int) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(f"codes.{i}").to(torch.int64)


def read_shard(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All items of one shard (``{"codes": int64 [17, T], "info": dict}``) and its meta."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard file not found")
    infos, meta, _ = _open_header(path)
    with safe_open(str(path), framework="pt") as f:
        items = [{"codes": f.get_tensor(f"codes.{i}").to(torch.int64), "info": info} for i, info in enumerate(infos)]
    return items, meta


def list_shards(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Shard files of a folder (``*.safetensors``, sorted, not recursive), a file, or a list of either."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            found = sorted(p.glob("*.safetensors"))
            if not found:
                raise ShardError(f"{p}: no *.safetensors shards in this folder; run `fullduplex data prepare` first")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ShardError(f"{p}: shards folder or file not found")
    return files


class ShardDataset:
    """Items of one or more shards, loaded lazily: ``len``, ``dataset[j]`` and iteration give
    ``{"codes": int64 [17, T], "info": dict}``; ``frames[j]`` is T of item j (read from the headers only).

    ``index`` is the folder's ``index.json`` (totals from prepare) when there is exactly one folder holding one,
    else None.
    """

    def __init__(self, source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> None:
        self.files = list_shards(source)
        self.index: dict[str, Any] | None = None
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            index_path = Path(source) / INDEX_NAME
            if index_path.is_file():
                try:
                    self.index = json.loads(index_path.read_text())
                except json.JSONDecodeError as e:
                    raise ShardError(f"{index_path}: not valid JSON ({e})") from e
        self._where: list[tuple[int, int]] = []  # (file number, item number)
        self.frames: list[int] = []
        self.infos: list[dict[str, Any]] = []
        self.metas: list[dict[str, Any]] = []
        for n, path in enumerate(self.files):
            infos, meta, frames = _open_header(path)
            self.metas.append(meta)
            for i, (info, t) in enumerate(zip(infos, frames, strict=True)):
                self._where.append((n, i))
                self.frames.append(t)
                self.infos.append(info)

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, j: int) -> dict[str, Any]:
        n, i = self._where[j]
        return {"codes": _read_codes(self.files[n], i), "info": self.infos[j]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for j in range(len(self)):
            yield self[j]

    @property
    def total_frames(self) -> int:
        return sum(self.frames)
