"""Atomic file output: write under a unique temporary name beside the target, then rename it into place.

A failure (or a concurrent writer) never leaves a half-written target, and the published file gets the usual
permissions (``0o666`` less the umask) rather than the private ``0o600`` of temporary files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def temporary_beside(target: Path) -> Path:
    """A new, empty, uniquely named file in ``target``'s folder (the caller removes or publishes it)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def publish(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the usual file permissions and rename it onto ``target``."""
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, target)


@contextmanager
def atomic_output(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target``, on failure it is removed."""
    target = Path(target)
    tmp = temporary_beside(target)
    try:
        yield tmp
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
