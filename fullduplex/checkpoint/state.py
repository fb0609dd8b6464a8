"""Read and write state dicts: safetensors, or torch pickles (``{"model": ...}`` or a bare dict)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft", ".sfts")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, on CPU in their stored dtype."""
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            return load_file(str(path))
        package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise many types for corrupt files; say which file
        raise CheckpointError(f"could not read checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(package, dict) and isinstance(package.get("model"), dict):
        package = package["model"]
    if not isinstance(package, dict) or not all(isinstance(v, torch.Tensor) for v in package.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return package


def write_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Save atomically: write a unique temporary file beside ``path``, then rename it, so a failure (or a
    concurrent writer) never leaves a half-written file."""
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
