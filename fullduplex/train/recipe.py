"""``fullduplex train``: the fine-tuning recipe, top to bottom — setup, loop, checkpoints, cleanup.

Run it plainly (one process, CPU or one GPU) or under ``torchrun`` (one process per GPU, any number of nodes).
See docs/training.md for the recipe fields, the loss and the resume semantics.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_output
from ..checkpoint.lm import load_lm, resolve_lm
from ..data.shards import ShardDataset
from ..errors import FullduplexError
from ..lm.model import LMModel
from . import checkpointing as ckpt
from . import distributed as D
from .config import TrainConfig
from .data import TrainWindows, ValidWindows
from .lora import apply_lora
from .loss import combine, loss_parts, target_weights

DEPTH_PREFIXES = ("depformer_in.", "depformer_emb.", "depformer_text_emb.", "depformer.", "linears.")
METRICS = "metrics.jsonl"
CURVE_EVERY_S = 300.0  # redraw RUN/loss.png at a checkpoint at most this often (and always at the end)


@dataclass
class Result:
    """What a run did: per-step training losses (global), validation losses, where it ended."""

    losses: dict[int, float] = field(default_factory=dict)
    valid: dict[int, float] = field(default_factory=dict)
    last_step: int = 0
    resumed_from: int | None = None


# --- setup pieces -----------------------------------------------------------------------------------------
def scratch_model(cfg: TrainConfig, seed: int) -> LMModel:
    """A randomly initialised LM of ``model.config`` (``model.from_scratch``), its ``text_card`` set to the
    vocabulary of ``model.tokenizer`` when given: embeddings N(0, 1), linear and attention weights N(0, 0.02),
    norms 1."""
    from ..checkpoint.lm import read_lm_config
    from ..lm.config import lm_preset

    spec = cfg.model.config
    config = read_lm_config(spec) if spec.endswith(".json") else lm_preset(spec)
    if cfg.model.tokenizer is not None:
        from ..text.tokenizer import TextTokenizer

        config = config.with_text_vocabulary(TextTokenizer.load(cfg.model.tokenizer).vocab_size)
    generator = torch.Generator().manual_seed(seed)
    model = LMModel(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0, generator=generator)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.02, generator=generator)
        for layer in model.depformer.layers:  # per-step attention projections, stacked [steps, out, in]
            layer.self_attn.in_proj.normal_(0.0, 0.02, generator=generator)
            layer.self_attn.out_proj.normal_(0.0, 0.02, generator=generator)
    return model


def load_base(cfg: TrainConfig) -> LMModel:
    """The base LM on CPU, in ``model.dtype``, trainable."""
    if cfg.model.from_scratch:
        return scratch_model(cfg, cfg.run.seed).train().requires_grad_(True)
    path, repo_config = resolve_lm(cfg.model.checkpoint, cfg.model.hf_repo)
    dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
    model = load_lm(path, config=cfg.model.config or repo_config, device="cpu", dtype=dtype)
    return model.train().requires_grad_(True)


def enable_gradient_checkpointing(blocks: list[nn.Module]) -> None:
    """Recompute each block's activations in the backward pass (non-reentrant ``torch.utils.checkpoint``)."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        forward = block.forward

        def run(*args: Any, _forward: Callable = forward, **kwargs: Any) -> Any:
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = run


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: temporal / depth learning rates; weight decay on matrices only (not norms), or on every
    parameter with ``optim.decay_all``."""
    groups: dict[tuple[str, bool], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "depth" if name.startswith(DEPTH_PREFIXES) else "temporal"
        groups.setdefault((part, p.dim() >= 2 or cfg.optim.decay_all), []).append(p)
    lrs = {"temporal": cfg.optim.lr_temporal, "depth": cfg.optim.lr_depth}
    return [
        {"params": params, "lr": lrs[part], "weight_decay": cfg.optim.weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '_no_decay'}"}
        for (part, decay), params in sorted(groups.items())
    ]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rates for optimiser step ``step`` (0-based): linear warm-up from
    1/warmup to 1 over ``warmup`` steps, then constant or cosine down to ``min_lr_ratio`` at ``max_steps``."""
    o = cfg.optim
    if step < o.warmup:
        return (step + 1) / o.warmup
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup) / max(1, o.max_steps - o.warmup))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """``onecycle``: torch's OneCycleLR as moshi-finetune builds it (peak = each group's lr, ``total_steps =
    max_steps``, ``pct_start``; cosine from lr/25 up, then down to lr/25e4; beta1 cycled 0.95 → 0.85 → 0.95).
    Otherwise :func:`lr_factor` on the base learning rates."""
    o = cfg.optim
    if o.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=o.max_steps, pct_start=o.pct_start)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


