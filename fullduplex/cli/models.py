"""Options and loading shared by the commands that run the whole model (``generate``, ``serve``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.lm import load_lm, resolve_lm, resolve_lora
from ..checkpoint.mimi import load_mimi, resolve_mimi
from ..checkpoint.resolve import DEFAULT_REPO
from ..codec.config import PRESETS as MIMI_PRESETS
from ..codec.mimi import Mimi
from ..errors import FullduplexError
from ..inference.offline import Sampling, check_models
from ..lm.config import PRESETS as LM_PRESETS
from ..lm.model import LMModel
from ..text.tokenizer import TextTokenizer
from .codec import mimi_config_from_arg, resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_arguments(parser: argparse.ArgumentParser, seed_help: str = "random seed (default: 4242)",
                        cfg_help: str | None = None) -> Any:
    """The ``checkpoint``, ``sampling`` and ``run`` option groups (``--hf-repo`` ... ``--dtype``); returns the
    ``run`` group, for the command's own run options. ``cfg_help``: the command runs conditioned models (Hibiki,
    TTS), whose ``--cfg-coef`` it explains so (checked against the loaded model); without it, only 1.0."""
    ckpt = parser.add_argument_group(
        "checkpoint", "with none of these options, the small demo model bundled with fullduplex is used; "
        f"--hf-repo {DEFAULT_REPO} loads the released Moshi")
    ckpt.add_argument("--hf-repo", metavar="OWNER/NAME",
                      help=f"Hugging Face repo of all files (e.g. {DEFAULT_REPO}; default for files not given "
                      "when any checkpoint option is set)")
    ckpt.add_argument("--moshi-weight", metavar="FILE", help="LM checkpoint: file, folder or hf://OWNER/REPO[/FILE]")
    ckpt.add_argument("--mimi-weight", metavar="FILE", help="Mimi checkpoint: file, folder or hf://OWNER/REPO[/FILE]")
    ckpt.add_argument("--tokenizer", metavar="FILE", help="SentencePiece .model of the LM's text vocabulary")
    ckpt.add_argument(
        "--config", "--config-path", "--lm-config", dest="config", metavar="PRESET_OR_JSON",
        help=f"LM architecture: a preset ({', '.join(sorted(LM_PRESETS))}) or a moshi config.json "
        "(default: the checkpoint folder's or repo's config.json, else moshiko 7B); a config.json also gives "
        "its lm_gen_config (sampling defaults), mimi_config_name and lora_scaling. --config-path (moshi.server) "
        "and --lm-config (moshi.run_inference) are the same option",
    )
    ckpt.add_argument(
        "--lora-weight", metavar="FILE",
        help="moshi-finetune LoRA adapters (lora.safetensors) to fold into the LM (default: the one a folder's or "
        "repo's config.json names with \"lora\": true)",
    )
    ckpt.add_argument("--lora-scaling", type=float, default=None, metavar="S",
                      help="LoRA scaling (default: the config.json's lora_scaling, else 2.0)")
    ckpt.add_argument("--no_fuse_lora", "--no-fuse-lora", action="store_false", dest="fuse_lora", default=True,
                      help="keep the LoRA adapters as separate low-rank layers instead of folding them into the "
                      "weights (moshi.server's flag; the same outputs up to rounding, slower)")
    ckpt.add_argument(
        "--mimi-config", metavar="PRESET_OR_JSON",
        help=f"Mimi architecture: a preset ({', '.join(sorted(MIMI_PRESETS))}) or a JSON mimi_config dict "
        "(default: the released Mimi)",
    )
    sampling = parser.add_argument_group(
        "sampling (temperature 0 = greedy; top-k 0 = no limit; defaults: the model's config.json lm_gen_config, "
        "else the values shown)")
    sampling.add_argument("--temp", type=float, default=None, help="audio temperature (default: 0.8)")
    sampling.add_argument("--temp-text", type=float, default=None, help="text temperature (default: 0.7)")
    sampling.add_argument("--top-k", type=int, default=None, help="audio top-k (default: 250)")
    sampling.add_argument("--top-k-text", type=int, default=None, help="text top-k (default: 25)")
    sampling.add_argument("--seed", type=int, default=4242, help=seed_help)
    sampling.add_argument("--cfg-coef", type=float, default=1.0, metavar="C",
                          help=cfg_help or "classifier-free guidance (moshi's flag): only 1.0 (none) here, as the "
                          "dialogue models have no conditioning")
    if cfg_help is not None:
        parser.set_defaults(conditioned=True)
    run = parser.add_argument_group("run")
    run.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    run.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None,
        help="LM weights and compute (default: bfloat16 on CUDA and for MLX files, else float32; Mimi stays float32)",
    )
    run.add_argument("--half", action="store_const", const="float16", dest="dtype",
                     help="moshi's spelling of --dtype float16")
    run.add_argument(
        "--quantize", choices=["int8", "int4"], default=None,
        help="weight-only quantization of the LM's linear layers and embeddings, applied tensor by tensor while "
        "loading: int8 (about 1/4 of the fp32 weight memory) or int4 (about 1/7); an MLX q4 file runs as it is "
        "under int4 (see docs/formats.md)",
    )
    run.add_argument(
        "--kv-dtype", choices=["auto", "int8", "fp8"], default="auto",
        help="how the LM's Temporal Transformer stores its keys and values: auto (the model's dtype), int8 or fp8 "
        "(float8 e4m3; one scale per token and head, about half the memory of bf16; see docs/architecture.md)",
    )
    run.add_argument(
        "--kv-pages", type=int, default=None, metavar="N",
        help="size of the KV page pool, in pages of 16 frames (default: a full context for every conversation "
        "slot); each conversation takes pages as it goes, so a smaller pool serves more short conversations",
    )
    return run


def check_kv_arguments(args: argparse.Namespace) -> None:
    pages = getattr(args, "kv_pages", None)
    if pages is not None and pages < 1:
        raise FullduplexError(f"--kv-pages must be a number of pages >= 1, got {pages}")


def configure_kv(lm: LMModel, args: argparse.Namespace) -> None:
    """Apply ``--kv-dtype`` / ``--kv-pages`` to the LM's Temporal Transformer."""
    pages = getattr(args, "kv_pages", None)
    lm.transformer.configure_kv("paged", pages=pages or 0, dtype=getattr(args, "kv_dtype", None) or "auto")


