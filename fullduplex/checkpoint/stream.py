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

    safetensors files are opened with ``safe_open``; torch pickles are memory-mapped (``torch.load(mmap=True)``),
    so their tensors are only paged in when used. Use as a context manager (closes the file).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._file = None
        self._tensors: dict[str, torch.Tensor] | None = None
        if self.path.suffix in SAFETENSORS_SUFFIXES:
            from safetensors import safe_open

            try:
                self._file = safe_open(str(self.path), framework="pt")
                self.keys: list[str] = list(self._file.keys())
                self.metadata = dict(self._file.metadata() or {})
                self._specs = {}
                for key in self.keys:
                    piece = self._file.get_slice(key)
                    self._specs[key] = TensorSpec(DTYPES[piece.get_dtype()], tuple(piece.get_shape()))
            except Exception as e:  # safetensors raises many types for corrupt files; say which file
                raise CheckpointError(f"could not read checkpoint {self.path}: {type(e).__name__}: {e}") from None
        else:
            self._tensors = read_state_dict(self.path)  # memory-mapped
            self.keys = list(self._tensors)
            self._specs = {k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in self._tensors.items()}

    def spec(self, key: str) -> TensorSpec:
        return self._specs[key]

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key``, read now (CPU, stored dtype)."""
        if self._tensors is not None:
            return self._tensors[key]
        return self._file.get_tensor(key)

    def close(self) -> None:
        self._file = None
        self._tensors = None

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
