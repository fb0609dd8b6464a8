"""``fullduplex tokenizer``: train a SentencePiece tokenizer for a new language, or measure how one fits a corpus.

``train`` writes ``DIR/tokenizer.model`` and ``DIR/tokenizer.vocab`` (SentencePiece's own formats) with the
special ids the LM expects (0 ``<unk>``/EPAD, 1 ``<s>``, 2 ``</s>``, 3 ``<pad>``/PAD; see
:mod:`fullduplex.text.train`), then prints the coverage report of :mod:`fullduplex.text.coverage` on the corpus.
Both files are trained under temporary names in DIR and renamed into place only when training succeeded.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic import check_file_targets, publish
from ..errors import FullduplexError
from ..text.coverage import measure_coverage
from ..text.tokenizer import TextTokenizer
from ..text.train import train_tokenizer
from .codec import positive_int

MODEL_NAME = "tokenizer.model"
VOCAB_NAME = "tokenizer.vocab"
REPORT_LINES = 200_000

TRAIN_EPILOG = f"""\
examples:
  fullduplex tokenizer train --corpus hindi.txt --vocab-size 32000 --output tok-hi/
  fullduplex tokenizer train --corpus ja1.txt ja2.txt --vocab-size 32000 --output tok-ja/ --model-type bpe
  fullduplex tokenizer train --corpus big.txt --vocab-size 32000 --output tok/ --input-sentence-size 5000000

The corpus is UTF-8 text, one sentence (or utterance) per line, in any script: Latin, Devanagari, Japanese
without spaces. The vocabulary size counts the 4 special pieces and becomes the LM's text_card (moshiko: 32000;
`fullduplex adapt` resizes a checkpoint to it). Writes DIR/{MODEL_NAME} and DIR/{VOCAB_NAME}, then reports
character coverage, word coverage, tokens per word and tokens per character on the first {REPORT_LINES} lines.
"""

REPORT_EPILOG = """\
examples:
  fullduplex tokenizer report --tokenizer tok-hi/tokenizer.model --corpus hindi-test.txt
  fullduplex tokenizer report --tokenizer hf://kyutai/moshiko-pytorch-bf16 --corpus hindi-test.txt --json
