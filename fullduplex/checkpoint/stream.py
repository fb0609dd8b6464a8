"""Checkpoints one tensor at a time: a lazy reader and a streaming safetensors writer.

A safetensors file is an 8-byte little-endian header length, a JSON header (``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, padded with spaces to a multiple of 8 bytes), then
the tensors' bytes back to back, offsets counted from the end of the header. Since the header only needs each
tensor's dtype and shape, the writer takes those first and the tensors afterwards, so a model can be rewritten
(e.g. by :mod:`fullduplex.checkpoint.adapt`) holding one tensor in memory rather than two copies of the model.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from ..atomic import atomic_output
from ..errors import CheckpointError
from .state import SAFETENSORS_SUFFIXES, read_state_dict

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """What the header says of a tensor: its dtype and shape."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


class LazyCheckpoint:
    """The tensors of a checkpoint file, listed without reading them and read one at a time with :meth:`get`.

    safetensors files are read with plain reads at the offsets of their header; torch pickles are memory-mapped
    (``torch.load(mmap=True)``), so their tensors are only paged in when used. Use as a context manager (closes the file).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._file = None
        self._tensors: dict[str, torch.Tensor] | None = None
        if self.path.suffix in SAFETENSORS_SUFFIXES:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
                self.metadata, self._offsets, self._specs = _read_header(self._file, self.path)
            except BaseException:
                self.close()
                raise
            self.keys: list[str] = list(self._specs)
        else:
            self._tensors = read_state_dict(self.path)  # memory-mapped
            self.keys = list(self._tensors)
            self._specs = {k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in self._tensors.items()}

    def spec(self, key: str) -> TensorSpec:
        return self._specs[key]

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key``, read now into fresh memory (CPU, stored dtype). Plain reads rather than a memory
        map: mapped pages of a 15 GB file would stay resident and count against the process."""
        if self._tensors is not None:
            return self._tensors[key]
        spec, offset = self._specs[key], self._offsets[key]
        data = torch.empty(spec.nbytes, dtype=torch.uint8)
        self._file.seek(offset)
        if self._file.readinto(memoryview(data.numpy())) != spec.nbytes:
            raise CheckpointError(f"{self.path}: the file ends inside tensor {key!r} (truncated download?)")
        return data.view(spec.dtype).reshape(spec.shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._tensors = None

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_header(f: BinaryIO, path: Path) -> tuple[dict[str, str], dict[str, int], dict[str, TensorSpec]]:
    """(metadata, absolute byte offset per tensor, spec per tensor) of an open safetensors file, checked against
    the file's size; in the file's data order."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"could not read checkpoint {path}: {size} bytes is too short for a safetensors file")
    (length,) = struct.unpack("<Q", head)
    if length > min(size - 8, 100_000_000):
        raise CheckpointError(f"could not read checkpoint {path}: not a safetensors file (header of {length} bytes)")
    try:
        header = json.loads(f.read(length))
    except ValueError as e:
        raise CheckpointError(f"could not read checkpoint {path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"could not read checkpoint {path}: not a safetensors file")
    metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    specs: dict[str, TensorSpec] = {}
    offsets: dict[str, int] = {}
    try:
        entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
        for key, entry in entries:
            spec = TensorSpec(DTYPES[entry["dtype"]], tuple(int(x) for x in entry["shape"]))
            begin, end = (int(x) for x in entry["data_offsets"])
            if end - begin != spec.nbytes or 8 + length + end > size:
                raise CheckpointError(
                    f"{path}: tensor {key!r} ({entry['dtype']} {list(spec.shape)}) does not fit its bytes "
                    f"[{begin}, {end}) in a file of {size} bytes (truncated download?)"
                )
            specs[key], offsets[key] = spec, 8 + length + begin
    except (KeyError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"could not read checkpoint {path}: bad safetensors header ({type(e).__name__}: {e})") from None
    return metadata, offsets, specs


def safetensors_header(specs: dict[str, TensorSpec], metadata: dict[str, str] | None = None) -> bytes:
    """The length-prefixed, padded JSON header of a file holding ``specs`` in this order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}  # same input, same bytes
    offset = 0
    for name, spec in specs.items():
        if spec.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"{name}: dtype {spec.dtype} cannot be stored in safetensors")
        header[name] = {"dtype": DTYPE_NAMES[spec.dtype], "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors_streaming(
    path: str | os.PathLike[str],
    specs: dict[str, TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
    on_write: Callable[[int], None] | None = None,
) -> Path:
    """Write a safetensors file from ``tensors`` (name, tensor) pairs that arrive one at a time, in the order and
    with the dtypes and shapes of ``specs``. Only one tensor is held at a time. Atomic: written under a temporary
    name and renamed on success. ``on_write(nbytes)`` is called after each tensor (progress bars)."""
    path = Path(path)
    expected = iter(specs.items())
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(safetensors_header(specs, metadata))
        for name, tensor in tensors:
            want = next(expected, None)
            if want is None or want[0] != name:
                raise CheckpointError(f"{path}: tensor {name!r} arrived, expected {want[0] if want else 'no more'!r}")
            spec = want[1]
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise CheckpointError(
                    f"{path}: tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, the header says "
                    f"{spec.dtype} {list(spec.shape)}"
                )
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(memoryview(data))
            if on_write is not None:
                on_write(spec.nbytes)
        missing = next(expected, None)
        if missing is not None:
            raise CheckpointError(f"{path}: tensor {missing[0]!r} of the header was never written")
    return path
