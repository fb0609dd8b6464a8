"""A run's ``metrics.jsonl`` (one JSON record a line: ``step``, ``split`` train/valid, ``loss``, ...) and its loss
curve ``RUN/loss.png`` (training loss per logged step, and the validation loss when the run has one), so an
operator sees a run's progress without TensorBoard.

The curve needs matplotlib (the ``eval`` extra); without it :func:`write_loss_curve` returns None and the recipe
prints one line saying so. Only the object-oriented API is used (no pyplot): nothing changes the process's backend.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ..atomic import atomic_output
from ..errors import FullduplexError

METRICS = "metrics.jsonl"
CURVE_NAME = "loss.png"
MISSING = f"no {CURVE_NAME}: matplotlib is not installed (pip install fullduplex[eval]); metrics.jsonl has the numbers"


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_loss_curve(run_dir: Path, records: list[dict[str, Any]], title: str = "") -> Path | None:
    """Draw ``records`` (metrics.jsonl records) to ``run_dir/loss.png`` atomically; None when matplotlib is not
    installed or there is nothing to draw."""
    if not matplotlib_available():
        return None
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train" and "loss" in r]
    valid = [(r["step"], r["loss"]) for r in records if r.get("split") == "valid" and "loss" in r]
    if not train and not valid:
        return None
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for points, label, style in ((train, "train", "-"), (valid, "valid", "o-")):
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, style, label=label, markersize=3, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or str(run_dir))
    ax.grid(alpha=0.3)
    ax.legend()
    target = run_dir / CURVE_NAME
    with atomic_output(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return target


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``. A torn last line (what a kill during a write leaves) is dropped with a
    warning; any other unreadable line is an error naming the file and the line."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not an object with an integer step")
        except ValueError as e:
            if number == len(lines):
                warnings.warn(f"{path}: dropped a torn last line {number} (a run killed while writing it)",
                              stacklevel=2)
                break
            raise FullduplexError(f"{path}: line {number} is not a metrics record ({e}); fix or delete that line, "
                                  "then run again") from None
        records.append(record)
    return records


def trim_metrics(path: Path, step: int) -> None:
    """Drop records past ``step`` (written after the checkpoint a resumed run restarts from) and a torn last line."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        with atomic_output(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))


def draw_loss_curve(run_dir: Path, metrics_path: Path) -> Path | None:
    """``RUN/loss.png`` from ``metrics.jsonl``; one line on stderr when matplotlib is missing."""
    path = write_loss_curve(run_dir, read_metrics(metrics_path))
    if path is None and not (run_dir / CURVE_NAME).exists() and not matplotlib_available():
        print(MISSING, file=sys.stderr)
    return path
