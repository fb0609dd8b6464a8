"""The one training loop both recipes run through (the LM recipe in :mod:`.recipe`, the codec in :mod:`.codec`).

Top to bottom: setup (process group, run folder, seeds, the latest checkpoint, the task's model and data, the
optimiser and schedule state, random states) → loop (one optimiser step, metrics, validation, best step,
checkpoints) → cleanup (loss curve, loggers, the task's export). A recipe is a :class:`Task`: its model, optimiser
and schedule, and the four things that differ — the loss of a step, validation, the tensors to save and the export.

Every checkpoint ``RUN/checkpoints/step_N`` holds what resuming needs (see :mod:`.checkpointing`); a resumed run
drops the metrics written after that step and continues with the losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_output
from ..errors import FullduplexError
from . import checkpointing as ckpt
from . import distributed as D

METRICS = "metrics.jsonl"
CURVE_EVERY_S = 300.0  # redraw RUN/loss.png at a checkpoint at most this often (and always at the end)


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs from a recipe's config."""

    output: str  # the run folder
    seed: int
    max_steps: int
    grad_clip: float  # 0: no clipping
    eval_every: int  # 0: only at the last step (when the task validates at all)
    save_every: int  # 0: only at the end (and at each new best validation loss)
    keep_checkpoints: int
    log_every: int
    device: str
    backend: str
    config: dict[str, Any]  # written to RUN/config.json
    name: str = "train"  # the progress bar's label
    wandb: Any = None  # a WandbConfig, or None: no wandb logging


@dataclass
class Saved:
    """The checkpoint a run resumes from."""

    step: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]  # state.json
    rngs: list[dict[str, Any]]  # per rank of the run that wrote it


@dataclass
class Result:
    """What a run did: per-step training losses (global), validation losses, where it ended, the task's export."""

    losses: dict[int, float] = field(default_factory=dict)
    valid: dict[int, float] = field(default_factory=dict)
    last_step: int = 0
    resumed_from: int | None = None
    exported: Path | None = None


class Task(Protocol):
    """A recipe as the loop sees it, built by ``build(dist, saved)`` with ``saved``'s weights already loaded."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    frames_per_step: int  # frames (12.5 Hz) one optimiser step trains on, over all ranks

    def train_step(self, step: int) -> dict[str, float]:
        """Forward and backward over step ``step``'s global batch (gradients summed over ranks, ready to clip);
        the global loss as ``loss`` and its parts."""
        ...

    def validate(self) -> float | None:
        """The validation loss (collective: every rank), or None when the recipe has no validation data."""
        ...

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds, on CPU (collective under FSDP: every rank calls it)."""
        ...

    def state(self) -> dict[str, Any]:
        """The task's own entries of ``state.json`` (e.g. the validation position)."""
        ...

    def export(self, run_dir: Path) -> Path | None:
        """Called once at the end of a run that reached ``max_steps``; what it wrote, if anything."""
        ...


def run(settings: LoopSettings, build: Callable[[D.Dist, Saved | None], Task], stop_after: int | None = None,
        progress: bool = True) -> Result:
    """Run (or resume) a recipe. ``stop_after``: return after that step without a checkpoint, as a killed run would
    (for tests)."""
    d = D.setup(settings.device, settings.backend)
    try:
        return _run(settings, build, d, stop_after, progress)
    finally:
        D.cleanup(d)


def _run(s: LoopSettings, build: Callable[[D.Dist, Saved | None], Task], d: D.Dist, stop_after: int | None,
         progress: bool) -> Result:
    # Setup: run folder, seeds, resume point, the task, optimiser/schedule/random states.
    run_dir = Path(s.output)
    ckpt.check_run_dir(run_dir)
    metrics_path = run_dir / METRICS
    seed_everything(s.seed + d.rank)
    steps = ckpt.list_checkpoints(run_dir)
    saved = None
    if steps:
        tensors, optim, state, rngs = ckpt.load_checkpoint(ckpt.step_dir(run_dir, steps[-1]))
        saved = Saved(steps[-1], tensors, optim, state, rngs)
    task = build(d, saved)
    start, best = (saved.state["step"], saved.state["best"]) if saved else (0, None)
    if saved is not None:
        load_optim_state(task.model, task.optimizer, saved.optimizer)
        task.scheduler.load_state_dict(saved.state["scheduler"])
        if len(saved.rngs) == d.world:
            ckpt.set_rng_state(saved.rngs[d.rank])
        elif d.is_main:
            warnings.warn(f"resuming on {d.world} ranks from a checkpoint of {len(saved.rngs)}: random states not "
                          "restored", stacklevel=1)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(s.config, indent=1) + "\n")
        _trim_metrics(metrics_path, start)
    log = _Loggers(s, run_dir, start, progress) if d.is_main else None
    params = [p for p in task.model.parameters() if p.requires_grad]
    curve_drawn = time.monotonic()

    # Loop.
    result = Result(resumed_from=saved.step if saved else None)
    step = start
    for step in range(start + 1, s.max_steps + 1):
        t0 = time.perf_counter()
        values = task.train_step(step)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip if s.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        lrs = _learning_rates(task.optimizer)
        task.optimizer.step()
        task.scheduler.step()
        task.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        result.losses[step] = values["loss"]
        record = {"step": step, "split": "train", **values, "grad_norm": float(grad_norm), **lrs,
                  "frames_per_s": task.frames_per_step / elapsed, "seconds": elapsed}
        valid = None
        if (s.eval_every and step % s.eval_every == 0) or step == s.max_steps:
            valid = task.validate()
        improved = valid is not None and (best is None or valid < best["valid_loss"])
        if valid is not None:
            result.valid[step] = valid
        if improved:
            best = {"step": step, "valid_loss": valid}
        if log is not None:
            log.step(record, valid, logged=step % s.log_every == 0 or step == s.max_steps)
        if stop_after is not None and step >= stop_after:
            break
        if improved or (s.save_every and step % s.save_every == 0) or step == s.max_steps:
            # Checkpoint: every rank gathers (collectives under FSDP), rank 0 writes.
            tensors, optim = task.state_tensors(), optim_state(task.model, task.optimizer)
            rngs = D.gather_objects(ckpt.rng_state(), d)
            if d.is_main:
                state = {"step": step, "best": best, "world": d.world, "scheduler": task.scheduler.state_dict(),
                         **task.state()}
                ckpt.save_checkpoint(run_dir, step, tensors, optim, state, rngs)
                if best is not None and best["step"] == step:
                    ckpt.write_best(run_dir, step, best["valid_loss"])
                ckpt.prune(run_dir, s.keep_checkpoints)
                if time.monotonic() - curve_drawn > CURVE_EVERY_S:  # a long run's curve, now and then
                    draw_loss_curve(run_dir, metrics_path)
                    curve_drawn = time.monotonic()
            D.barrier(d)

    # Cleanup.
    if log is not None:
        log.close()
        draw_loss_curve(run_dir, metrics_path)
    result.last_step = step
    if step == s.max_steps and (stop_after is None or step < stop_after) and d.is_main:
        result.exported = task.export(run_dir)
    return result


