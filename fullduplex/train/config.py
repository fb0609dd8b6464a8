"""Run config of ``fullduplex train``: frozen dataclasses read from YAML, validated on construction.

Every field has a default except the training shards. Unknown keys, wrong types and missing folders raise
:class:`ConfigError` with a one-line message naming the key (``optim.lr_temporal``). ``--override key=value``
values are parsed as YAML scalars (``optim.max_steps=200``, ``lora.enabled=true``).
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import FullduplexError


class ConfigError(FullduplexError, ValueError):
    """A training config is malformed: the message names the file and the key."""


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: str | None = None  # file, folder or hf://OWNER/REPO[/FILE]; None: hf_repo's model.safetensors
    hf_repo: str | None = None  # default kyutai/moshiko-pytorch-bf16 when checkpoint is None
    config: str | None = None  # preset name or moshi config.json; default: the checkpoint's config.json / 7B
    tokenizer: str | None = None  # SentencePiece .model copied by `fullduplex export`
    dtype: str = "float32"  # base weights: float32, or bfloat16 (LoRA only: frozen weights in bf16)
    from_scratch: bool = False  # no checkpoint: random weights of model.config (text_card from model.tokenizer)


@dataclass(frozen=True)
class DataConfig:
    train: list[str] = field(default_factory=list)  # shard folders or files (required)
    valid: list[str] = field(default_factory=list)  # held-out shards; empty: no validation
    segment_seconds: float = 100.0  # window length; 12.5 frames per second
    frame_rate: float = 12.5


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    rank: int = 128
    scaling: float = 2.0
    target_modules: list[str] = field(default_factory=lambda: ["*"])  # fnmatch patterns over nn.Linear names
    train_embeddings: bool = False  # also train every parameter whose name holds "emb" (moshi-finetune ft_embed)


@dataclass(frozen=True)
class OptimConfig:
    lr_temporal: float = 3e-5  # temporal transformer, embeddings, text head
    lr_depth: float = 3e-5  # depth transformer, its inputs, embeddings and heads
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup: int = 0  # linear warm-up steps from 0
    schedule: str = "cosine"  # cosine (to min_lr_ratio x lr at max_steps) | constant | onecycle
    min_lr_ratio: float = 0.0
    pct_start: float = 0.05  # onecycle: share of max_steps spent rising from lr/25 to lr (torch OneCycleLR)
    decay_all: bool = False  # weight decay on every parameter (moshi-finetune); false: matrices only
    max_steps: int = 1000
    grad_clip: float = 1.0  # 0: no clipping


@dataclass(frozen=True)
class LossConfig:
    text_weight: float = 1.0
    audio_weight: float = 1.0
    semantic_weight: float = 100.0  # codebook 0 relative to codebooks 1..7
    pad_weight: float = 0.5  # text PAD targets
    epad_weight: float = 0.5  # text end-of-padding targets (moshi-finetune 0.5; nu-dialogue 1.0)
    normalize: str = "step"  # step: weight sums of the whole step | micro_batch: each micro-batch's, then the mean


@dataclass(frozen=True)
class RunConfig:
    output: str = "runs/train"
    batch_size: int = 1  # windows per rank per micro-batch
    grad_accumulation: int = 1
    global_batch: int = 0  # windows per step over all ranks; set: grad_accumulation follows from it on any world size
    eval_every: int = 100  # 0: never
    eval_batches: int = 4  # micro-batches per validation (per rank)
    save_every: int = 100  # 0: only at the end
    keep_checkpoints: int = 2  # most recent step checkpoints kept (the best one is always kept)
    log_every: int = 1
    seed: int = 0
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    fsdp: bool = True  # shard with FSDP2 when world size > 1
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # torch.distributed backend: auto (nccl on CUDA, gloo on CPU)


@dataclass(frozen=True)
class WandbConfig:
    project: str | None = None  # set: log to Weights & Biases when the wandb package is installed
    run_name: str | None = None  # default: the run folder's name
    offline: bool = False  # log to run.output/wandb, sync later with `wandb sync`


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def segment_frames(self) -> int:
        return max(1, round(self.data.segment_seconds * self.data.frame_rate))


# --- reading and validation -------------------------------------------------------------------------------
def _check_type(value: Any, annotation: Any, key: str, source: str) -> Any:
    """``value`` converted to ``annotation`` (int → float allowed), or ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _check_type(value, inner, key, source)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_check_type(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return str(value)
    raise AssertionError(annotation)


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'the config'} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{source}: unknown key {where!r} (known: {', '.join(sorted(names))})")
    values = {}
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in raw:
            continue
        annotation = hints[f.name]
        if isinstance(annotation, type) and hasattr(annotation, "__dataclass_fields__"):
            values[f.name] = _build(annotation, raw[f.name], key, source)
        else:
            values[f.name] = _check_type(raw[f.name], annotation, key, source)
    for f in fields(cls):
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{source}: missing key {prefix}.{f.name}")
    return cls(**values)


