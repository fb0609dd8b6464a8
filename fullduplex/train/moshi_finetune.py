"""moshi-finetune recipes as they are: recognise their YAML, translate it to a native recipe, prepare its data.

kyutai-labs/moshi-finetune's ``train.py`` reads one YAML of ``TrainArgs`` (``moshi_paths``, ``data.train_data``,
``lora.*``, ``optim.*``, ``duration_sec``, ``run_dir``, ...). ``fullduplex train THEIR.yaml`` recognises that
format by its keys (:func:`is_moshi_finetune`), maps every key to the native recipe with moshi-finetune's
defaults for the keys it leaves out (:func:`translate`), prepares the jsonl manifests into shards once, in a
cache folder beside the run (``RUN_DIR.prepared/``, with each manifest's ``report.json``), prints the native
recipe and writes it to ``RUN_DIR/recipe.yaml``. Keys that have no exact equivalent are named with what to do.

What the translation keeps from moshi-finetune: the OneCycle schedule (torch ``OneCycleLR``, ``pct_start``, beta1
cycling), AdamW (0.9, 0.95, eps 1e-8) with weight decay on every parameter, the loss normalised per micro-batch
(text + audio, PAD and EPAD at ``text_padding_weight``, codebook 0 at ``first_codebook_weight_multiplier``),
validation on at most 40 batches, and a run folder that must be new unless ``overwrite_run_dir``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FullduplexError
from .config import ConfigError, TrainConfig, _check_type, load_config

# moshi-finetune's TrainArgs (finetune/args.py, finetune/data/args.py): key -> (type, default).
KEYS: dict[str, tuple[Any, Any]] = {
    "run_dir": (str, None),
    "overwrite_run_dir": (bool, False),
    "first_codebook_weight_multiplier": (float, 1.0),
    "text_padding_weight": (float, 0.5),
    "seed": (int, 0),
    "num_microbatches": (int, 1),
    "duration_sec": (float, 10.0),
    "batch_size": (int, 1),
    "max_norm": (float, 1.0),
    "max_steps": (int, 100),
    "log_freq": (int, 1),
    "ckpt_freq": (int, 0),
    "save_adapters": (bool, True),
    "do_ckpt": (bool, True),
    "num_ckpt_keep": (int | None, 3),
    "eval_freq": (int, 0),
    "do_eval": (bool, False),
    "gradient_checkpointing": (bool, True),
    "full_finetuning": (bool, False),
    "param_dtype": (str, "bfloat16"),
    "data.train_data": (str, ""),
    "data.eval_data": (str, ""),
    "data.shuffle": (bool, False),
    "moshi_paths.hf_repo_id": (str | None, "kyutai/moshiko-pytorch-bf16"),
    "moshi_paths.moshi_path": (str | None, None),
    "moshi_paths.mimi_path": (str | None, None),
    "moshi_paths.tokenizer_path": (str | None, None),
    "moshi_paths.config_path": (str | None, None),
    "lora.enable": (bool, False),
    "lora.rank": (int, 64),
    "lora.scaling": (float, 2.0),
    "lora.ft_embed": (bool, False),
    "optim.lr": (float, 1e-4),
    "optim.weight_decay": (float, 0.1),
    "optim.pct_start": (float, 0.05),
    "wandb.project": (str | None, None),
    "wandb.offline": (bool, False),
    "wandb.key": (str | None, None),
    "wandb.run_name": (str | None, None),
}
SECTIONS = {"data", "moshi_paths", "lora", "optim", "wandb"}
NATIVE_SECTIONS = {"task", "model", "data", "lora", "optim", "loss", "run", "wandb"}
EVAL_BATCHES = 40  # moshi-finetune evaluates at most 40 // world_size batches
RECIPE_NAME = "recipe.yaml"


def is_moshi_finetune(raw: Any) -> bool:
    """True for a moshi-finetune recipe: a top-level key only it has, or ``data.train_data``."""
    if not isinstance(raw, dict):
        return False
    top = {k.split(".")[0] for k in KEYS} | SECTIONS
    if any(k in top and k not in NATIVE_SECTIONS for k in raw):
        return True
    return isinstance(raw.get("data"), dict) and "train_data" in raw["data"]


@dataclass
class Translation:
    """The native recipe (a dict, shard paths filled by :func:`prepare_data`), notes on keys without an exact
    equivalent, the manifests to prepare, and what the run folder / wandb need."""

    native: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    train_manifests: list[Path] = field(default_factory=list)
    eval_manifests: list[Path] = field(default_factory=list)
    run_dir: Path = Path()
    overwrite: bool = False
    mimi: str | None = None
    mimi_config: dict[str, Any] | None = None
    wandb_key: str | None = None


def _flatten(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """``{"lora": {"rank": 8}}`` -> ``{"lora.rank": 8}``; unknown keys raise, naming moshi-finetune's keys."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping of keys, got {value!r}")
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[str(key)] = value
    for key in flat:
        if key not in KEYS:
            section = key.split(".")[0]
            known = sorted(k for k in KEYS if k.startswith(section + ".")) if "." in key else sorted(
                k for k in KEYS if "." not in k)
            raise ConfigError(f"{source}: unknown moshi-finetune key {key!r} (known here: {', '.join(known)}); "
                              "remove it, or write a native recipe (docs/training.md)")
    return flat


def _manifests(spec: str, key: str, source: str, notes: list[str]) -> list[Path]:
    """moshi-finetune's ``train_data`` / ``eval_data``: comma-separated jsonl files or folders (searched for
    ``*jsonl``), each with an optional ``:weight``."""
    out: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, weight = part.rpartition(":")
        try:
            float(weight)
        except ValueError:
            name = part
        else:
            if float(weight) != 1.0:
                notes.append(f"{key}: weight {weight} of {name} has no equivalent (windows are drawn in proportion to "
                             "each conversation's length); repeat or drop manifest lines to weight a source")
        path = Path(name).expanduser().resolve()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*jsonl") if p.is_file())
            if not found:
                raise ConfigError(f"{source}: {key} names the folder {name}, which holds no *jsonl manifest")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigError(f"{source}: {key} names {name!r}, which does not exist (relative paths are read from "
                              f"{Path.cwd()})")
    return out


def _local(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _mimi_config(config_path: str | None, source: str) -> dict[str, Any] | None:
    """The Mimi architecture a moshi ``config.json`` names (``mimi_config_name``: a file, ``file://``), if any."""
    if config_path is None:
        return None
    try:
        raw = json.loads(Path(config_path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{source}: moshi_paths.config_path {config_path}: not a readable JSON file ({e})") from None
    name = raw.get("mimi_config_name") if isinstance(raw, dict) else None
    if not name:
        return None
    path = Path(str(name).removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = Path(config_path).resolve().parent / path
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{source}: mimi_config_name {name} of {config_path}: cannot be read ({e}); "
                          "only local files are supported") from None
    return data.get("mimi_config", data) if isinstance(data, dict) else None


def translate(raw: dict[str, Any], source: str) -> Translation:
    """The native recipe equivalent to moshi-finetune recipe ``raw`` (already read, overrides applied)."""
    flat = _flatten(raw, source)
    v: dict[str, Any] = {}
    for key, (annotation, default) in KEYS.items():
        value = flat.get(key, default)
        if isinstance(value, str) and value == "" and key.startswith(("wandb.", "moshi_paths.", "run_dir")):
            value = None  # their example leaves optional strings empty
        if value is None:  # null: "none" where their type allows it (no hub repo, keep every checkpoint, no wandb)
            v[key] = None if default is None or type(None) in typing.get_args(annotation) else default
        else:
            v[key] = _check_type(value, annotation, key, source)
    if v["run_dir"] is None:
        raise ConfigError(f"{source}: run_dir is required (the folder moshi-finetune writes the run to)")
    if v["full_finetuning"] == v["lora.enable"]:
        raise ConfigError(f"{source}: set exactly one of full_finetuning: true and lora.enable: true (got "
                          f"{v['full_finetuning']} and {v['lora.enable']}; moshi-finetune refuses this too)")
    if not v["data.train_data"]:
        raise ConfigError(f"{source}: data.train_data is required: jsonl manifests of stereo WAVs (comma-separated)")
    notes: list[str] = []
    train = _manifests(v["data.train_data"], "data.train_data", source, notes)
    evals = _manifests(v["data.eval_data"], "data.eval_data", source, notes) if v["do_eval"] else []
    if v["do_eval"] and not evals:
        raise ConfigError(f"{source}: do_eval is true but data.eval_data is empty; name its manifests or set do_eval: false")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    hf_repo = v["moshi_paths.hf_repo_id"]
    tokenizer = _local(v["moshi_paths.tokenizer_path"])
    if tokenizer is None and hf_repo is None:
        raise ConfigError(f"{source}: moshi_paths.tokenizer_path is required when moshi_paths.hf_repo_id is null")
    if v["moshi_paths.moshi_path"] is None and hf_repo is None:
        raise ConfigError(f"{source}: moshi_paths.moshi_path is required when moshi_paths.hf_repo_id is null")
    if tokenizer is None:
        from ..checkpoint.resolve import resolve_file
        from ..text.tokenizer import TOKENIZER_NAME

        tokenizer = str(resolve_file(f"hf://{hf_repo}", TOKENIZER_NAME, config_key="tokenizer_name"))
    config_path = _local(v["moshi_paths.config_path"])
    dtype = v["param_dtype"]
    if dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"{source}: param_dtype must be bfloat16 or float32 here, got {dtype!r}")
    keep = v["num_ckpt_keep"]
    native = {
        "model": {
            "checkpoint": _local(v["moshi_paths.moshi_path"]), "hf_repo": hf_repo, "config": config_path,
            "tokenizer": tokenizer, "dtype": "float32", "from_scratch": False,
        },
        "data": {"train": [], "valid": [], "segment_seconds": v["duration_sec"], "frame_rate": 12.5},
        "lora": {"enabled": v["lora.enable"], "rank": v["lora.rank"], "scaling": v["lora.scaling"],
                 "target_modules": ["*"], "train_embeddings": v["lora.ft_embed"] and v["lora.enable"]},
        "optim": {"lr_temporal": v["optim.lr"], "lr_depth": v["optim.lr"], "weight_decay": v["optim.weight_decay"],
                  "betas": [0.9, 0.95], "eps": 1e-8, "warmup": 0, "schedule": "onecycle", "min_lr_ratio": 0.0,
                  "pct_start": v["optim.pct_start"], "decay_all": True, "max_steps": v["max_steps"],
                  "grad_clip": v["max_norm"]},
        "loss": {"text_weight": 1.0, "audio_weight": 1.0, "semantic_weight": v["first_codebook_weight_multiplier"],
                 "pad_weight": v["text_padding_weight"], "epad_weight": v["text_padding_weight"],
                 "normalize": "micro_batch"},
        "run": {"output": str(Path(v["run_dir"]).expanduser().resolve()), "batch_size": v["batch_size"],
                "grad_accumulation": v["num_microbatches"], "eval_every": v["eval_freq"] if v["do_eval"] else 0,
                "eval_batches": max(1, EVAL_BATCHES // world), "save_every": max(v["ckpt_freq"], 0),
                "keep_checkpoints": keep if keep is not None else max(1, v["max_steps"]), "log_every": v["log_freq"],
                "seed": v["seed"], "gradient_checkpointing": v["gradient_checkpointing"],
                "mixed_precision": "auto" if dtype == "bfloat16" else "fp32", "fsdp": True, "device": "auto",
                "backend": "auto"},
        "wandb": {"project": v["wandb.project"], "run_name": v["wandb.run_name"], "offline": v["wandb.offline"]},
    }
    if "save_adapters" in flat:
        notes.append("save_adapters: checkpoints hold only the trained tensors (the adapters under LoRA); "
                     "`fullduplex export RUN_DIR --output DIR --keep-lora` writes lora.safetensors + config.json as "
                     "save_adapters: true does, without --keep-lora the merged model as save_adapters: false does")
    if "do_ckpt" in flat and not v["do_ckpt"]:
        notes.append("do_ckpt: false has no equivalent: checkpoints are always written (they make resume possible); "
                     "ckpt_freq: 0 writes only the last one")
    if "param_dtype" in flat:
        notes.append(f"param_dtype: {dtype} -> run.mixed_precision: {native['run']['mixed_precision']} (bf16 compute "
                     "on CUDA with float32 master weights; CPU computes in float32)")
    if "data.shuffle" in flat and not v["data.shuffle"]:
        notes.append("data.shuffle: false has no equivalent: windows are drawn at random each step (from seed); "
                     "remove the key")
    if "num_ckpt_keep" in flat and keep is None:
        notes.append(f"num_ckpt_keep: null (keep all) -> run.keep_checkpoints: {native['run']['keep_checkpoints']}")
    if v["wandb.key"] and v["wandb.project"]:
        notes.append("wandb.key: used as WANDB_API_KEY for this run and not written to recipe.yaml; put it in the "
                     "environment (WANDB_API_KEY) to run the native recipe")
    if v["lora.ft_embed"] and not v["lora.enable"]:
        notes.append("lora.ft_embed: full fine-tuning trains the embeddings anyway")
    return Translation(native, notes, train, evals, Path(native["run"]["output"]), v["overwrite_run_dir"],
                       _local(v["moshi_paths.mimi_path"]), _mimi_config(config_path, source), v["wandb.key"])


def cache_folder(run_dir: Path) -> Path:
    """Where a moshi-finetune run's prepared data lives: beside the run folder, kept across runs."""
    return run_dir.parent / f"{run_dir.name}.prepared"


def _file_id(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def prepared_path(t: Translation, manifest: Path, mimi_file: Path) -> Path:
    """The cache folder of one manifest: named by a hash of the manifest's bytes, Mimi, its architecture and the
    tokenizer, so a change to any of them prepares it again (changed audio under the same manifest does not)."""
    key = {"manifest": str(manifest), "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
           "mimi": _file_id(mimi_file), "mimi_config": t.mimi_config,
           "tokenizer": _file_id(Path(t.native["model"]["tokenizer"]))}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_folder(t.run_dir) / f"{manifest.stem}-{digest}"


def prepare_data(t: Translation, main: bool = True, quiet: bool = False) -> None:
    """Fill ``data.train`` / ``data.valid`` with the prepared shard folders, preparing (on the main process)
    those not in the cache yet."""
    from ..checkpoint.mimi import resolve_mimi

    mimi_file = resolve_mimi(t.mimi, t.native["model"]["hf_repo"])
    mimi = tokenizer = None
    for manifests, key in ((t.train_manifests, "train"), (t.eval_manifests, "valid")):
        folders = []
        for manifest in manifests:
            folder = prepared_path(t, manifest, mimi_file)
            folders.append(str(folder))
            if not main:
                continue
            if (folder / "index.json").is_file():
                print(f"prepared data of {manifest}: {folder} (cached; delete it to prepare again)")
                continue
            if mimi is None:
                mimi, tokenizer = _load_prep_models(t, mimi_file)
            from ..data.prepare import PrepareOptions, prepare

            folder.parent.mkdir(parents=True, exist_ok=True)
            report = prepare(manifest, mimi, tokenizer, folder, PrepareOptions(),
                             meta={"mimi": mimi_file.name, "source": "moshi-finetune recipe"}, quiet=quiet)
            for problem in report.skipped:
                print(f"warning: skipped {problem}", file=sys.stderr)
            print(f"prepared {manifest} -> {folder} (report.json there)\n{report.summary()}")
        t.native["data"][key] = folders


def _load_prep_models(t: Translation, mimi_file: Path) -> tuple[Any, Any]:
    import torch

    from ..checkpoint.mimi import load_mimi
    from ..codec.config import MimiConfig
    from ..data.prepare import NUM_CODEBOOKS
    from ..text.tokenizer import TextTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = MimiConfig.from_moshi_dict(t.mimi_config) if t.mimi_config is not None else None
    mimi = load_mimi(mimi_file, device=device, num_codebooks=1, config=config)
    if mimi.config.quantizer.n_q < NUM_CODEBOOKS:
        raise FullduplexError(f"{mimi_file} has {mimi.config.quantizer.n_q} codebooks; training needs "
                              f"{NUM_CODEBOOKS} per channel")
    mimi.num_codebooks = NUM_CODEBOOKS
    return mimi, TextTokenizer.load(t.native["model"]["tokenizer"])


def native_yaml(t: Translation, source: str) -> str:
    """The native recipe as YAML, with a header naming its source and the notes."""
    import yaml

    head = [f"# fullduplex recipe translated from the moshi-finetune recipe {source}",
            f"# run it again (resumes from the latest checkpoint): fullduplex train {t.run_dir / RECIPE_NAME}"]
    head += [f"# note: {n}" for n in t.notes]
    return "\n".join(head) + "\n" + yaml.safe_dump(t.native, sort_keys=False, default_flow_style=None)


def from_moshi_finetune(path: str | Path, raw: dict[str, Any], quiet: bool = False) -> TrainConfig:
    """Translate, check the run folder (new unless ``overwrite_run_dir``), prepare the data, print and write the
    native recipe; the validated :class:`TrainConfig` to run."""
    source = str(path)
    t = translate(raw, source)

    def validated(native: dict[str, Any], check_paths: bool) -> TrainConfig:
        try:
            return load_config(None, raw=native, check_paths=check_paths)
        except ConfigError as e:
            raise ConfigError(f"{source} (moshi-finetune recipe, translated): {str(e).removeprefix('config: ')}") from None

    main = os.environ.get("RANK", "0") == "0"
    placeholder = {**t.native, "data": {**t.native["data"], "train": [str(m) for m in t.train_manifests]}}
    validated(placeholder, check_paths=False)  # bad values fail before any data is prepared
    if main and t.run_dir.exists():
        if not t.overwrite:
            raise ConfigError(f"{source}: run_dir {t.run_dir} already exists; moshi-finetune recipes start a new run: "
                              f"rename run_dir, set overwrite_run_dir: true to start over, or resume with "
                              f"`fullduplex train {t.run_dir / RECIPE_NAME}`")
        print(f"overwrite_run_dir: removing {t.run_dir}")
        if t.run_dir.is_dir():
            shutil.rmtree(t.run_dir)
        else:
            t.run_dir.unlink()
    prepare_data(t, main, quiet)
    if t.wandb_key and t.native["wandb"]["project"]:
        os.environ["WANDB_API_KEY"] = t.wandb_key
    cfg = validated(t.native, check_paths=main)
    text = native_yaml(t, source)
    if main:
        print(f"moshi-finetune recipe {source}: the equivalent native recipe (written to {t.run_dir / RECIPE_NAME}):")
        print(text, end="")
        for note in t.notes:
            print(f"note: {note}", file=sys.stderr)
        t.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = t.run_dir / f".{RECIPE_NAME}.partial"
        tmp.write_text(text)
        os.replace(tmp, t.run_dir / RECIPE_NAME)
    return cfg
