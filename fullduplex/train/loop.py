"""The one training loop both recipes run through (the LM recipe in :mod:`.recipe`, the codec in :mod:`.codec`).

Top to bottom: setup (process group, run folder, seeds, the latest checkpoint, the task's model and data, the
optimiser, schedule and random states) → loop (optimiser step, metrics, validation, best step, checkpoints) →
cleanup (loss curve, loggers, the task's export). A recipe is a :class:`Task`: its model, optimiser and schedule,
and what differs — the loss of a step, validation, the tensors to save, the export. A resumed run drops the
metrics written after its checkpoint and continues with the losses of an uninterrupted run.
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
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from . import checkpointing as ckpt
from . import distributed as D
from .checkpointing import Saved
from .curve import METRICS, append_metrics, draw_loss_curve, trim_metrics

if TYPE_CHECKING:
    from .codec import CodecTrainConfig
    from .config import TrainConfig

CURVE_EVERY_S = 300.0  # redraw RUN/loss.png at a checkpoint at most this often (and always at the end)


@dataclass
class Result:
    """What a run did: per-step training losses (global), validation losses, where it ended, the task's export."""

    losses: dict[int, float] = field(default_factory=dict)
    valid: dict[int, float] = field(default_factory=dict)
    last_step: int = 0
    resumed_from: int | None = None
    exported: Path | None = None


