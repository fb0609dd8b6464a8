"""A progress bar over the stages of a command that has no finer measure of progress (``export``, ``convert``):
which stage runs now, how many are done, the time spent. On stderr; off with ``--quiet`` or when stderr is not a
terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def stage_bar(total: int, desc: str, quiet: bool) -> Iterator[Callable[[str], None]]:
    """Yield ``on_stage(description)``, to call as each of ``total`` stages starts; the bar fills when the block
    ends without an error."""
    bar = tqdm(total=total, desc=desc, unit="stage", file=sys.stderr, leave=False, disable=True if quiet else None,
               bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed} {postfix}")
    started = False

    def on_stage(description: str) -> None:
        nonlocal started
        if started:
            bar.update(1)
        started = True
        bar.set_postfix_str(description)

    try:
        yield on_stage
        bar.update(bar.total - bar.n)
    finally:
        bar.close()