# --- pieces of the loop -----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, o: Any) -> float:
    """Multiplier of the base learning rates for optimiser step ``step`` (0-based) under optim config ``o``: linear
    warm-up from 1/warmup to 1 over ``o.warmup`` steps, then constant, or cosine down to ``o.min_lr_ratio`` at
    ``o.max_steps``."""
    if step < o.warmup:
        return (step + 1) / o.warmup
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup) / max(1, o.max_steps - o.warmup))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def optim_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser state as a full, parameter-name-keyed state dict on CPU (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load :func:`optim_state`'s dict on any world size; an older index-keyed state dict loads as it is."""
    if state.get("state") and all(isinstance(k, int) for k in state["state"]):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def _learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``lr_NAME`` per named parameter group (``_no_decay`` twins merged), or ``lr`` for an unnamed one."""
    out = {}
    for g in optimizer.param_groups:
        out[f"lr_{g['name'].removesuffix('_no_decay')}" if "name" in g else "lr"] = g["lr"]
    return out


class _Loggers:
    """Rank 0's outputs of each step: metrics.jsonl, TensorBoard and wandb when installed, the progress bar."""

    def __init__(self, s: LoopSettings, run_dir: Path, start: int, progress: bool) -> None:
        self.path = run_dir / METRICS
        self.tb = _tensorboard(run_dir)
        self.wandb = _wandb(s.wandb, s.config, run_dir) if s.wandb is not None else None
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=s.max_steps, initial=start, desc=s.name, unit="step", dynamic_ncols=True)

    def step(self, record: dict[str, Any], valid: float | None, logged: bool) -> None:
        step = record["step"]
        if logged:
            _append_metrics(self.path, record)
            scalars = {k: v for k, v in record.items() if k not in ("step", "split")}
            if self.tb is not None:
                for k, v in scalars.items():
                    self.tb.add_scalar(f"train/{k}", v, step)
            if self.wandb is not None:
                self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)
        if valid is not None:
            _append_metrics(self.path, {"step": step, "split": "valid", "loss": valid})
            if self.tb is not None:
                self.tb.add_scalar("valid/loss", valid, step)
            if self.wandb is not None:
                self.wandb.log({"valid/loss": valid}, step=step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", **({"valid": f"{valid:.3f}"} if valid is not None else {}))
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl only
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _wandb(cfg: Any, config: dict[str, Any], run_dir: Path) -> Any:
    """A wandb run when ``wandb.project`` is set and wandb is installed; one line on stderr when it is not."""
    if cfg.project is None:
        return None
    try:
        import wandb
    except ImportError:
        print(f"wandb is not installed: wandb.project {cfg.project!r} is not logged (metrics.jsonl and "
              "TensorBoard are); `pip install wandb` to log there", file=sys.stderr)
        return None
    return wandb.init(project=cfg.project, name=cfg.run_name or run_dir.resolve().name,
                      dir=str(run_dir), mode="offline" if cfg.offline else "online", config=config)


# --- metrics.jsonl and the loss curve ---------------------------------------------------------------------
def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``. A torn last line (what a kill during a write leaves) is dropped with a
    warning; any other unreadable line is an error naming the file and the line."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not an object with an integer step")
        except ValueError as e:
            if number == len(lines):
                warnings.warn(f"{path}: dropped a torn last line {number} (a run killed while writing it)",
                              stacklevel=2)
                break
            raise FullduplexError(f"{path}: line {number} is not a metrics record ({e}); fix or delete that line, "
                                  "then run again") from None
        records.append(record)
    return records


def _trim_metrics(path: Path, step: int) -> None:
    """Drop records past ``step`` (written after the checkpoint a resumed run restarts from) and a torn last line."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        with atomic_output(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))


def draw_loss_curve(run_dir: Path, metrics_path: Path) -> Path | None:
    """``RUN/loss.png`` from ``metrics.jsonl``; one line on stderr when matplotlib is missing."""
    from .curve import MISSING, matplotlib_available, write_loss_curve

    path = write_loss_curve(run_dir, read_metrics(metrics_path))
    if path is None and not (run_dir / "loss.png").exists() and not matplotlib_available():
        print(MISSING, file=sys.stderr)
    return path
