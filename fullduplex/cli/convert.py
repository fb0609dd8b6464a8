"""``fullduplex convert``: any Moshi LM checkpoint (released PyTorch, MLX bf16 / q8 / q4) to any format.

    fullduplex convert --moshi-weight model.safetensors --format mlx-q8 --output moshiko-mlx-q8/
    fullduplex convert --hf-repo kyutai/moshiko-mlx-q4 --format moshi --output moshiko-from-q4/

Writes ``OUTPUT/<model file>`` (see ``fullduplex.checkpoint.convert``), a ``config.json`` and copies of the
tokenizer and Mimi files. The input format is read from the file's keys.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from ..atomic import check_output_folder, folder_output
from ..checkpoint.convert import FORMATS, checkpoint_folder, save_checkpoint
from ..checkpoint.lm import load_lm, resolve_lm
from ..checkpoint.mimi import resolve_mimi
from ..checkpoint.resolve import DEFAULT_REPO, MIMI_NAME, resolve_file
from ..errors import FullduplexError
from ..lm.config import PRESETS as LM_PRESETS
from ..text.tokenizer import TOKENIZER_NAME
from .stages import stage_bar

EPILOG = """\
formats:
  moshi      model.safetensors       PyTorch, the released layout (moshi.server --moshi-weight); --dtype
  mlx-bf16   model.safetensors       moshi_mlx, bf16
  mlx-q8     model.q8.safetensors    moshi_mlx -q 8: 8-bit codes in groups of 64 (about half of bf16)
  mlx-q4     model.q4.safetensors    moshi_mlx -q 4: 4-bit codes in groups of 32 (about a quarter of bf16)

examples:
  fullduplex convert --moshi-weight run/model.safetensors --tokenizer run/tok.model \\
      --mimi-weight hf://kyutai/moshiko-pytorch-bf16 --format mlx-q8 --output run-mlx-q8/
  fullduplex convert --hf-repo kyutai/moshiko-mlx-q8 --format moshi --output moshiko-pt/
  fullduplex convert --moshi-weight small/model.safetensors --config small/config.json --format mlx-q4 -o out/

The tokenizer and Mimi are copied from --tokenizer / --mimi-weight, else from --hf-repo, else from the input
folder when it holds them; without any, only the LM and config.json are written (a warning says so).
DIR must be new or empty; a previous convert / export output (its config.json names every file in it) is replaced
only with --overwrite; a folder holding the input is always refused.
"""
CONVERT = checkpoint_folder("fullduplex convert")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert an LM checkpoint between PyTorch and MLX formats (bf16, q8, q4)",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--moshi-weight", metavar="FILE", help="LM checkpoint: file, folder or hf://OWNER/REPO[/FILE]")
    parser.add_argument("--hf-repo", metavar="OWNER/NAME", help=f"Hugging Face repo of all files (default: {DEFAULT_REPO})")
    parser.add_argument(
        "--config", metavar="PRESET_OR_JSON",
        help=f"LM architecture: a preset ({', '.join(sorted(LM_PRESETS))}) or a moshi config.json "
        "(default: the checkpoint folder's or repo's config.json, else moshiko 7B)",
    )
    parser.add_argument("--tokenizer", metavar="FILE", help="SentencePiece .model to copy beside the LM")
    parser.add_argument("--mimi-weight", metavar="FILE", help="Mimi checkpoint to copy beside the LM")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format (see below)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="output folder: new or empty (built beside it, then renamed into place)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR when it holds a previous convert / export output (and nothing else)")
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float32"], default="bfloat16",
        help="float type of the moshi format (default: bfloat16, as released); MLX files are bf16",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=convert_command)


def _companion(explicit: str | None, hf_repo: str | None, folder: Path | None, default: str, key: str, kind: str) -> Path | None:
    """The tokenizer / Mimi file to copy: the option, else the repo's, else the input folder's; None if none."""
    if explicit is not None:
        return resolve_mimi(explicit) if kind == "mimi" else resolve_file(explicit, default, config_key=key)
    if hf_repo is not None:
        return resolve_mimi(None, hf_repo) if kind == "mimi" else resolve_file(f"hf://{hf_repo}", default, config_key=key)
    if folder is not None:
        config = folder / "config.json"
        name = default
        if config.is_file():
            try:
                name = json.loads(config.read_text()).get(key) or default
            except (OSError, ValueError, AttributeError):
                name = default
        if (folder / name).is_file():
            return folder / name
    return None


def convert_command(args: argparse.Namespace) -> int:
    output = Path(args.output)
    check_output_folder(output, CONVERT, args.overwrite)
    if args.moshi_weight is None and args.hf_repo is None:
        raise FullduplexError("give the checkpoint to convert: --moshi-weight FILE or --hf-repo OWNER/NAME")
    lm_path, repo_config = resolve_lm(args.moshi_weight, args.hf_repo)
    folder = lm_path.parent if args.moshi_weight is not None else None
    tokenizer = _companion(args.tokenizer, args.hf_repo, folder, TOKENIZER_NAME, "tokenizer_name", "tokenizer")
    mimi = _companion(args.mimi_weight, args.hf_repo, folder, MIMI_NAME, "mimi_name", "mimi")
    inputs = [Path(p) for p in (lm_path, tokenizer, mimi, args.config) if p is not None and Path(p).exists()]
    check_output_folder(output, CONVERT, args.overwrite, protect=inputs)
    # bf16 holds every MLX file exactly and is what MLX files store; fp32 only when asked for.
    dtype = torch.float32 if args.format == "moshi" and args.dtype == "float32" else torch.bfloat16
    with stage_bar(2, "convert", args.quiet) as on_stage:
        on_stage(f"loading {lm_path.name}")
        lm = load_lm(lm_path, config=args.config or repo_config, device="cpu", dtype=dtype)
        on_stage(f"writing {output} ({args.format})")
        with folder_output(output, CONVERT, args.overwrite, protect=inputs) as work:
            path = output / save_checkpoint(lm, work, args.format, tokenizer, mimi, dtype=dtype,
                                            progress=not args.quiet).name
    missing = [what for what, found in (("tokenizer", tokenizer), ("Mimi", mimi)) if found is None]
    if missing:
        warnings.warn(f"no {' or '.join(missing)} found to copy; pass --tokenizer / --mimi-weight", stacklevel=1)
    print(f"wrote {path} ({args.format})")
    return 0
