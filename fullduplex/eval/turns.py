"""Turn-taking statistics of a two-speaker conversation, from each speaker's speech intervals (no audio here).

    turns = analyse_turns([[(0.0, 2.0)], [(2.5, 4.0)]], duration=5.0, min_silence=0.2)
    turns.gaps                       # [(2.0, 2.5)]: silence between the two speakers
    turns.summary()["gap"]           # {"count": 1, "per_min": 12.0, "sec_per_min": 6.0, "durations": [0.5], ...}
    pooled([turns, other])           # the same keys over several conversations

Definitions (dGSLM, Nguyen et al. 2023; see ``docs/evaluation.md``), all times in seconds:

- **IPU** (inter-pausal unit): one speaker's speech bounded by silences of at least ``min_silence`` in that
  speaker's channel; shorter silences are merged into the IPU, whatever the other speaker does meanwhile.
- **silence**: a maximal stretch where neither speaker is inside an IPU, lying between two IPUs. Silence before the
  first IPU and after the last one (of either speaker) is neither a pause nor a gap: nobody held a turn there.
- **pause**: a silence with the same speaker on both sides (an IPU of that speaker ends where it starts and one
  begins where it ends); otherwise a **gap** (the speaker changes). When both speakers' IPUs end (or start) at
  exactly the same time, the silence is a pause if either speaker is on both sides.
- **overlap**: a maximal stretch where both speakers are inside an IPU.
- **backchannel-like IPU**: an IPU shorter than ``backchannel_max`` lying entirely within one IPU of the other
  speaker (short feedback while the other keeps talking).
- **turn**: with backchannel-like IPUs left out, order the remaining IPUs of both speakers by start time; a turn is
  a maximal run of consecutive IPUs of one speaker. A speaker's turn count is the number of such runs.

Per minute values divide by the conversation's duration in minutes. Speech touching the file's start or end is
an ordinary IPU (it may be cut short by the recording).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Interval = tuple[float, float]

EVENTS = ("ipu", "pause", "gap", "overlap")
EPSILON = 1e-9  # seconds: a silence of min_silence written as 1.2 - 1.0 must still count as min_silence


def normalize(intervals: Sequence[Sequence[float]], duration: float) -> list[Interval]:
    """Sort, clip to [0, duration], drop empty intervals and merge overlapping or touching ones."""
    out: list[Interval] = []
    for start, end in sorted((float(s), float(e)) for s, e in intervals):
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"speech interval ({start}, {end}) is not finite")
        start, end = max(start, 0.0), min(end, duration)
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def ipus(intervals: Sequence[Interval], min_silence: float) -> list[Interval]:
    """Merge normalized speech ``intervals`` of one speaker across silences shorter than ``min_silence``."""
    out: list[Interval] = []
    for start, end in intervals:
        if out and start - out[-1][1] < min_silence - EPSILON:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Where both sorted, disjoint interval lists hold (two-pointer sweep); touching results are merged."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _within(inner: Interval, outer: Sequence[Interval]) -> bool:
    return any(s <= inner[0] and inner[1] <= e for s, e in outer)


@dataclass(frozen=True)
class Turns:
    """Turn-taking events of one conversation (see the module docstring); intervals in seconds, sorted."""

    duration: float
    min_silence: float
    backchannel_max: float
    speech: tuple[list[Interval], list[Interval]]  # per speaker: normalized speech intervals (the VAD's)
    ipus: tuple[list[Interval], list[Interval]]  # per speaker
    pauses: list[Interval]
    gaps: list[Interval]
    overlaps: list[Interval]
    backchannels: tuple[list[Interval], list[Interval]]  # per speaker: backchannel-like IPUs
    turns: tuple[int, int]  # per speaker: turn count

    def events(self, kind: str) -> list[Interval]:
        """The intervals of one event kind: ``ipu`` (both speakers, by start), ``pause``, ``gap`` or ``overlap``."""
        if kind == "ipu":
            return sorted(self.ipus[0] + self.ipus[1])
        return {"pause": self.pauses, "gap": self.gaps, "overlap": self.overlaps}[kind]

    def summary(self) -> dict[str, Any]:
        """JSON-ready statistics: ``duration``, per event kind ``count``, ``per_min``, ``sec_per_min``,
        ``mean`` and ``durations``, and ``speakers`` (one object per channel)."""
        out: dict[str, Any] = {"duration": _round(self.duration)}
        for kind in EVENTS:
            out[kind] = event_stats([e - s for s, e in self.events(kind)], self.duration)
        out["speakers"] = [
            {
                "speech_sec": _round(sum(e - s for s, e in self.speech[k])),
                "ipu_sec": _round(sum(e - s for s, e in self.ipus[k])),
                "ipu_count": len(self.ipus[k]),
                "turns": self.turns[k],
                "backchannel": event_stats([e - s for s, e in self.backchannels[k]], self.duration),
            }
            for k in range(2)
        ]
        return out


def analyse_turns(
    speech: Sequence[Sequence[Sequence[float]]], duration: float, min_silence: float = 0.2,
    backchannel_max: float = 1.0,
) -> Turns:
    """IPUs, pauses, gaps, overlaps, backchannel-like IPUs and turns from two speakers' speech intervals.

    ``speech``: two lists of (start, end) seconds (any order; overlapping intervals are merged; clipped to
    [0, ``duration``]). ``min_silence``: the shortest silence that ends an IPU; ``backchannel_max``: a
    backchannel-like IPU is shorter than this.
    """
    if len(speech) != 2:
        raise ValueError(f"turn-taking needs two speakers' speech intervals, got {len(speech)}")
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a positive number of seconds, got {duration}")
    if min_silence < 0 or backchannel_max < 0:
        raise ValueError(f"min_silence and backchannel_max must be >= 0, got {min_silence} and {backchannel_max}")
    voiced = (normalize(speech[0], duration), normalize(speech[1], duration))
    units = (ipus(voiced[0], min_silence), ipus(voiced[1], min_silence))
    overlaps = intersect(*units)
    # Joint silences: walk the IPUs of both speakers by time, keeping the end of the speech so far.
    events = sorted((s, e, k) for k in range(2) for s, e in units[k])
    pauses: list[Interval] = []
    gaps: list[Interval] = []
    covered_end = -math.inf
    enders: set[int] = set()  # speakers whose IPU ends at covered_end
    for start, end, speaker in events:
        if start > covered_end and enders:
            starters = {k for s, _, k in events if s == start}
            (pauses if enders & starters else gaps).append((covered_end, start))
        if end > covered_end:
            covered_end, enders = end, {speaker}
        elif end == covered_end:
            enders.add(speaker)
    backchannels = tuple(
        [u for u in units[k] if u[1] - u[0] < backchannel_max and _within(u, units[1 - k])] for k in range(2)
    )
    floor = sorted((u[0], k) for k in range(2) for u in units[k] if u not in backchannels[k])
    turns = [0, 0]
    previous = None
    for _, speaker in floor:
        if speaker != previous:
            turns[speaker] += 1
            previous = speaker
    return Turns(
        duration=float(duration), min_silence=float(min_silence), backchannel_max=float(backchannel_max),
        speech=voiced, ipus=units, pauses=pauses, gaps=gaps, overlaps=overlaps,
        backchannels=(backchannels[0], backchannels[1]), turns=(turns[0], turns[1]),
    )


def event_stats(durations: Sequence[float], minutes_of: float) -> dict[str, Any]:
    """``count``, ``per_min``, ``sec_per_min``, ``mean`` (None when empty) and ``durations`` of events, over a
    conversation time of ``minutes_of`` seconds."""
    minutes = minutes_of / 60.0
    total = float(sum(durations))
    return {
        "count": len(durations),
        "per_min": _round(len(durations) / minutes),
        "sec_per_min": _round(total / minutes),
        "mean": _round(total / len(durations)) if durations else None,
        "durations": [_round(d) for d in durations],
    }


def pooled(results: Sequence[Turns]) -> dict[str, Any]:
    """Statistics over several conversations: durations concatenated, counts summed, per-minute values over the
    total duration; the same keys as :meth:`Turns.summary` (``files`` added)."""
    if not results:
        raise ValueError("nothing to pool: no conversation was analysed")
    total = sum(r.duration for r in results)
    out: dict[str, Any] = {"files": len(results), "duration": _round(total)}
    for kind in EVENTS:
        out[kind] = event_stats([e - s for r in results for s, e in r.events(kind)], total)
    out["speakers"] = [
        {
            "speech_sec": _round(sum(e - s for r in results for s, e in r.speech[k])),
            "ipu_sec": _round(sum(e - s for r in results for s, e in r.ipus[k])),
            "ipu_count": sum(len(r.ipus[k]) for r in results),
            "turns": sum(r.turns[k] for r in results),
            "backchannel": event_stats([e - s for r in results for s, e in r.backchannels[k]], total),
        }
        for k in range(2)
    ]
    return out


def _round(x: float) -> float:
    """Seconds to the microsecond: keeps JSON short without losing anything a VAD can resolve."""
    return round(float(x), 6)
