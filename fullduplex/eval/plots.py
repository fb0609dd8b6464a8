"""PNG plots of evaluation results, drawn with matplotlib's Agg backend (no display needed).

Every function writes one PNG to ``path`` (any name: the format is given explicitly, so temporary names work).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .turns import Interval, Turns

COLOURS = {
    "speaker0": "#1f77b4", "speaker1": "#ff7f0e", "pause": "#7f7f7f", "gap": "#2ca02c", "overlap": "#d62728",
    "backchannel": "#9467bd",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _bars(intervals: Sequence[Interval]) -> list[tuple[float, float]]:
    return [(s, e - s) for s, e in intervals]


def timeline(turns: Turns, path: Path, title: str, speakers: Sequence[str] = ("left", "right")) -> None:
    """Both channels' IPUs on two rows (backchannel-like IPUs hatched), and below them a row of the joint events:
    pauses, gaps and overlaps in their own colours; a legend names each colour."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    width = min(max(8.0, turns.duration / 4), 24.0)
    fig, ax = plt.subplots(figsize=(width, 3.0))
    rows = {"speaker0": 2.0, "speaker1": 1.0, "events": 0.0}
    for k in range(2):
        colour = COLOURS[f"speaker{k}"]
        ax.broken_barh(_bars(turns.ipus[k]), (rows[f"speaker{k}"] - 0.35, 0.7), facecolors=colour)
        if turns.backchannels[k]:
            ax.broken_barh(_bars(turns.backchannels[k]), (rows[f"speaker{k}"] - 0.35, 0.7), facecolors=colour,
                           edgecolors=COLOURS["backchannel"], hatch="////", linewidth=1.0)
    for kind, intervals in (("pause", turns.pauses), ("gap", turns.gaps), ("overlap", turns.overlaps)):
        ax.broken_barh(_bars(intervals), (-0.35, 0.7), facecolors=COLOURS[kind])
    for s, e in turns.overlaps:  # overlaps also shaded across the speaker rows, where they happen
        ax.axvspan(s, e, ymin=0.34, ymax=0.98, color=COLOURS["overlap"], alpha=0.15, linewidth=0)
    ax.set_yticks([2, 1, 0], [f"IPU {speakers[0]}", f"IPU {speakers[1]}", "silence / overlap"])
    ax.set_ylim(-0.6, 2.6)
    ax.set_xlim(0, turns.duration)
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    handles = [
        Patch(color=COLOURS["speaker0"], label=f"IPU {speakers[0]}"),
        Patch(color=COLOURS["speaker1"], label=f"IPU {speakers[1]}"),
        Patch(facecolor="white", edgecolor=COLOURS["backchannel"], hatch="////", label="backchannel-like"),
        Patch(color=COLOURS["pause"], label=f"pause ({len(turns.pauses)})"),
        Patch(color=COLOURS["gap"], label=f"gap ({len(turns.gaps)})"),
        Patch(color=COLOURS["overlap"], label=f"overlap ({len(turns.overlaps)})"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=6, frameon=False, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def histograms(series: dict[str, Sequence[float]], path: Path, title: str, xlabel: str = "duration (s)",
               bin_width: float = 0.1) -> None:
    """One histogram per named series of durations, side by side, with ``bin_width``-second bins."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.4), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items(), strict=True):
        values = np.asarray(values, dtype=float)
        colour = COLOURS.get(name, "#1f77b4")
        if len(values):
            top = max(bin_width, float(values.max()))
            bins = np.arange(0.0, top + bin_width, bin_width)
            ax.hist(values, bins=bins, color=colour, edgecolor="white", label=f"{name}: n={len(values)}, "
                    f"mean {values.mean():.3f} s")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {name}s", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{name} durations")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def cdf(series: dict[str, Sequence[float]], path: Path, title: str, xlabel: str,
        marks: Sequence[float] = ()) -> None:
    """Empirical CDFs, one line per named series (empty series are listed in the legend as such); vertical
    dotted lines at ``marks`` (e.g. the 80 ms frame)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in series.items():
        values = np.sort(np.asarray(values, dtype=float))
        if len(values) == 0:
            ax.plot([], [], label=f"{name} (no data)")
            continue
        median = values[max(0, -(-len(values) // 2) - 1)]  # nearest rank, as the reports' p50
        style = {"color": "black", "linestyle": "--", "linewidth": 2} if name == "pooled" else {}
        ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                label=f"{name} (n={len(values)}, p50 {median:.1f})", **style)
    for x in marks:
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{x:g}", (x, 1.0), xytext=(3, -12), textcoords="offset points", color="grey", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction ≤ x")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def metric_bars(means: dict[str, dict[int, float | None]], path: Path, title: str) -> None:
    """One panel per metric: its mean against the codebook count (bitrate in the tick labels)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(means), figsize=(3.6 * len(means), 3.4), squeeze=False)
    for ax, (metric, by_codebooks) in zip(axes[0], means.items(), strict=True):
        keys = sorted(by_codebooks)
        values = [by_codebooks[k] if by_codebooks[k] is not None else np.nan for k in keys]
        ax.bar([str(k) for k in keys], values, color="#1f77b4")
        for i, v in enumerate(values):
            if not np.isnan(v):
                ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(metric)
        ax.set_xlabel("codebooks")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def probe_timelines(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Behaviour probes, one panel each: the user's speech (top row) and the model's (bottom row) over the
    probe's duration; ``marks`` (name -> seconds) as labelled vertical lines, ``spans`` (name -> (start, end)) as
    shaded bands, ``highlight`` (intervals of the model's row) hatched. Each row: ``label``, ``duration``,
    ``user``, ``model``, ``marks``, ``spans``, ``highlight``."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    width = min(max(9.0, max(r["duration"] for r in rows) / 2.5), 20.0)
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, 1.0 + 1.35 * len(rows)), squeeze=False)
    mark_colours = ["#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    for ax, row in zip(axes[:, 0], rows, strict=True):
        for name, (s, e) in row.get("spans", {}).items():
            ax.axvspan(s, e, color="#bbbbbb", alpha=0.35, linewidth=0)
            ax.annotate(f"{name} {e - s:.2f} s", ((s + e) / 2, 1.4), ha="center", va="bottom", fontsize=7,
                        color="#555555")
        ax.broken_barh(_bars(row["user"]), (0.65, 0.6), facecolors=COLOURS["speaker1"])
        ax.broken_barh(_bars(row["model"]), (-0.25, 0.6), facecolors=COLOURS["speaker0"])
        if row.get("highlight"):
            ax.broken_barh(_bars(row["highlight"]), (-0.25, 0.6), facecolors=COLOURS["speaker0"],
                           edgecolors=COLOURS["backchannel"], hatch="////", linewidth=1.0)
        for i, (name, x) in enumerate(row.get("marks", {}).items()):
            colour = mark_colours[i % len(mark_colours)]
            ax.axvline(x, color=colour, linestyle="--", linewidth=1.2, label=f"{name} {x:.2f} s")
        if row.get("marks"):
            ax.legend(loc="center left", bbox_to_anchor=(1.005, 0.5), frameon=False, fontsize=7)
        ax.set_yticks([0.95, 0.05], ["user", "model"])
        ax.set_ylim(-0.6, 1.7)
        ax.set_xlim(0, row["duration"])
        ax.set_title(row["label"], fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    handles = [Patch(color=COLOURS["speaker1"], label="user speech"),
               Patch(color=COLOURS["speaker0"], label="model speech (VAD IPUs)")]
    if any(r.get("highlight") for r in rows):
        handles.append(Patch(facecolor="white", edgecolor=COLOURS["backchannel"], hatch="////", label="backchannel"))
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    margin = 0.3 / fig.get_figheight()  # inches kept for the legend below the panels
    fig.tight_layout(rect=(0, margin, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
