"""The loss curve of a run: ``RUN/loss.png`` drawn from ``metrics.jsonl`` (training loss per logged step, and the
validation loss when the run has one), so an operator sees a run's progress without TensorBoard.

Needs matplotlib (the ``eval`` extra); without it :func:`write_loss_curve` returns None and the recipe prints one
line saying so. Only the object-oriented API is used (no pyplot): nothing changes the process's backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic import atomic_output

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