"""


def register(subparsers: Any) -> None:
    """Add ``tokenizer train`` and ``tokenizer report``."""
    parser = subparsers.add_parser(
        "tokenizer", help="train a SentencePiece tokenizer for a new language; measure coverage",
        description="Text tokenizers of the LM's inner monologue.",
    )
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = commands.add_parser(
        "train", help="train a SentencePiece model with the LM's special ids",
        description="Train a SentencePiece tokenizer whose special ids match the Moshi LM's text stream.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--corpus", nargs="+", required=True, metavar="TEXT", help="UTF-8 text files, one sentence a line")
    train.add_argument("--vocab-size", type=positive_int, required=True, metavar="N", help="pieces, specials included")
    train.add_argument("--output", "-o", required=True, metavar="DIR", help=f"folder for {MODEL_NAME} and {VOCAB_NAME}")
    train.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="(default: unigram)")
    train.add_argument(
        "--character-coverage", type=float, default=1.0, metavar="F",
        help="share of the corpus's characters that get a piece; rarer ones become <unk> (default: 1.0; "
        "0.9995 is common for scripts with thousands of characters)",
    )
    train.add_argument(
        "--byte-fallback", action="store_true",
        help="spell characters outside the vocabulary as UTF-8 byte pieces instead of <unk> (spends 256 ids)",
    )
    train.add_argument(
        "--input-sentence-size", type=int, default=0, metavar="N",
        help="train on a random sample of N lines (default: 0 = all; SentencePiece holds them in memory)",
    )
    train.add_argument(
        "--threads", type=positive_int, default=min(16, os.cpu_count() or 1), metavar="N",
        help="training threads (default: the CPU count, at most 16)",
    )
    train.add_argument("--overwrite", "--force", action="store_true", dest="overwrite",
                       help=f"replace an existing DIR/{MODEL_NAME} and DIR/{VOCAB_NAME} (other files stay)")
    train.add_argument("--json", action="store_true", help="print the coverage report as one JSON object")
    train.set_defaults(func=train_command)

    report = commands.add_parser(
        "report", help="coverage and tokens per word of a tokenizer on a corpus",
        description="Measure how a SentencePiece tokenizer fits a corpus (coverage, tokens per word / character).",
        epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("--tokenizer", required=True, metavar="MODEL", help="a .model file, folder or hf:// reference")
    report.add_argument("--corpus", nargs="+", required=True, metavar="TEXT", help="UTF-8 text files")
    report.add_argument("--max-lines", type=positive_int, default=REPORT_LINES, metavar="N",
                        help=f"measure the first N non-empty lines (default: {REPORT_LINES})")
    report.add_argument("--json", action="store_true", help="print the report as one JSON object")
    report.set_defaults(func=report_command)


def check_corpus(paths: list[Path]) -> None:
    """Refuse missing, empty or non-UTF-8 files before any work (the start of each file is checked)."""
    for path in paths:
        if not path.is_file():
            raise FullduplexError(f"corpus file not found: {path}")
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if not head.strip():
            raise FullduplexError(f"corpus file {path} is empty")
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError as e:
            raise FullduplexError(f"corpus file {path} is not UTF-8 text (byte {e.start}): convert it first") from None


def corpus_lines(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                yield from f
        except UnicodeDecodeError as e:
            raise FullduplexError(f"corpus file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from None


def _print_report(report: Any, as_json: bool, extra: dict[str, Any]) -> None:
    if as_json:
        print(json.dumps({**extra, **report.to_dict()}, ensure_ascii=False))
    else:
        for line in report.summary():
            print(line)


def train_command(args: argparse.Namespace) -> int:
    corpus = [Path(p) for p in args.corpus]
    check_corpus(corpus)
    if not 0.0 < args.character_coverage <= 1.0:
        raise FullduplexError(f"--character-coverage must be in (0, 1], got {args.character_coverage}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise FullduplexError(f"--output {out} is a file; give a folder")
    targets = (out / MODEL_NAME, out / VOCAB_NAME)
    check_file_targets(targets, args.overwrite, "tokenizer")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f".tokenizer.{os.getpid()}.tmp"
    staged = (prefix.with_name(prefix.name + ".model"), prefix.with_name(prefix.name + ".vocab"))
    options: dict[str, Any] = {"num_threads": args.threads}
    if args.input_sentence_size:
        options.update(input_sentence_size=args.input_sentence_size, shuffle_input_sentence=True)
    if sys.stderr.isatty():  # SentencePiece shows no progress of its own
        print(f"training a {args.model_type} tokenizer of {args.vocab_size} pieces ...", file=sys.stderr)
    try:
        train_tokenizer(
            corpus, prefix, args.vocab_size, model_type=args.model_type,
            character_coverage=args.character_coverage, byte_fallback=args.byte_fallback, **options,
        )
        for tmp, target in zip(staged, targets, strict=True):
            publish(tmp, target)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
    tokenizer = TextTokenizer.load(targets[0])
    report = measure_coverage(tokenizer, corpus_lines(corpus), max_lines=REPORT_LINES)
    _print_report(report, args.json, {"tokenizer": str(targets[0]), "vocab_size": tokenizer.vocab_size})
    print(f"wrote {targets[0]} and {targets[1]} ({tokenizer.vocab_size} pieces: text_card {tokenizer.vocab_size})",
          file=sys.stderr)
    return 0


def report_command(args: argparse.Namespace) -> int:
    corpus = [Path(p) for p in args.corpus]
    check_corpus(corpus)
    tokenizer = TextTokenizer.load(args.tokenizer)
    report = measure_coverage(tokenizer, corpus_lines(corpus), max_lines=args.max_lines)
    _print_report(report, args.json, {"tokenizer": tokenizer.source, "vocab_size": tokenizer.vocab_size})
    return 0
