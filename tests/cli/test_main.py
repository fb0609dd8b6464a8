"""The dispatcher: ``--traceback`` and ``--quiet`` are accepted anywhere and mean the same in every command."""

from __future__ import annotations

import argparse

import pytest

from fullduplex.cli.main import _subparsers, build_parser, run
from fullduplex.errors import FullduplexError
from tests.helpers import assert_one_line_error


def test_every_command_takes_the_global_options():
    parser = build_parser()
    subs = _subparsers(parser)
    assert len(subs) > 15  # codec encode/decode, eval turns/codec/latency/behaviour, data ..., tokenizer ...
    for sub in subs:
        for flag, dest in (("--traceback", "traceback"), ("--quiet", "quiet"), ("-q", "quiet")):
            action = sub._option_string_actions.get(flag)
            assert action is not None and action.dest == dest, (sub.prog, flag)
            assert action.default is argparse.SUPPRESS and action.nargs == 0, (sub.prog, flag)


@pytest.mark.parametrize("argv", [
    ["--quiet", "--traceback", "convert", "--format", "moshi", "-o", "x"],
    ["convert", "--format", "moshi", "-o", "x", "-q", "--traceback"],
    ["-q", "eval", "turns", "a.wav", "-o", "r", "--traceback"],
    ["data", "--traceback", "prepare", "m.jsonl", "--tokenizer", "t", "-o", "x", "--quiet"],
    ["train", "recipe.yaml", "--traceback", "-q"],
])
def test_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert args.quiet is True and args.traceback is True
    plain = build_parser().parse_args([a for a in argv if a not in ("-q", "--quiet", "--traceback")])
    assert plain.quiet is False and plain.traceback is False


def test_traceback_anywhere_shows_the_error(tmp_path, capsys):
    argv = ["convert", "--format", "moshi", "-o", str(tmp_path / "o")]
    assert_one_line_error(run(argv), capsys.readouterr().err, "--moshi-weight")
    for where in (0, len(argv)):
        with pytest.raises(FullduplexError, match="--moshi-weight"):
            run([*argv[:where], "--traceback", *argv[where:]])