def check_ranges(source: str, cfg: Any, positive: list[str], non_negative: list[str]) -> None:
    """ConfigError naming the first of the dotted keys ``positive`` that is not > 0 or ``non_negative`` below 0."""
    for key in [*positive, *non_negative]:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 0 or (value == 0 and key in positive):
            raise ConfigError(f"{source}: {key} must be {'> 0' if key in positive else '>= 0'}, got {value}")


def _validate(cfg: TrainConfig, source: str, base: Path, check_paths: bool) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {key} {why}")

    if not cfg.data.train:
        raise bad("data.train", "is required: a list of shard folders or files (from `fullduplex data prepare`)")
    for key, paths in (("data.train", cfg.data.train), ("data.valid", cfg.data.valid)):
        for p in paths if check_paths else ():
            if not (base / p).exists():
                raise bad(key, f"names {p!r}, which does not exist (relative paths are read from {base})")
    check_ranges(source, cfg, positive=["data.segment_seconds", "data.frame_rate", "optim.max_steps",
                 "run.batch_size", "run.grad_accumulation", "run.eval_batches", "run.keep_checkpoints", "run.log_every",
                 "optim.lr_temporal", "optim.lr_depth"],
                 non_negative=["optim.warmup", "optim.weight_decay", "optim.grad_clip", "run.eval_every",
                 "run.save_every", "run.global_batch", "loss.text_weight", "loss.audio_weight", "loss.semantic_weight",
                 "loss.pad_weight", "loss.epad_weight"])
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise bad("optim.betas", f"must be two numbers in [0, 1), got {cfg.optim.betas}")
    choices = {
        "optim.schedule": (cfg.optim.schedule, ("cosine", "constant", "onecycle")),
        "loss.normalize": (cfg.loss.normalize, ("step", "micro_batch")),
        "run.mixed_precision": (cfg.run.mixed_precision, ("auto", "bf16", "fp32")),
        "model.dtype": (cfg.model.dtype, ("float32", "bfloat16")),
        "run.backend": (cfg.run.backend, ("auto", "nccl", "gloo")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise bad(key, f"must be one of {', '.join(allowed)}; got {value!r}")
    if not (cfg.run.device in ("auto", "cpu", "cuda") or cfg.run.device.startswith("cuda:")):
        raise bad("run.device", f"must be auto, cpu or cuda; got {cfg.run.device!r}")
    if cfg.optim.schedule == "onecycle" and not 0 < cfg.optim.pct_start < 1:
        raise bad("optim.pct_start", f"must be in (0, 1), got {cfg.optim.pct_start}")
    if cfg.optim.schedule == "onecycle" and cfg.optim.warmup:
        raise bad("optim.warmup", "must be 0 with schedule onecycle (its warm-up is pct_start x max_steps)")
    if cfg.run.global_batch and cfg.run.grad_accumulation != 1:
        raise bad("run.grad_accumulation", "must be left at 1 with run.global_batch (the micro-batches per rank "
                  "follow from global_batch / (batch_size x ranks))")
    if cfg.wandb.project is not None and not cfg.wandb.project:
        raise bad("wandb.project", "must not be empty (leave it out for no wandb logging)")
    if cfg.lora.train_embeddings and not cfg.lora.enabled:
        raise bad("lora.train_embeddings", "needs lora.enabled (full fine-tuning trains the embeddings anyway)")
    if cfg.lora.enabled and cfg.lora.rank <= 0:
        raise bad("lora.rank", f"must be > 0, got {cfg.lora.rank}")
    if cfg.model.from_scratch and (cfg.model.config is None or cfg.model.checkpoint is not None or cfg.lora.enabled):
        raise bad("model.from_scratch", "needs model.config (a preset or config.json) and no model.checkpoint or LoRA")
    if cfg.model.dtype == "bfloat16" and not cfg.lora.enabled:
        raise bad("model.dtype", "bfloat16 is for LoRA runs (frozen base weights); full fine-tuning keeps float32 "
                  "master weights: use run.mixed_precision: bf16 for bf16 compute")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value parsed as a YAML scalar)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--override {text!r}: expected key=value, e.g. optim.max_steps=200")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--override {key}: cannot parse value {value!r} ({e})") from None
    return key.strip().split("."), parsed


