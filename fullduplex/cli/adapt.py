"""``fullduplex adapt``: give a Moshi LM checkpoint a new text vocabulary (see :mod:`fullduplex.checkpoint.adapt`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from ..checkpoint.adapt import DEFAULT_COV_SCALE, INITS, adapt_checkpoint
from ..checkpoint.resolve import DEFAULT_REPO
from ..lm.config import PRESETS as LM_PRESETS

EPILOG = """\
examples:
  fullduplex tokenizer train --corpus hindi.txt --vocab-size 32000 --output tok-hi/
  fullduplex adapt --hf-repo kyutai/moshiko-pytorch-bf16 --tokenizer tok-hi/tokenizer.model --output moshi-hi/
  fullduplex adapt --moshi-weight model.safetensors --tokenizer ja.model --output moshi-ja/ --init normal --seed 1
  fullduplex adapt --moshi-weight ckpt/ --tokenizer new.model --output out/ --init copy-shared \\
      --old-tokenizer ckpt/tokenizer_spm_32k_3.model

Re-initialises exactly text_emb.weight and depformer_text_emb.weight ([text_card + 1, D], the last row the
initial token) and text_linear.weight ([text_card, D]), resized to the new tokenizer's vocabulary; keeps the rows
of the special ids (EPAD 0, <s> 1, </s> 2, PAD 3) and of the initial token; copies every other tensor bit for bit.
  --init normal       new rows ~ N(0, std of the old tensor)
  --init mean-cov     new rows ~ N(mean, cov-scale * covariance) of the old rows (J-Moshi; default)
  --init copy-shared  rows of pieces both tokenizers hold are copied; the rest drawn by --fill
OUT gets model.safetensors, config.json (text_card updated) and tokenizer_spm_32k_3.model; the Mimi codec is
unchanged (pass --mimi-weight / --hf-repo of the base model when serving, or copy its file into OUT).
Memory: one tensor at a time (plus a dim x dim covariance for mean-cov), never two copies of the model.
"""


def register(subparsers: Any) -> None:
    """Add ``adapt``."""
    parser = subparsers.add_parser(
        "adapt", help="resize an LM checkpoint to a new text tokenizer (new language)",
        description="Write a copy of a Moshi LM checkpoint whose text vocabulary is a new tokenizer's.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_argument_group("input")
    src.add_argument("--moshi-weight", metavar="IN", help="LM checkpoint: file, folder or hf://OWNER/REPO[/FILE]")
    src.add_argument("--hf-repo", metavar="OWNER/NAME", help=f"Hugging Face repo of the LM (default: {DEFAULT_REPO})")
    src.add_argument(
        "--config", metavar="PRESET_OR_JSON",
        help=f"the input's LM architecture: a preset ({', '.join(sorted(LM_PRESETS))}) or a moshi config.json "
        "(default: the input folder's or repo's config.json, else moshiko 7B)",
    )
    src.add_argument("--tokenizer", required=True, metavar="NEW.model", help="the new SentencePiece model")
    src.add_argument("--old-tokenizer", metavar="OLD.model",
                     help="the input's tokenizer, for --init copy-shared (default: the one found with the input)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", "-o", required=True, metavar="OUT", help="folder to write (new, or empty)")
    out.add_argument("--overwrite", "--force", action="store_true", dest="overwrite",
                     help="replace OUT when it holds a previous adapt / export / convert output (and nothing else)")
    out.add_argument("--init", choices=INITS, default="mean-cov", help="new rows (default: mean-cov)")
    out.add_argument("--fill", choices=("normal", "mean-cov"), default="mean-cov",
                     help="rows copy-shared cannot copy (default: mean-cov)")
    out.add_argument("--cov-scale", type=float, default=DEFAULT_COV_SCALE, metavar="S",
                     help=f"mean-cov: covariance scale (default: {DEFAULT_COV_SCALE:g}, J-Moshi)")
    out.add_argument("--seed", type=int, default=0, help="random seed of the new rows (default: 0)")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=adapt_command)


def adapt_command(args: argparse.Namespace) -> int:
    bar = tqdm(total=None, desc="adapt", unit="B", unit_scale=True, file=sys.stderr, leave=False,
               disable=True if args.quiet else None)

    def on_write(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = adapt_checkpoint(
            args.tokenizer, args.output, moshi_weight=args.moshi_weight, hf_repo=args.hf_repo, config=args.config,
            init=args.init, old_tokenizer=args.old_tokenizer, fill=args.fill, cov_scale=args.cov_scale,
            seed=args.seed, overwrite=args.overwrite, on_write=on_write,
        )
    finally:
        bar.close()
    print(f"text_card {result.old_text_card} -> {result.config.text_card} ({result.init}); "
          f"kept rows {list(result.kept_ids)} and the initial token's")
    if result.init == "copy-shared":
        print(f"copied the rows of {result.shared_pieces} pieces both tokenizers hold")
    for name, (old, new) in result.resized.items():
        print(f"{name}: {list(old)} -> {list(new)}")
    for path in result.files:
        print(f"wrote {path}")
    return 0
