"""``fullduplex export``: a training run (or moshi-finetune LoRA adapters) → a folder that serves.

The folder holds ``model.safetensors`` in the released key format (LoRA folded in), ``config.json`` (moshi's LM
keywords plus ``moshi_name`` / ``tokenizer_name``) and the tokenizer: what ``fd.load_lm(folder)``,
``fullduplex serve --moshi-weight folder`` and the reference's ``get_moshi_lm`` read. With ``keep_lora`` the
base weights stay unmerged and the adapters go to ``lora.safetensors`` in moshi-finetune's names, with
``lora: true``, ``lora_rank``, ``lora_scaling``, ``lora_name`` in ``config.json`` (as moshi-finetune writes them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..atomic import check_output_folder, folder_output
from ..checkpoint.convert import FORMATS, checkpoint_folder, save_checkpoint
from ..checkpoint.lm import load_lm, resolve_lm
from ..checkpoint.lora import apply_lora_file, ours_to_released_module
from ..checkpoint.mlx import check_mlx_compatible
from ..checkpoint.state import write_safetensors
from ..errors import FullduplexError
from ..lm.model import LMModel
from . import checkpointing as ckpt
from .config import load_config
from .lora import apply_lora, merge_lora

LORA_NAME = "lora.safetensors"
EXPORT = checkpoint_folder("fullduplex export")
STAGES = 3  # on_stage calls of an export: base model, trained weights, writing (for a progress bar's total)


def _inputs(*paths: str | Path | None) -> tuple[Path, ...]:
    """The local files and folders among ``paths`` (an output folder must never hold one of them)."""
    return tuple(Path(p) for p in paths if p is not None and not str(p).startswith("hf://") and Path(p).exists())


def _finish(model: LMModel, output: Path, tokenizer: str | None, extra: dict[str, Any], dtype: torch.dtype | None,
            lora: dict[str, torch.Tensor] | None = None, fmt: str = "moshi", mimi: str | Path | None = None,
            overwrite: bool = False, protect: Iterable[Path] = (), on_stage: Callable[[str], None] | None = None) -> Path:
    """Write the folder under a temporary name, then rename it into place (replacing a previous export only
    with ``overwrite``; never a folder holding one of ``protect``). ``fmt``: ``moshi`` (the released PyTorch
    layout) or an MLX format (``mlx-bf16`` / ``mlx-q8`` / ``mlx-q4``, see :func:`save_checkpoint`)."""
    if fmt not in FORMATS:
        raise FullduplexError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "moshi" and lora is not None:
        raise FullduplexError(f"--keep-lora writes moshi-finetune adapters, which {fmt} cannot hold; drop one")
    if fmt != "moshi":
        try:
            check_mlx_compatible(model.config)
        except ValueError as e:
            raise FullduplexError(str(e)) from None
    if mimi is not None and not Path(mimi).is_file():
        raise FullduplexError(f"Mimi file {mimi} not found")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise FullduplexError(f"tokenizer {tokenizer} not found")
    output = Path(output)
    if on_stage is not None:
        on_stage(f"writing {output}")
    with folder_output(output, EXPORT, overwrite, (*protect, *_inputs(tokenizer, mimi))) as work:
        save_checkpoint(model, work, fmt, tokenizer=tokenizer, mimi=mimi, dtype=dtype)
        if lora is not None:
            write_safetensors(lora, work / LORA_NAME)
        if extra:
            config = json.loads((work / "config.json").read_text()) | extra
            (work / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return output


def export_run(run_dir: str | Path, output: str | Path, checkpoint: str = "best", keep_lora: bool = False,
               dtype: torch.dtype | None = None, fmt: str = "moshi", mimi: str | Path | None = None,
               overwrite: bool = False, on_stage: Callable[[str], None] | None = None) -> tuple[Path, int]:
    """Export checkpoint ``checkpoint`` of a training run in ``fmt``, with a copy of ``mimi`` when given;
    returns (folder, step). ``output`` must be new, empty, or (with ``overwrite``) a previous export; it may never
    hold ``run_dir``. ``on_stage(description)`` is called as each of the :data:`STAGES` stages starts."""
    run_dir = Path(run_dir)
    check_output_folder(Path(output), EXPORT, overwrite, protect=(run_dir,))
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FullduplexError(f"{run_dir}: no config.json; is this a `fullduplex train` run.output folder?")
    cfg = load_config(None, raw=json.loads(config_path.read_text()), check_paths=False)
    step = ckpt.pick_checkpoint(run_dir, checkpoint)
    stage = on_stage or (lambda _: None)
    stage("loading the base model")
    trainable = ckpt.load_tensors(run_dir, step)
    from .recipe import load_base

    model = load_base(cfg, torch.float32)
    keep = {"fmt": fmt, "mimi": mimi, "overwrite": overwrite, "protect": (run_dir, *_inputs(cfg.model.checkpoint)),
            "on_stage": on_stage}
    stage(f"applying step {step}" + (" and folding LoRA in" if cfg.lora.enabled and not keep_lora else ""))
    if not cfg.lora.enabled:
        model.load_state_dict(trainable)
        return _finish(model, output, cfg.model.tokenizer, {}, dtype, **keep), step
    apply_lora(model, cfg.lora.rank, cfg.lora.scaling, cfg.lora.target_modules)
    model.load_state_dict(trainable, strict=False)
    if not keep_lora:
        return _finish(merge_lora(model), output, cfg.model.tokenizer, {}, dtype, **keep), step
    lora = released_adapters(model, cfg.lora.rank)
    base = merge_lora(_zero_adapters(model))
    extra = {"lora": True, "lora_rank": cfg.lora.rank, "lora_scaling": cfg.lora.scaling, "lora_name": LORA_NAME}
    return _finish(base, output, cfg.model.tokenizer, extra, dtype, lora=lora, **keep), step


def _zero_adapters(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".lora_B"):
                p.zero_()
    return model


def released_adapters(model: torch.nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """The adapters of a LoRA-wrapped LM in moshi-finetune's names, with zero adapters for every linear layer
    the reference wraps that this run did not (the reference loads adapters for all of them)."""
    from ..checkpoint.lora import released_target

    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((".lora_A", ".lora_B")):
            module, which = key.rsplit(".", 1)
            out[f"{ours_to_released_module(module)}.{which}.weight"] = value.detach().float().clone()
    for module in _reference_linears(model):
        if f"{module}.lora_A.weight" in out:
            continue
        name, step = released_target(module)
        weight = state[name] if step is None else state[name][step]
        out[f"{module}.lora_A.weight"] = torch.zeros(rank, weight.shape[1])
        out[f"{module}.lora_B.weight"] = torch.zeros(weight.shape[0], rank)
    return out


def _reference_linears(model: LMModel) -> list[str]:
    """Module names of the reference LM's ``nn.Linear`` layers (what moshi's LoRA wraps)."""
    cfg = model.config
    names = ["text_linear", *(f"depformer_in.{k}" for k in range(cfg.dep_q)), *(f"linears.{k}" for k in range(cfg.dep_q))]
    for i in range(cfg.num_layers):
        names += [f"transformer.layers.{i}.self_attn.in_projs.0", f"transformer.layers.{i}.self_attn.out_projs.0",
                  f"transformer.layers.{i}.gating.linear_in", f"transformer.layers.{i}.gating.linear_out"]
    for i in range(cfg.depformer_num_layers):
        for s in range(cfg.dep_q):
            names += [f"depformer.layers.{i}.self_attn.in_projs.{s}", f"depformer.layers.{i}.self_attn.out_projs.{s}",
                      f"depformer.layers.{i}.gating.{s}.linear_in", f"depformer.layers.{i}.gating.{s}.linear_out"]
    return names


def export_lora_weight(lora_weight: str | Path, output: str | Path, moshi_weight: str | None = None,
                       hf_repo: str | None = None, config: str | None = None, tokenizer: str | None = None,
                       scaling: float | None = None, dtype: torch.dtype | None = None, fmt: str = "moshi",
                       mimi: str | Path | None = None, overwrite: bool = False,
                       on_stage: Callable[[str], None] | None = None) -> Path:
    """Fold moshi-finetune adapters into their base model and export. ``scaling``: default ``lora_scaling`` of
    the ``config.json`` beside the adapters, else 2.0 (moshi-finetune's default)."""
    lora_weight = Path(lora_weight)
    protect = _inputs(lora_weight, moshi_weight, config)
    check_output_folder(Path(output), EXPORT, overwrite, protect)
    stage = on_stage or (lambda _: None)
    stage("loading the base model")
    if scaling is None:
        beside = lora_weight.parent / "config.json"
        scaling = float(json.loads(beside.read_text()).get("lora_scaling", 2.0)) if beside.is_file() else 2.0
    path, repo_config = resolve_lm(moshi_weight, hf_repo)
    model = load_lm(path, config=config or repo_config, device="cpu", dtype=torch.float32)
    stage(f"folding {lora_weight.name} in")
    apply_lora_file(model, lora_weight, scaling)
    return _finish(model, output, tokenizer, {}, dtype, fmt=fmt, mimi=mimi, overwrite=overwrite,
                   protect=(*protect, path), on_stage=on_stage)
