"""Read and write state dicts: safetensors, or torch pickles (``{"model": ...}`` or a bare dict)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import torch

from ..atomic import atomic_output
from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft", ".sfts")
M = TypeVar("M", bound=torch.nn.Module)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, on CPU in their stored dtype."""
    return dict(iter_state_dict(path))


def iter_state_dict(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a checkpoint file, read one at a time (safetensors) or memory-mapped (torch
    pickles), so that converting a large checkpoint never holds a second full copy."""
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    yield key, f.get_tensor(key)
            return
        try:
            package = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # old (non-zip) pickles cannot be memory-mapped
            package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise many types for corrupt files; say which file
        raise CheckpointError(f"could not read checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(package, dict) and isinstance(package.get("model"), dict):
        package = package["model"]
    if isinstance(package, dict) and isinstance(package.get("fsdp_best_state"), dict):
        package = package["fsdp_best_state"].get("model", package)
    if not isinstance(package, dict) or not all(isinstance(v, torch.Tensor) for v in package.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    yield from package.items()


def check_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], unknown: list[str], source: str, what: str, hint: str = ""
) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys, then ``hint``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = unknown + [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)}, model {list(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source} does not match the {what} architecture:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            shown = "; ".join(items[:5]) + (f"; ... ({len(items) - 5} more)" if len(items) > 5 else "")
            lines.append(f"{len(items)} {title}: {shown}")
    if hint:
        lines.append(f"-- {hint}")
    raise CheckpointError(" ".join(lines))


def assign_weights(model: M, state: dict[str, torch.Tensor], device: str | torch.device) -> M:
    """Load ``state`` into ``model`` built on the meta device (no copy), recompute the buffers checkpoints do
    not hold, move to ``device`` and switch to eval mode."""
    model.load_state_dict(state, assign=True)
    for module in model.modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    return model.to(device=device).eval()


def write_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Save atomically: write a unique temporary file beside ``path``, then rename it, so a failure (or a
    concurrent writer) never leaves a half-written file."""
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
    with atomic_output(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    return path
