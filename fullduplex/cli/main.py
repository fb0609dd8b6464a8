"""``fullduplex``: the command line entry point, a thin dispatcher over one module per command.

    fullduplex codec encode speech.wav speech.codes.safetensors
    fullduplex codec decode speech.codes.safetensors speech.decoded.wav

A command module (listed in :data:`COMMANDS`) exposes ``register(subparsers)``: it adds its ``argparse``
subparser and sets ``func`` (``args -> int`` exit status) as a default. :func:`main` parses, runs the command, and
turns user-facing errors (:class:`~fullduplex.errors.FullduplexError`, ``ValueError``, ``OSError``) into one line
``error: <message>`` on stderr with exit status 2; usage errors exit 2 as argparse does. Warnings print as
``warning: <message>`` lines.

Two options mean the same in every command and are accepted anywhere, before or after the (sub)command name:
``--traceback`` (on an error, the full Python traceback instead of the one line) and ``--quiet`` / ``-q`` (no
progress bars; results, warnings and errors still print).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from ..errors import FullduplexError

# Modules that register a subcommand, in the order ``--help`` lists them. Add ``generate``, ``serve``, ... here.
COMMANDS: tuple[str, ...] = (
    "fullduplex.cli.codec", "fullduplex.cli.generate", "fullduplex.cli.serve", "fullduplex.cli.client",
    "fullduplex.cli.tokenizer", "fullduplex.cli.adapt", "fullduplex.cli.data", "fullduplex.cli.train",
    "fullduplex.cli.eval", "fullduplex.cli.convert", "fullduplex.cli.voice", "fullduplex.cli.transcribe",
    "fullduplex.cli.translate", "fullduplex.cli.speak",
)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = "Full-duplex spoken dialogue models (Moshi, J-Moshi, Human-1) from the command line."
EPILOG = """\
examples:
  fullduplex codec encode talk.flac talk.codes.safetensors     # audio -> Mimi codes (12.5 frames/s)
  fullduplex codec decode talk.codes.safetensors talk.out.wav  # codes -> 24 kHz audio
  fullduplex codec encode --help                               # options of one command

Checkpoints default to the Hugging Face repo kyutai/moshiko-pytorch-bf16 (downloaded once, then cached).
"""


def version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The full parser: top-level options and one subparser per module in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="fullduplex", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"fullduplex {version()}")
    for flags, help in GLOBAL_OPTIONS:
        parser.add_argument(*flags, action="store_true", help=help)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    for sub in _subparsers(parser):
        _accept_global_options(sub)
    return parser


GLOBAL_OPTIONS = (
    (("--traceback",), "on an error, show the full Python traceback (for bug reports)"),
    (("--quiet", "-q"), "no progress bars (results, warnings and errors still print)"),
)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subparser below ``parser``, at any depth (``eval turns``, ``data prepare``, ...)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [sub, *_subparsers(sub)]
    return found


def _accept_global_options(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` take the global options too. Their default is SUPPRESS there, so an option given before the
    command name is not reset by the subcommand's default (argparse copies a subparser's defaults over the
    parent's values)."""
    for flags, help in GLOBAL_OPTIONS:
        own = parser._option_string_actions.get(flags[0])
        if own is not None:  # the command declares it itself (same meaning: checked by the CLI tests)
            own.default = argparse.SUPPRESS
            continue
        free = [f for f in flags if f not in parser._option_string_actions]
        parser.add_argument(*free, dest=flags[0][2:], action="store_true", default=argparse.SUPPRESS, help=help)


def one_line(error: BaseException) -> str:
    """The error's message on a single line (its type name when it has none)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _warning_printer(stream: TextIO) -> Callable[..., None]:
    """A ``warnings.showwarning`` replacement printing ``warning: <message>`` lines on ``stream``."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
             line: str | None = None) -> None:
        print(f"warning: {one_line(message) if isinstance(message, Warning) else message}", file=stream)

    return show


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, and return its exit status (never raises
    ``SystemExit``: ``--help`` and ``--version`` return 0, usage errors 2)."""
    return run_command(build_parser(), argv, lambda args: args.func(args))


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                command: Callable[[argparse.Namespace], int | None]) -> int:
    """Parse ``argv`` with ``parser`` and run ``command(args)`` as every fullduplex entry point does: warnings as
    ``warning:`` lines, an expected error as one ``error:`` line and status 2 (the traceback with ``--traceback``),
    Ctrl-C as status 130; ``--help`` returns 0 and usage errors 2 (never raises ``SystemExit``)."""
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(sys.stderr)
        try:
            return int(command(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except (FullduplexError, ValueError, OSError) as e:
            if getattr(args, "traceback", False):
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``fullduplex = "fullduplex.cli.main:main"``): returns the exit status, which the
    generated script passes to ``sys.exit``; ``python -m fullduplex.cli.main`` does the same."""
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
