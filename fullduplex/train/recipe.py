"""``fullduplex train``: the LM fine-tuning recipe, run by the training loop of :mod:`.loop` as an :class:`LMTask`.
Plainly (one process, CPU or one GPU) or under ``torchrun`` (one process per GPU, any number of nodes); see
docs/training.md for the recipe fields, the loss, the global batch and the resume semantics."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.lm import load_lm, resolve_lm
from ..data.shards import ShardDataset
from ..errors import FullduplexError
from ..lm.model import LMModel
from . import checkpointing as ckpt
from . import distributed as D
from .checkpointing import Saved
from .config import TrainConfig
from .data import TrainWindows, ValidWindows
from .loop import Result, lr_factor, run
from .lora import apply_lora
from .loss import combine, loss_parts, target_weights

DEPTH_PREFIXES = ("depformer_in.", "depformer_emb.", "depformer_text_emb.", "depformer.", "linears.")


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


def load_base(cfg: TrainConfig, dtype: torch.dtype | None = None) -> LMModel:
    """The base LM on CPU, in ``dtype`` (default ``model.dtype``), trainable."""
    if cfg.model.from_scratch:
        return scratch_model(cfg, cfg.run.seed).train().requires_grad_(True)
    path, repo_config = resolve_lm(cfg.model.checkpoint, cfg.model.hf_repo)
    dtype = dtype or (torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32)
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


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """``onecycle``: torch's OneCycleLR as moshi-finetune builds it (peak = each group's lr, ``total_steps =
    max_steps``, ``pct_start``; cosine from lr/25 up, then down to lr/25e4; beta1 cycled 0.95 → 0.85 → 0.95).
    Otherwise :func:`lr_factor` on the base learning rates."""
    o = cfg.optim
    if o.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=o.max_steps, pct_start=o.pct_start)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, o))


def train_embeddings(model: nn.Module) -> None:
    """Unfreeze every parameter whose name holds ``emb`` (moshi-finetune's ``lora.ft_embed``)."""
    for n, p in model.named_parameters():
        p.requires_grad_(p.requires_grad or "emb" in n)


def micro_batches(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per rank per step: ``run.grad_accumulation``, or with ``run.global_batch`` the number that
    makes ``batch_size x world x micro-batches`` windows per step."""
    g, b = cfg.run.global_batch, cfg.run.batch_size
    if not g:
        return cfg.run.grad_accumulation
    if g % (b * world):
        raise FullduplexError(f"run.global_batch {g} is not a multiple of run.batch_size {b} x {world} ranks; pick a "
                              "batch_size and a number of ranks whose product divides it")
    return g // (b * world)


# --- the recipe -------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, stop_after: int | None = None, progress: bool = True) -> Result:
    """Run (or resume) the LM recipe through the training loop. ``stop_after``: return after that step without a
    final checkpoint, as a killed run would (for tests)."""
    return run(cfg, lambda d, saved: LMTask(cfg, d, saved), "train", stop_after, progress)


class LMTask:
    """The LM recipe's part of the loop: windows of the shards, the LM (+ LoRA, gradient checkpointing, FSDP2),
    AdamW with temporal/depth groups, the weighted cross-entropy of :mod:`.loss` normalised over the global batch."""

    def __init__(self, cfg: TrainConfig, d: D.Dist, saved: Saved | None) -> None:
        self.cfg, self.d = cfg, d
        self.fsdp = d.enabled and cfg.run.fsdp
        bf16 = cfg.run.mixed_precision == "bf16" or (cfg.run.mixed_precision == "auto" and d.device.type == "cuda")
        self.micro = micro_batches(cfg, d.world)
        self.windows_per_step = windows_per_step = cfg.run.batch_size * d.world * self.micro
        if saved is not None and saved.state.get("windows_per_step", windows_per_step) != windows_per_step:
            n = saved.state["windows_per_step"]
            raise FullduplexError(
                f"{cfg.run.output} was trained with {n} windows per step; this launch makes {windows_per_step} "
                f"(run.batch_size {cfg.run.batch_size} x {self.micro} micro-batches x {d.world} ranks): set "
                f"run.global_batch: {n} to continue it on {d.world} ranks, or use a new run.output")
        frames = cfg.segment_frames()
        self.frames_per_step = windows_per_step * frames
        self.train_windows = TrainWindows(ShardDataset(cfg.data.train), frames, cfg.run.seed)
        self.valid_windows = ValidWindows(ShardDataset(cfg.data.valid), frames) if cfg.data.valid else None
        self.valid_position = saved.state["valid_position"] if saved else 0
        model = load_base(cfg)
        if cfg.lora.enabled:
            apply_lora(model, cfg.lora.rank, cfg.lora.scaling, cfg.lora.target_modules, seed=cfg.run.seed)
            if cfg.lora.train_embeddings:
                train_embeddings(model)
        self.trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
        if saved is not None:
            missing = set(saved.tensors) - set(model.state_dict())
            if missing:
                raise ValueError(f"{ckpt.step_dir(Path(cfg.run.output), saved.step)} does not fit this recipe's "
                                 f"model ({len(missing)} unknown tensors, e.g. {sorted(missing)[0]}); was lora "
                                 "changed? Use a new run.output")
            with torch.no_grad():
                current = model.state_dict()
                for k, v in saved.tensors.items():
                    current[k].copy_(v)
        blocks = [*model.transformer.layers, *model.depformer.layers]
        if cfg.run.gradient_checkpointing:
            enable_gradient_checkpointing(blocks)
        if self.fsdp:
            D.shard_fsdp2(model, blocks, bf16)
        else:
            model.to(d.device)
        self.model, self.lm_config = model, model.config
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.scale = D.grad_scale(d, self.fsdp)
        use_autocast = bf16 and not self.fsdp
        self.autocast = (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if use_autocast else nullcontext

    def train_step(self, step: int) -> dict[str, float]:
        d, b = self.d, self.cfg.run.batch_size
        batches = [self.train_windows.batch(step, m, d.rank, d.world, b) for m in range(self.micro)]
        values = self._loss(batches, backward=True)
        if not self.fsdp:
            D.all_reduce_grads(self.model, d)
        return values

    def validate(self) -> float | None:
        if self.valid_windows is None:
            return None
        d, b = self.d, self.cfg.run.batch_size
        batches = []
        for _ in range(self.cfg.run.eval_batches):
            batches.append(self.valid_windows.batch(self.valid_position, d.rank, d.world, b))
            self.valid_position += d.world * b
        self.model.eval()
        with torch.no_grad():
            value = self._loss(batches, backward=False)["loss"]
        self.model.train()
        return value

    def _loss(self, batches: list[torch.Tensor], backward: bool) -> dict[str, float]:
        """Run this rank's micro-batches ([B, K, T] each); the global loss and its parts (collective)."""
        d, cfg, device = self.d, self.cfg, self.d.device
        weights = [target_weights(codes, self.lm_config, cfg.loss) for codes in batches]
        totals = torch.stack([sum(w.text.sum() for w in weights), sum(w.audio.sum() for w in weights)]).to(device)
        D.all_reduce_sum(totals, d)
        sums = torch.zeros(3, device=device)  # loss, text part, audio part
        for m, (codes, w) in enumerate(zip(batches, weights, strict=True)):
            codes = codes.to(device)
            w.text, w.audio = w.text.to(device), w.audio.to(device)
            if self.fsdp and backward:
                self.model.set_requires_gradient_sync(m == len(batches) - 1)
            with self.autocast():
                out = self.model(codes)
            parts = loss_parts(out, codes, w, self.lm_config)
            if cfg.loss.normalize == "micro_batch":  # moshi-finetune: each micro-batch over its own weights, then the mean
                share = len(batches) * d.world
                text_total, audio_total = w.text.sum().clamp(min=1e-12) * share, w.audio.sum().clamp(min=1e-12) * share
            else:
                text_total, audio_total = totals[0], totals[1]
            loss = combine(parts, text_total, audio_total, cfg.loss)
            if backward:
                (loss * self.scale).backward()
            sums += torch.stack([loss.detach(), parts.text.detach() / text_total, parts.audio.detach() / audio_total])
        D.all_reduce_sum(sums, d)
        values = sums.tolist()
        return {"loss": values[0], "text_loss": values[1], "audio_loss": values[2]}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The trained tensors (the adapters of a LoRA run, else the whole model) on CPU, gathered under FSDP."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.fsdp:  # collective: every rank
            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            full = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {k: v for k, v in full.items() if k in self.trainable_names} if self.cfg.lora.enabled else full

    def state(self) -> dict[str, Any]:
        return {"valid_position": self.valid_position, "windows_per_step": self.windows_per_step, "lora": self.cfg.lora.enabled}

    def export(self, run_dir: Path) -> Path | None:
        return None  # `fullduplex export RUN --output DIR` chooses the checkpoint and the format
