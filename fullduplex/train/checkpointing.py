"""Training checkpoints: what a run needs to resume exactly, written atomically, pruned, with the best one kept.

``RUN/checkpoints/step_000400/``:

- ``trainable.safetensors``: the trained tensors in our state-dict names, float32 — the adapters
  (``*.lora_A``, ``*.lora_B``) of a LoRA run, else the whole model;
- ``optimizer.pt``: AdamW state as a full, name-keyed state dict (resumable on another world size);
- ``state.json``: step, validation position, best validation loss so far, world size, scheduler state;
- ``rng.pt``: per rank, the torch (CPU and CUDA), Python and NumPy generator states.

A checkpoint is written into a hidden temporary folder, flushed to disk (files, then the folder) and renamed into
place, so a kill or a power cut leaves the whole checkpoint or none. ``RUN/best.json`` names the step with the
lowest validation loss; that step is never pruned.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..atomic import OutputKind, atomic_output, check_output_folder, fsync_dir, fsync_tree
from ..errors import FullduplexError

CHECKPOINTS = "checkpoints"
BEST = "best.json"
# What `fullduplex train` writes in run.output (the LM and the codec recipes; the loss curve and TensorBoard
# logs when their libraries are installed).
# recipe.yaml: the native recipe `train` writes first when it translates a moshi-finetune recipe.
RUN_FILES = frozenset({"config.json", "metrics.jsonl", CHECKPOINTS, BEST, "tensorboard", "loss.png",
                       "mimi.safetensors", "mimi_config.json", "recipe.yaml"})


def _run_files(folder: Path) -> set[str] | None:
    if not (folder / "config.json").is_file() and not (folder / "recipe.yaml").is_file():
        return None
    # .NAME.XXXX.tmp: what a kill during an atomic write leaves (see atomic.temporary_beside)
    return set(RUN_FILES) | {p.name for p in folder.glob(".*.tmp")}


RUN = OutputKind("fullduplex train", _run_files)


def check_run_dir(run_dir: Path) -> bool:
    """Refuse a ``run.output`` that holds anything but a training run's files (nothing is written or deleted
    then); returns True when it holds a previous run, which the caller resumes."""
    return check_output_folder(run_dir, RUN, overwrite=True, option="run.output")


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints of a run, ascending."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    steps = []
    for p in folder.glob("step_*"):
        if (p / "state.json").is_file() and p.name[5:].isdigit():
            steps.append(int(p.name[5:]))
    return sorted(steps)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path, step: int, trainable: dict[str, torch.Tensor], optimizer: dict[str, Any], state: dict[str, Any],
    rngs: list[dict[str, Any]],
) -> Path:
    """Write one checkpoint (rank 0 only) atomically; returns its folder."""
    final = step_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(rngs, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass
class Saved:
    """A checkpoint as read back: trained tensors, optimiser state, state.json, per-rank RNG states."""

    step: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]
    rngs: list[dict[str, Any]]


def load_tensors(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The saved weights of ``step`` alone (what an export needs: not the optimiser's state)."""
    return load_file(str(step_dir(run_dir, step) / "trainable.safetensors"))


def load_checkpoint(run_dir: Path, step: int) -> Saved:
    folder = step_dir(run_dir, step)
    return Saved(step, load_tensors(run_dir, step),
                 torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False),
                 json.loads((folder / "state.json").read_text()),
                 torch.load(folder / "rng.pt", map_location="cpu", weights_only=False))


def pick_checkpoint(run_dir: Path, which: str) -> int:
    """The step of ``best`` (lowest validation loss; the last one when the run had no validation), ``last``, or
    a step number."""
    steps = list_checkpoints(run_dir)
    if not steps:
        raise FullduplexError(f"{run_dir}: no checkpoints (expected {run_dir / CHECKPOINTS}/step_NNNNNN/); "
                              "is this a `fullduplex train` run.output folder?")
    if which == "last":
        return steps[-1]
    if which == "best":
        best = read_best(run_dir)
        return steps[-1] if best is None else int(best["step"])
    if not which.isdigit() or int(which) not in steps:
        raise FullduplexError(f"{run_dir}: --checkpoint {which!r} is not best, last or one of the steps {steps}")
    return int(which)


def write_best(run_dir: Path, step: int, valid_loss: float) -> None:
    with atomic_output(run_dir / BEST) as tmp:
        tmp.write_text(json.dumps({"step": step, "valid_loss": valid_loss}) + "\n")


def read_best(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / BEST
    return json.loads(path.read_text()) if path.is_file() else None


def prune(run_dir: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recent checkpoints and the best one."""
    best = read_best(run_dir)
    steps = list_checkpoints(run_dir)
    for step in steps[:-keep]:
        if best is None or step != best["step"]:
            shutil.rmtree(step_dir(run_dir, step), ignore_errors=True)