def read_recipe(path: str | Path | None, overrides: list[str] = (), raw: dict | None = None) -> Any:
    """The YAML recipe at ``path`` (or a copy of ``raw``) with ``key=value`` overrides applied, not yet validated."""
    import yaml

    source = str(path) if path is not None else "config"
    if raw is None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{source}: cannot read the config ({e.strerror or e})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML ({' '.join(str(e).split())})") from None
    raw = _deep_copy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    return raw


def load_config(
    path: str | Path | None, overrides: list[str] = (), raw: dict | None = None, check_paths: bool = True
) -> TrainConfig:
    """Read a YAML recipe (or ``raw``), apply ``key=value`` overrides, validate. Relative data paths are read
    from the YAML file's folder. ``check_paths`` False: do not require the data folders (export)."""

    source = str(path) if path is not None else "config"
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    raw = read_recipe(path, overrides, raw)
    if isinstance(raw, dict) and raw.get("task", "lm") != "lm":
        raise ConfigError(f"{source}: task {raw['task']!r} is not an LM recipe (task: codec recipes run through "
                          "fullduplex.train.codec)")
    if isinstance(raw, dict):
        raw.pop("task", None)
    cfg = _build(TrainConfig, raw, "", source)
    _validate(cfg, source, base, check_paths)
    # Relative input paths are relative to the recipe, not the working directory.
    data = cfg.data
    resolved = DataConfig(
        [str(base / p) for p in data.train], [str(base / p) for p in data.valid], data.segment_seconds, data.frame_rate
    )
    m = cfg.model

    def local(p: str | None, must_exist: bool) -> str | None:
        if p is None or p.startswith("hf://") or Path(p).is_absolute() or (not must_exist and not (base / p).exists()):
            return p
        return str(base / p)

    config = m.config if m.config is None or not m.config.endswith(".json") else local(m.config, True)
    model = ModelConfig(local(m.checkpoint, True), m.hf_repo, config, local(m.tokenizer, True), m.dtype, m.from_scratch)
    for key, value in (("model.checkpoint", model.checkpoint), ("model.tokenizer", model.tokenizer), ("model.config", config)):
        if check_paths and value is not None and not value.startswith("hf://") and (key != "model.config" or value.endswith(".json")) \
                and not Path(value).exists():
            raise ConfigError(f"{source}: {key} names {value!r}, which does not exist (relative paths are read from {base})")
    return TrainConfig(model, resolved, cfg.lora, cfg.optim, cfg.loss, cfg.run, cfg.wandb)


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw
