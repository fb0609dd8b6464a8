"""fullduplex.atomic: the one output-folder rule (nothing the command did not write is deleted) and durability
(files, then their folder, are flushed before the rename that publishes them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fullduplex.atomic import OutputKind, atomic_output, check_output_folder, folder_output
from fullduplex.errors import FullduplexError
from fullduplex.train import checkpointing as ckpt

KIND = OutputKind("fullduplex thing", lambda folder: {"a.txt", "b.txt"} if (folder / "a.txt").is_file() else None)


def write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def test_output_folder_rule(tmp_path):
    assert check_output_folder(tmp_path / "new", KIND) is False
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", KIND) is False
    with folder_output(tmp_path / "out", KIND) as work:
        write(work, **{"a.txt": "1", "b.txt": "1"})
    with pytest.raises(FullduplexError, match="previous `fullduplex thing` output; pass --overwrite"):
        check_output_folder(tmp_path / "out", KIND)
    with folder_output(tmp_path / "out", KIND, overwrite=True) as work:
        write(work, **{"a.txt": "2"})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]
    assert (tmp_path / "out" / "a.txt").read_text() == "2"
    write(tmp_path / "out", **{"mine.txt": "keep"})
    with pytest.raises(FullduplexError, match="holds files that are not part of .*'mine.txt'.*nothing was deleted"):
        check_output_folder(tmp_path / "out", KIND, overwrite=True)
    (tmp_path / "foreign").mkdir()
    write(tmp_path / "foreign", **{"b.txt": "x"})  # a name we write, but not a folder of ours (no a.txt)
    with pytest.raises(FullduplexError, match="is not a previous"):
        check_output_folder(tmp_path / "foreign", KIND, overwrite=True)
    with pytest.raises(FullduplexError, match="an input of this command"):
        check_output_folder(tmp_path, KIND, overwrite=True, protect=[tmp_path / "out" / "a.txt"])
    (tmp_path / "file").write_text("")
    with pytest.raises(FullduplexError, match="is a file"):
        check_output_folder(tmp_path / "file", KIND)
    # A failure inside leaves the old output as it was and no staging folder.
    (tmp_path / "out" / "mine.txt").unlink()
    with pytest.raises(RuntimeError), folder_output(tmp_path / "out", KIND, overwrite=True) as work:
        write(work, **{"a.txt": "3"})
        raise RuntimeError("boom")
    assert (tmp_path / "out" / "a.txt").read_text() == "2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture
def journal(monkeypatch):
    """Record fsync (of which path) and rename calls, in order."""
    events: list[tuple[str, str]] = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def on_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def on_replace(src, dst):
        events.append(("rename", str(Path(src).resolve())))
        replace(src, dst)

    def on_rename(self, target):
        events.append(("rename", str(Path(self).resolve())))
        return rename(self, target)

    monkeypatch.setattr(os, "fsync", on_fsync)
    monkeypatch.setattr(os, "replace", on_replace)
    monkeypatch.setattr(Path, "rename", on_rename)
    return events


def flushed_before_publish(events, files: list[str], folder: str, parent: str) -> None:
    """Every file and its folder were flushed before the rename of ``folder``, the parent after it."""
    published = events.index(("rename", folder))
    flushed = {path for kind, path in events[:published] if kind == "fsync"}
    assert set(files) <= flushed and folder in flushed, (files, events)
    assert ("fsync", parent) in events[published:], events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fd paths from /proc")
def test_files_folders_and_checkpoints_are_flushed_before_publishing(tmp_path, journal):
    tmp_path = tmp_path.resolve()
    with atomic_output(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
    temporary = journal[0][1]
    assert journal == [("fsync", temporary), ("rename", temporary), ("fsync", str(tmp_path))]

    journal.clear()
    with folder_output(tmp_path / "out", KIND) as work:
        write(work, **{"a.txt": "1"})
        staged = str(work.resolve())
    flushed_before_publish(journal, [f"{staged}/a.txt"], staged, str(tmp_path))

    journal.clear()
    import torch

    final = ckpt.save_checkpoint(tmp_path / "run", 3, {"w": torch.ones(2)}, {}, {"step": 3}, [])
    staged = str(final.parent / f".{final.name}.tmp")
    files = [f"{staged}/{name}" for name in ("trainable.safetensors", "optimizer.pt", "rng.pt", "state.json")]
    flushed_before_publish(journal, files, staged, str(final.parent))
