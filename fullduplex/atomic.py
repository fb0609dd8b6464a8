"""Atomic, durable output: files and folders are written under a temporary name beside the target, flushed to
disk (the files, then their folder), then renamed into place.

A failure, a kill or a power cut never leaves a half-written target, and what is published gets the usual
permissions (``0o666`` / ``0o777`` less the umask) rather than the private ones of temporary files.

Folders follow one rule in every command that writes one (``export``, ``convert``, ``adapt``, ``data prepare``,
``data synth``, the training run folder): an existing, non-empty folder is replaced only when every entry in it is
a file the same command writes (see :class:`OutputKind`) *and* the user passed ``--overwrite``; a folder that
holds anything else, or holds an input of the command (the run being exported, the checkpoint being converted),
is refused with an error that says what to do. Nothing the command did not create is ever deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import FullduplexError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


# --- durability -------------------------------------------------------------------------------------------
def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s entries (names created, renamed or removed in it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then every folder, innermost first."""
    folders = []
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        folders.append(Path(root))
    for path in reversed(folders):
        fsync_dir(path)


# --- files ------------------------------------------------------------------------------------------------
def temporary_beside(target: Path) -> Path:
    """A new, empty, uniquely named file in ``target``'s folder (the caller removes or publishes it)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def publish(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the usual file permissions, flush it, rename it onto ``target`` and flush the folder."""
    os.chmod(tmp, _FILE_MODE)
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)


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


@contextmanager
def atomic_outputs() -> Iterator[Callable[[str | os.PathLike[str]], Path]]:
    """Several files, all or none: ``stage(target)`` gives a temporary beside ``target`` to write; when the block
    ends without error each replaces its target (in the order staged), on failure every temporary is removed."""
    staged: list[tuple[Path, Path]] = []

    def stage(target: str | os.PathLike[str]) -> Path:
        staged.append((temporary_beside(Path(target)), Path(target)))
        return staged[-1][0]

    try:
        yield stage
        for tmp, target in staged:
            publish(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def check_file_targets(targets: Iterable[Path], overwrite: bool, what: str = "") -> None:
    """Refuse to replace existing files without ``--overwrite`` (for commands that add named files to a folder
    and leave its other files alone: eval reports, ``tokenizer train``)."""
    for target in targets:
        if target.exists() and not overwrite:
            of = f" (a previous {what})" if what else ""
            raise FullduplexError(f"{target} already exists{of}; pass --overwrite to replace it, or give another folder")


# --- folders ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputKind:
    """What a command's output folder holds. ``files(folder)``: the names of the entries that command wrote
    there, read from the folder's own index (e.g. ``config.json``), or None when the folder is not one of its
    outputs at all."""

    command: str
    files: Callable[[Path], set[str] | None]


def _holds(folder: Path, path: Path) -> bool:
    folder, path = folder.resolve(), Path(path).resolve()
    return path == folder or folder in path.parents


def check_output_folder(output: Path, kind: OutputKind, overwrite: bool = False, protect: Iterable[Path] = (),
                        option: str = "--output") -> bool:
    """Refuse, before any work, an ``output`` folder that ``kind.command`` may not write: a file; a folder that
    holds one of ``protect`` (the command's inputs); a non-empty folder that is not wholly a previous output of
    the same command; a previous output without ``overwrite``. Returns True when an existing previous output
    will be replaced."""
    output = Path(output)
    for path in protect:
        if _holds(output, path):
            raise FullduplexError(f"{option} {output} holds {path}, an input of this command; nothing was written "
                                  "or deleted: choose another folder")
    if output.exists() and not output.is_dir():
        raise FullduplexError(f"{option} {output} is a file; give a folder")
    if not output.is_dir():
        return False
    entries = sorted(p.name for p in output.iterdir())
    if not entries:
        return False
    known = kind.files(output)
    unknown = [name for name in entries if known is None or name not in known]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        why = "is not" if known is None else "holds files that are not part of"
        raise FullduplexError(f"{option} {output} {why} a previous `{kind.command}` output (it holds {unknown[0]!r}"
                              f"{more}); nothing was deleted: give a new or empty folder")
    if not overwrite:
        raise FullduplexError(f"{option} {output} holds a previous `{kind.command}` output; pass --overwrite to "
                              "replace it, or give a new folder")
    return True


def staging_folder(output: Path) -> Path:
    """A new private folder beside ``output`` to build it in; :func:`publish_folder` puts it in place."""
    return Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))


def publish_folder(work: Path, output: Path, kind: OutputKind, overwrite: bool = False,
                   protect: Iterable[Path] = ()) -> None:
    """Give ``work`` and everything in it the permissions a plain mkdir / open would, flush it to disk, and rename
    it to ``output``. An existing ``output`` is checked again (:func:`check_output_folder`) right before it is
    moved aside and removed."""
    for root, dirs, files in os.walk(work):
        os.chmod(root, _DIR_MODE)
        for name in dirs:
            os.chmod(Path(root) / name, _DIR_MODE)
        for name in files:
            os.chmod(Path(root) / name, _FILE_MODE)
    fsync_tree(work)
    if check_output_folder(output, kind, overwrite, protect):
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.replace(output, old / output.name)
        try:
            os.replace(work, output)
        except OSError:
            os.replace(old / output.name, output)  # put the previous output back
            old.rmdir()
            raise
        fsync_dir(output.parent)
        shutil.rmtree(old)
        return
    if output.is_dir():
        output.rmdir()  # empty, as checked
    os.replace(work, output)
    fsync_dir(output.parent)


@contextmanager
def folder_output(output: str | os.PathLike[str], kind: OutputKind, overwrite: bool = False,
                  protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Check ``output`` (see :func:`check_output_folder`), yield a staging folder beside it to fill, and publish
    it on success; on failure the staging folder is removed and ``output`` is untouched."""
    output, protect = Path(output), tuple(protect)
    check_output_folder(output, kind, overwrite, protect)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = staging_folder(output)
    try:
        yield work
        publish_folder(work, output, kind, overwrite, protect)
    finally:
        shutil.rmtree(work, ignore_errors=True)