class Task(Protocol):
    """A recipe as the loop sees it, built by ``build(dist, saved)`` with ``saved``'s weights already loaded.
    ``train_step``: forward and backward of the step's global batch (gradients summed over ranks), its global
    ``loss`` and parts; ``validate``: the validation loss (collective), None without data; ``state_tensors``: what a
    checkpoint holds, on CPU (collective under FSDP); ``state``: the task's entries of ``state.json``; ``export``:
    once, at the end of a run that reached ``max_steps``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    frames_per_step: int  # frames (12.5 Hz) one optimiser step trains on, over all ranks

    def train_step(self, step: int) -> dict[str, float]: ...
    def validate(self) -> float | None: ...
    def state_tensors(self) -> dict[str, torch.Tensor]: ...
    def state(self) -> dict[str, Any]: ...
    def export(self, run_dir: Path) -> Path | None: ...


def run(cfg: TrainConfig | CodecTrainConfig, build: Callable[[D.Dist, Saved | None], Task], name: str = "train",
        stop_after: int | None = None, progress: bool = True) -> Result:
    """Run (or resume) a recipe: ``cfg.run`` (output, seed, eval/save/log steps, device) and ``cfg.optim``
    (max_steps, grad_clip) drive the loop, ``build`` makes the task. ``stop_after``: return after that step without
    a checkpoint, as a killed run would (for tests)."""
    d = D.setup(cfg.run.device, getattr(cfg.run, "backend", "auto"))
    try:
        return _run(cfg, build, d, name, stop_after, progress)
    finally:
        D.cleanup(d)


def _run(cfg: TrainConfig | CodecTrainConfig, build: Callable[[D.Dist, Saved | None], Task], d: D.Dist, name: str,
         stop_after: int | None, progress: bool) -> Result:
    # Setup: run folder, seeds, resume point, the task, optimiser/schedule/random states.
    r, max_steps = cfg.run, cfg.optim.max_steps
    run_dir = Path(r.output)
    ckpt.check_run_dir(run_dir)
    metrics_path = run_dir / METRICS
    seed_everything(r.seed + d.rank)
    steps = ckpt.list_checkpoints(run_dir)
    saved = ckpt.load_checkpoint(run_dir, steps[-1]) if steps else None
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
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        trim_metrics(metrics_path, start)
    log = _Loggers(cfg, run_dir, name, start, progress) if d.is_main else None
    params = [p for p in task.model.parameters() if p.requires_grad]
    curve_drawn = time.monotonic()

    # Loop.
    result = Result(resumed_from=saved.step if saved else None)
    step = start
    for step in range(start + 1, max_steps + 1):
        t0 = time.perf_counter()
        values = task.train_step(step)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        # lr_NAME per named parameter group (its _no_decay twin has the same), or lr for an unnamed one
        lrs = {f"lr_{g['name'].removesuffix('_no_decay')}" if "name" in g else "lr": g["lr"]
               for g in task.optimizer.param_groups}
        task.optimizer.step()
        task.scheduler.step()
        task.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        result.losses[step] = values["loss"]
        record = {"step": step, "split": "train", **values, "grad_norm": float(grad_norm), **lrs,
                  "frames_per_s": task.frames_per_step / elapsed, "seconds": elapsed}
        valid = task.validate() if (r.eval_every and step % r.eval_every == 0) or step == max_steps else None
        improved = valid is not None and (best is None or valid < best["valid_loss"])
        if valid is not None:
            result.valid[step] = valid
        if improved:
            best = {"step": step, "valid_loss": valid}
        if log is not None:
            log.step(record, valid, logged=step % r.log_every == 0 or step == max_steps)
        if stop_after is not None and step >= stop_after:
            break
        if improved or (r.save_every and step % r.save_every == 0) or step == max_steps:
            # Checkpoint: every rank gathers (collectives under FSDP), rank 0 writes.
            tensors, optim = task.state_tensors(), optim_state(task.model, task.optimizer)
            rngs = D.gather_objects(ckpt.rng_state(), d)
            if d.is_main:
                state = {"step": step, "best": best, "world": d.world, "scheduler": task.scheduler.state_dict(),
                         **task.state()}
                ckpt.save_checkpoint(run_dir, step, tensors, optim, state, rngs)
                if best is not None and best["step"] == step:
                    ckpt.write_best(run_dir, step, best["valid_loss"])
                ckpt.prune(run_dir, r.keep_checkpoints)
                if time.monotonic() - curve_drawn > CURVE_EVERY_S:  # a long run's curve, now and then
                    draw_loss_curve(run_dir, metrics_path)
                    curve_drawn = time.monotonic()
            D.barrier(d)

    # Cleanup.
    if log is not None:
        log.close()
        draw_loss_curve(run_dir, metrics_path)
    result.last_step = step
    if step == max_steps and (stop_after is None or step < stop_after) and d.is_main:
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


class _Loggers:
    """Rank 0's outputs of each step: metrics.jsonl, TensorBoard and wandb when installed, the progress bar."""

    def __init__(self, cfg: TrainConfig | CodecTrainConfig, run_dir: Path, name: str, start: int, progress: bool) -> None:
        self.path = run_dir / METRICS
        self.tb = _tensorboard(run_dir)
        self.wandb = _wandb(cfg, run_dir) if getattr(cfg, "wandb", None) is not None else None
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.optim.max_steps, initial=start, desc=name, unit="step", dynamic_ncols=True)

    def step(self, record: dict[str, Any], valid: float | None, logged: bool) -> None:
        step = record["step"]
        rows = [record] if logged else []
        rows += [{"step": step, "split": "valid", "loss": valid}] if valid is not None else []
        for row in rows:  # metrics.jsonl; train/NAME and valid/loss in TensorBoard and wandb
            append_metrics(self.path, row)
            scalars = {f"{row['split']}/{k}": v for k, v in row.items() if k not in ("step", "split")}
            for k, v in scalars.items() if self.tb is not None else ():
                self.tb.add_scalar(k, v, step)
            if self.wandb is not None:
                self.wandb.log(scalars, step=step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", **({"valid": f"{valid:.3f}"} if valid is not None else {}))
            self.bar.update(1)

    def close(self) -> None:
        for closing in (self.bar and self.bar.close, self.tb and self.tb.close, self.wandb and self.wandb.finish):
            if closing:
                closing()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl only
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _wandb(cfg: TrainConfig, run_dir: Path) -> Any:
    """A wandb run when ``wandb.project`` is set and wandb is installed; one line on stderr when it is not."""
    w = cfg.wandb
    if w.project is None:
        return None
    try:
        import wandb
    except ImportError:
        print(f"wandb is not installed: wandb.project {w.project!r} is not logged (metrics.jsonl and "
              "TensorBoard are); `pip install wandb` to log there", file=sys.stderr)
        return None
    return wandb.init(project=w.project, name=w.run_name or run_dir.resolve().name,
                      dir=str(run_dir), mode="offline" if w.offline else "online", config=cfg.to_dict())