@dataclass
class Models:
    mimi: Mimi
    lm: LMModel
    tokenizer: TextTokenizer
    lm_path: Path
    mimi_path: Path
    sampling: Sampling


# lm_gen_config keys (moshi's LMGen arguments) -> Sampling fields.
GEN_KEYS = {"temp": "temp", "temp_text": "temp_text", "top_k": "top_k", "top_k_text": "top_k_text"}
CFG_REFUSAL = ("--cfg-coef {coef:g}: this model has no conditioning for classifier-free guidance (moshi applies it "
               "only to conditioned models such as Hibiki); leave --cfg-coef at 1.0")


def sampling_from_args(args: argparse.Namespace, gen_config: dict | None = None, source: str = "config.json") -> Sampling:
    """The sampling settings: explicit options first, then the model's ``lm_gen_config`` (moshi's ``LMGen``
    arguments: ``temp``, ``temp_text``, ``top_k``, ``top_k_text``, ``use_sampling``; false means greedy), then
    :class:`Sampling`'s defaults. ``ValueError`` naming the key for a value of the wrong type."""
    values: dict[str, Any] = {}
    gen_config = dict(gen_config or {})
    greedy = gen_config.pop("use_sampling", True) is False
    for key, value in gen_config.items():
        if key in GEN_KEYS:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{source}: lm_gen_config.{key} must be a number, got {value!r}")
            values[GEN_KEYS[key]] = int(value) if key.startswith("top_k") else float(value)
        elif key == "cfg_coef":
            if value != 1.0 and not getattr(args, "conditioned", False):  # Hibiki (translate) takes it
                raise ValueError(f"{source}: lm_gen_config.cfg_coef={value}, but this model has no conditioning for "
                                 "classifier-free guidance; set it to 1.0 in that file")
        else:
            import warnings

            warnings.warn(f"{source}: lm_gen_config.{key} is not a sampling setting fullduplex knows; ignored",
                          stacklevel=2)
    if greedy:
        values.update(temp=0.0, temp_text=0.0)
    for name in GEN_KEYS.values():
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    coef = getattr(args, "cfg_coef", 1.0)
    if coef != 1.0 and not getattr(args, "conditioned", False):
        raise ValueError(CFG_REFUSAL.format(coef=coef))
    return Sampling(**values, seed=args.seed)


def model_config_json(args: argparse.Namespace) -> tuple[dict | None, str]:
    """(the model's moshi-style ``config.json`` as a dict, or None; where it came from): ``--config`` when it is a
    JSON file, else the one in a ``--moshi-weight`` folder (none for a weights file, as :func:`resolve_lm`), else
    the ``--hf-repo``'s (from the cache or the hub, as the weights)."""
    from ..checkpoint.resolve import read_config_json as read
    from ..checkpoint.resolve import repo_config

    if args.config is not None and args.config not in LM_PRESETS:
        return read(Path(args.config)), str(args.config)
    if args.moshi_weight is not None and not str(args.moshi_weight).startswith("hf://"):
        folder = Path(str(args.moshi_weight).removeprefix("file://")).expanduser()
        config = folder / "config.json"
        return (read(config), str(config)) if folder.is_dir() and config.is_file() else (None, "")
    repo = args.hf_repo or DEFAULT_REPO
    if args.moshi_weight is not None:  # hf://OWNER/REPO[/FILE]
        repo = "/".join(str(args.moshi_weight)[len("hf://"):].strip("/").split("/")[:2])
    return repo_config(repo)[0], f"{repo}/config.json"


def mimi_config_of(raw: dict | None, source: str, hf_repo: str | None):
    """The codec architecture a ``config.json`` names (``mimi_config`` dict, or ``mimi_config_name``: a local path,
    ``file://`` or ``hf://`` reference, or a file of ``hf_repo``), as moshi reads it; None when it names none."""
    import json

    from ..checkpoint.resolve import hf_download, resolve_file
    from ..codec.config import MimiConfig
    from ..errors import CheckpointError

    if not raw:
        return None
    if isinstance(raw.get("mimi_config"), dict):
        data, where = raw["mimi_config"], f"{source} (mimi_config)"
    elif raw.get("mimi_config_name"):
        name = str(raw["mimi_config_name"])
        local = name.startswith(("file://", "hf://", "/")) or Path(name).is_file()
        path = resolve_file(name, name) if local else hf_download(hf_repo or DEFAULT_REPO, name)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{source}: mimi_config_name {name}: not a readable JSON file ({e})") from None
        where = str(path)
    else:
        return None
    try:
        return MimiConfig.from_moshi_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}: not a moshi mimi_config dict ({type(e).__name__}: {e})") from None


MODEL_OPTIONS = ("hf_repo", "moshi_weight", "mimi_weight", "tokenizer", "config", "lora_weight", "mimi_config")


def wants_demo(args: argparse.Namespace) -> bool:
    """Whether no model option was given, so the bundled demo model is used (see :mod:`fullduplex.demo`)."""
    return all(getattr(args, name, None) is None for name in MODEL_OPTIONS)