def train_embeddings(model: nn.Module) -> list[str]:
    """Unfreeze every parameter whose name holds ``emb`` (moshi-finetune's ``lora.ft_embed``); their names."""
    names = [n for n, p in model.named_parameters() if "emb" in n]
    for n, p in model.named_parameters():
        if "emb" in n:
            p.requires_grad_(True)
    return names


def full_state(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU, gathered from the shards under FSDP (collective: every rank)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def optim_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


# --- the recipe -------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, stop_after: int | None = None, progress: bool = True) -> Result:
    """Run (or resume) the recipe. ``stop_after``: return after that step without a final checkpoint, as a
    killed run would (for tests)."""
    d = D.setup(cfg.run.device, cfg.run.backend)
    try:
        return _train(cfg, d, stop_after, progress)
    finally:
        D.cleanup(d)


def _train(cfg: TrainConfig, d: D.Dist, stop_after: int | None, progress: bool) -> Result:
    run_dir = Path(cfg.run.output)
    ckpt.check_run_dir(run_dir)
    metrics_path = run_dir / METRICS
    fsdp = d.enabled and cfg.run.fsdp
    bf16 = cfg.run.mixed_precision == "bf16" or (cfg.run.mixed_precision == "auto" and d.device.type == "cuda")
    seed_everything(cfg.run.seed + d.rank)

    # Setup: data, model (+ LoRA, checkpointing, sharding), optimiser, schedule, resume point.
    frames = cfg.segment_frames()
    train_windows = TrainWindows(ShardDataset(cfg.data.train), frames, cfg.run.seed)
    valid_windows = ValidWindows(ShardDataset(cfg.data.valid), frames) if cfg.data.valid else None
    model = load_base(cfg)
    lm_config = model.config
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora.rank, cfg.lora.scaling, cfg.lora.target_modules, seed=cfg.run.seed)
        if cfg.lora.train_embeddings:
            train_embeddings(model)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    steps = ckpt.list_checkpoints(run_dir)
    resume = steps[-1] if steps else None
    trainable_saved = optim_saved = None
    state: dict[str, Any] = {"step": 0, "valid_position": 0, "best": None}
    rngs: list[dict[str, Any]] = []
    if resume is not None:
        trainable_saved, optim_saved, state, rngs = ckpt.load_checkpoint(ckpt.step_dir(run_dir, resume))
        missing = set(trainable_saved) - set(model.state_dict())
        if missing:
            raise ValueError(f"{ckpt.step_dir(run_dir, resume)} does not fit this recipe's model ({len(missing)} "
                             f"unknown tensors, e.g. {sorted(missing)[0]}); was lora changed? Use a new run.output")
        with torch.no_grad():
            current = model.state_dict()
            for k, v in trainable_saved.items():
                current[k].copy_(v)
    blocks = [*model.transformer.layers, *model.depformer.layers]
    if cfg.run.gradient_checkpointing:
        enable_gradient_checkpointing(blocks)
    if fsdp:
        D.shard_fsdp2(model, blocks, bf16)
    else:
        model.to(d.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    scheduler = make_scheduler(optimizer, cfg)
    if resume is not None:
        load_optim_state(model, optimizer, optim_saved)
        scheduler.load_state_dict(state["scheduler"])
        if len(rngs) == d.world:
            ckpt.set_rng_state(rngs[d.rank])
        elif d.is_main:
            warnings.warn(f"resuming on {d.world} ranks from a checkpoint of {len(rngs)}: random states not restored",
                          stacklevel=1)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        _trim_metrics(metrics_path, state["step"])
    scale = D.grad_scale(d, fsdp)
    autocast = (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if bf16 and not fsdp else nullcontext
    tb = _tensorboard(run_dir) if d.is_main else None
    wandb_run = _wandb(cfg, run_dir) if d.is_main else None
    per_micro = cfg.loss.normalize == "micro_batch"

    def global_loss(batches: list[torch.Tensor], backward: bool) -> dict[str, float]:
        """Run the micro-batches (this rank's share), return the global loss and its parts."""
        weights = [target_weights(b, lm_config, cfg.loss) for b in batches]
        totals = torch.stack([sum(w.text.sum() for w in weights), sum(w.audio.sum() for w in weights)]).to(d.device)
        D.all_reduce_sum(totals, d)
        sums = torch.zeros(4, device=d.device)  # loss, text part, audio part, semantic CE mean numerator
        for m, (codes, w) in enumerate(zip(batches, weights, strict=True)):
            codes = codes.to(d.device)
            w.text, w.audio = w.text.to(d.device), w.audio.to(d.device)
            if fsdp and backward:
                model.set_requires_gradient_sync(m == len(batches) - 1)
            with autocast():
                out = model(codes)
            parts = loss_parts(out, codes, w, lm_config)
            if per_micro:  # moshi-finetune: each micro-batch normalised by its own weights, then the mean
                share = len(batches) * d.world
                text_total, audio_total = w.text.sum().clamp(min=1e-12) * share, w.audio.sum().clamp(min=1e-12) * share
            else:
                text_total, audio_total = totals[0], totals[1]
            loss = combine(parts, text_total, audio_total, cfg.loss)
            if backward:
                (loss * scale).backward()
            sums += torch.stack([loss.detach(), parts.text.detach() / text_total, parts.audio.detach() / audio_total,
                                 torch.zeros((), device=d.device)])
        D.all_reduce_sum(sums, d)
        values = sums.tolist()
        return {"loss": values[0], "text_loss": values[1], "audio_loss": values[2]}

    def validate(position: int) -> tuple[float, int]:
        model.eval()
        batches = []
        for _ in range(cfg.run.eval_batches):
            batches.append(valid_windows.batch(position, d.rank, d.world, cfg.run.batch_size))
            position += d.world * cfg.run.batch_size
        with torch.no_grad():
            value = global_loss(batches, backward=False)["loss"]
        model.train()
        return value, position

    curve_drawn = [time.monotonic()]

    def save(step: int) -> None:
        full = full_state(model, fsdp)  # collective under FSDP
        trainable_state = {k: v for k, v in full.items() if k in trainable_names} if cfg.lora.enabled else full
        optim = optim_state(model, optimizer)  # collective under FSDP
        all_rngs = D.gather_objects(ckpt.rng_state(), d)
        if d.is_main:
            snapshot = {"step": step, "valid_position": valid_position, "best": best, "world": d.world,
                        "scheduler": scheduler.state_dict(), "lora": cfg.lora.enabled}
            ckpt.save_checkpoint(run_dir, step, trainable_state, optim, snapshot, all_rngs)
            if best is not None and best["step"] == step:
                ckpt.write_best(run_dir, step, best["valid_loss"])
            ckpt.prune(run_dir, cfg.run.keep_checkpoints)
            if time.monotonic() - curve_drawn[0] > CURVE_EVERY_S:  # a long run's curve, now and then
                draw_loss_curve(run_dir, metrics_path)
                curve_drawn[0] = time.monotonic()
        D.barrier(d)

    # Loop.
    result = Result(resumed_from=resume)
    start, valid_position, best = state["step"], state["valid_position"], state["best"]
    windows_per_step = cfg.run.batch_size * d.world * cfg.run.grad_accumulation
    bar = None
    if d.is_main and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.optim.max_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    step = start
    for step in range(start + 1, cfg.optim.max_steps + 1):
        t0 = time.perf_counter()
        batches = [train_windows.batch(step, m, d.rank, d.world, cfg.run.batch_size) for m in range(cfg.run.grad_accumulation)]
        values = global_loss(batches, backward=True)
        if not fsdp:
            D.all_reduce_grads(model, d)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lrs = {g["name"].removesuffix("_no_decay"): g["lr"] for g in optimizer.param_groups}
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        result.losses[step] = values["loss"]
        record = {"step": step, "split": "train", **values, "grad_norm": float(grad_norm),
                  **{f"lr_{k}": v for k, v in lrs.items()},
                  "frames_per_s": windows_per_step * frames / elapsed, "seconds": elapsed}
        evaluate = valid_windows is not None and (
            (cfg.run.eval_every and step % cfg.run.eval_every == 0) or step == cfg.optim.max_steps)
        improved = False
        if evaluate:
            valid_loss, valid_position = validate(valid_position)
            result.valid[step] = valid_loss
            if best is None or valid_loss < best["valid_loss"]:
                best, improved = {"step": step, "valid_loss": valid_loss}, True
        if d.is_main:
            if step % cfg.run.log_every == 0 or step == cfg.optim.max_steps:
                _append_metrics(metrics_path, record)
                if tb is not None:
                    for k in ("loss", "text_loss", "audio_loss", "grad_norm", "seconds", "frames_per_s"):
                        tb.add_scalar(f"train/{k}", record[k], step)
                if wandb_run is not None:
                    wandb_run.log({f"train/{k}": v for k, v in record.items() if k not in ("step", "split")}, step=step)
            if evaluate:
                _append_metrics(metrics_path, {"step": step, "split": "valid", "loss": result.valid[step]})
                if tb is not None:
                    tb.add_scalar("valid/loss", result.valid[step], step)
                if wandb_run is not None:
                    wandb_run.log({"valid/loss": result.valid[step]}, step=step)
            if bar is not None:
                bar.set_postfix(loss=f"{values['loss']:.3f}", **({"valid": f"{result.valid[step]:.3f}"} if evaluate else {}))
                bar.update(1)
        if stop_after is not None and step >= stop_after:
            break
        if improved or (cfg.run.save_every and step % cfg.run.save_every == 0) or step == cfg.optim.max_steps:
            save(step)
    if bar is not None:
        bar.close()
    if tb is not None:
        tb.close()
    if d.is_main:
        draw_loss_curve(run_dir, metrics_path)
    if wandb_run is not None:
        wandb_run.finish()
    result.last_step = step
    return result


def draw_loss_curve(run_dir: Path, metrics_path: Path) -> Path | None:
    """``RUN/loss.png`` from ``metrics.jsonl``; one line on stderr when matplotlib is missing."""
    from .curve import MISSING, write_loss_curve

    path = write_loss_curve(run_dir, read_metrics(metrics_path))
    if path is None and not (run_dir / "loss.png").exists():
        from .curve import matplotlib_available

        if not matplotlib_available():
            print(MISSING, file=sys.stderr)
    return path


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl only
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _wandb(cfg: TrainConfig, run_dir: Path) -> Any:
    """A wandb run when ``wandb.project`` is set and wandb is installed; one line on stderr when it is not."""
    if cfg.wandb.project is None:
        return None
    try:
        import wandb
    except ImportError:
        import sys

        print(f"wandb is not installed: wandb.project {cfg.wandb.project!r} is not logged (metrics.jsonl and "
              "TensorBoard are); `pip install wandb` to log there", file=sys.stderr)
        return None
    return wandb.init(project=cfg.wandb.project, name=cfg.wandb.run_name or run_dir.resolve().name,
                      dir=str(run_dir), mode="offline" if cfg.wandb.offline else "online", config=cfg.to_dict())
