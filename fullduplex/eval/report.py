"""Report folders: every file staged under a temporary name, then all renamed into place together.

    files = {"report.json": lambda tmp: write_json(tmp, data), "timeline.png": lambda tmp: plot(tmp)}
    written = write_report(Path("out"), files)          # [out/report.json, out/timeline.png]

A failure while writing any file removes what was staged (and the folder, if this call created it and it is
left empty): a report folder never holds half a report. Files already in the folder under other names stay;
files of the same names (a previous report) are replaced only with ``overwrite`` (``--overwrite``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import check_file_targets, publish, temporary_beside
from ..errors import FullduplexError


def check_report_folder(folder: Path, overwrite: bool = False) -> None:
    """Fail before any work when ``folder`` cannot hold a report: it is a file, its parent is missing, or it holds
    a previous report (``report.json``) and ``overwrite`` is not set."""
    check_file_targets([folder / "report.json"], overwrite, "report")
    if folder.exists() and not folder.is_dir():
        raise FullduplexError(f"--output {folder} is a file; give a folder for the report")
    if not folder.exists() and not folder.parent.is_dir():
        raise FullduplexError(f"--output: folder {folder.parent} does not exist")


def write_report(folder: Path, files: dict[str, Callable[[Path], None]], overwrite: bool = False) -> list[Path]:
    """Create ``folder`` if needed and write each named file with its writer (given a temporary path); rename all
    into place once every one succeeded. An existing file of one of these names is replaced only with
    ``overwrite``. Returns the written paths, in order."""
    check_file_targets([folder / name for name in files], overwrite, "report")
    created = not folder.exists()
    folder.mkdir(parents=False, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in files.items():
            target = folder / name
            staged.append((temporary_beside(target), target))
            write(staged[-1][0])
        for tmp, target in staged:
            publish(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    return [target for _, target in staged]


def write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def fmt(value: float | int | None, digits: int = 2) -> str:
    """A table cell: ``-`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (cells already formatted; ``|`` escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)]) + "\n"


def unique_names(stems: Sequence[str]) -> list[str]:
    """File-name-safe, distinct names for inputs (a repeated stem gets ``-2``, ``-3``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for stem in stems:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "input"
        seen[safe] = seen.get(safe, 0) + 1
        out.append(safe if seen[safe] == 1 else f"{safe}-{seen[safe]}")
    return out