def load_models(args: argparse.Namespace) -> Models:
    """Tokenizer, LM and Mimi from the options of :func:`add_model_arguments`, checked against each other. With
    no model option at all, the bundled demo model (and a note on stderr saying so and how to load a released
    one)."""
    check_kv_arguments(args)
    device = resolve_device(args.device)
    if wants_demo(args):
        import sys

        from ..demo import NOTICE, demo_files, load_demo

        print(NOTICE, file=sys.stderr, flush=True)
        files = demo_files()
        raw, source = model_config_json(argparse.Namespace(config=str(files["config"]), moshi_weight=None, hf_repo=None))
        sampling = sampling_from_args(args, (raw or {}).get("lm_gen_config"), source)
        mimi, lm, tokenizer = load_demo(device, DTYPES.get(args.dtype or ""), quantize=getattr(args, "quantize", None))
        check_models(mimi, lm, tokenizer, str(files["lm"]))
        configure_kv(lm, args)
        return Models(mimi, lm, tokenizer, files["lm"], files["mimi"], sampling)
    raw, source = model_config_json(args)
    sampling = sampling_from_args(args, (raw or {}).get("lm_gen_config"), source)
    tokenizer = TextTokenizer.load(args.tokenizer, hf_repo=args.hf_repo)
    lm_path, repo_config = resolve_lm(args.moshi_weight, args.hf_repo)
    lora = (Path(args.lora_weight), 2.0) if args.lora_weight else resolve_lora(args.moshi_weight, args.hf_repo)
    scaling = args.lora_scaling
    if scaling is None and args.lora_weight and raw is not None and "lora_scaling" in raw:
        scaling = float(raw["lora_scaling"])  # as moshi: the adapter's scaling comes from the model's config.json
    lm = load_lm(
        lm_path, config=args.config or repo_config, device=device, dtype=DTYPES.get(args.dtype or ""),
        lora_weight=lora[0] if lora else None,
        lora_scaling=scaling if scaling is not None else (lora[1] if lora else None),
        quantize=getattr(args, "quantize", None), fuse_lora=getattr(args, "fuse_lora", True),
    )
    mimi_path = resolve_mimi(args.mimi_weight, args.hf_repo)
    mimi_config = mimi_config_from_arg(args.mimi_config) or mimi_config_of(raw, source, args.hf_repo)
    mimi = load_mimi(mimi_path, device=device, num_codebooks=None, config=mimi_config)
    cfg = lm.config
    if (tokenizer.pad_id, tokenizer.epad_id) != (cfg.text_pad_id, cfg.text_epad_id):  # the model's own ids
        tokenizer = TextTokenizer(tokenizer.processor, cfg.text_pad_id, cfg.text_epad_id, path=tokenizer.path)
    check_models(mimi, lm, tokenizer, str(lm_path))
    configure_kv(lm, args)
    return Models(mimi, lm, tokenizer, lm_path, mimi_path, sampling)


def add_persona_arguments(parser: argparse.ArgumentParser) -> None:
    """``--text-prompt`` / ``--voice-prompt``: a PersonaPlex persona stepped before the input."""
    persona = parser.add_argument_group("persona (PersonaPlex; see docs/personas.md)")
    persona.add_argument("--text-prompt", metavar="TEXT", help="role prompt, stepped before the input (\"\" = none)")
    persona.add_argument("--voice-prompt", metavar="VOICE",
                         help="voice prompt: a PersonaPlex .pt, a `fullduplex voice make` file or a recording")


def check_persona_arguments(args: argparse.Namespace) -> None:
    """Refuse a missing ``--voice-prompt`` file before any model is loaded."""
    if args.voice_prompt is not None and not Path(args.voice_prompt).is_file():
        from ..errors import FullduplexError

        raise FullduplexError(f"--voice-prompt {args.voice_prompt}: no such file")


def persona_schedule(args: argparse.Namespace, models: Models):
    """The forced prompt frames of ``--text-prompt`` / ``--voice-prompt``, or None when neither is given. A model
    without persona training gets a warning, not an error."""
    if args.text_prompt is None and args.voice_prompt is None:
        return None
    import warnings

    from ..inference.prompt import build_schedule, role_tokens
    from ..inference.voice import filler_codes, load_voice
    from ..server.personas import persona_trained

    cfg = models.lm.config
    if not persona_trained(cfg):
        warnings.warn(f"{models.lm_path.name} (dep_q={cfg.dep_q}) was not trained with persona prompts (PersonaPlex "
                      "is): the prompt is applied but may be ignored or confuse the model", stacklevel=2)
    voice = load_voice(args.voice_prompt, models.mimi, cfg) if args.voice_prompt else None
    return build_schedule(cfg, voice, role_tokens(models.tokenizer, args.text_prompt), filler_codes(models.mimi))
