"""Latency statistics of conversations with a live server (see ``fullduplex eval latency``).

Two kinds, both on the client's timeline (the server's audio placed where a player would play it):

- **frame latency**: per 80 ms input frame, the time from sending it to receiving the server's audio for it
  (measured by :func:`fullduplex.cli.client.converse`): network, queueing, model step and codec.
- **response latency**: per end of the user's speech (the end of an IPU of the input, found by VAD), the time until
  the server's reply is active (VAD or level on its audio), looking no further than the user's next IPU (or the
  end of the input). 0 when the reply is already active when the user stops (counted as ``already_speaking``);
  None when the reply stays silent until then (``no_response``).

    responses = response_latencies(user_speech, reply_speech, duration, min_silence=0.2)
    summary(latencies_in_seconds)      # {"n", "mean", "p50", "p90", "p95", "p99", "max"} in milliseconds
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .turns import ipus, normalize


def summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Count, mean, nearest-rank percentiles p50/p90/p95/p99 and max of ``seconds``, in milliseconds (None when
    empty)."""
    ordered = sorted(float(s) for s in seconds)

    def rank(q: float) -> float | None:
        return round(1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3) if ordered else None

    return {
        "n": len(ordered), "mean": round(1000 * sum(ordered) / len(ordered), 3) if ordered else None,
        "p50": rank(0.5), "p90": rank(0.9), "p95": rank(0.95), "p99": rank(0.99),
        "max": round(1000 * ordered[-1], 3) if ordered else None,
    }


def response_latencies(
    user_speech: Sequence[Sequence[float]], reply_speech: Sequence[Sequence[float]], duration: float,
    min_silence: float = 0.2,
) -> list[dict[str, Any]]:
    """One entry per user IPU (``min_silence`` merges the user's speech into IPUs): ``user_end`` (s),
    ``latency`` (s, or None: no response before the user spoke again or the input ended) and
    ``already_speaking`` (the reply was active when the user stopped)."""
    users = ipus(normalize(user_speech, duration), min_silence)
    replies = normalize(reply_speech, duration)
    out = []
    for i, (_, end) in enumerate(users):
        horizon = users[i + 1][0] if i + 1 < len(users) else duration
        active = any(s <= end < e for s, e in replies)
        onset = next((s for s, _ in replies if end <= s < horizon), None)
        latency = 0.0 if active else (None if onset is None else onset - end)
        out.append({"user_end": round(end, 6), "latency": None if latency is None else round(latency, 6),
                    "already_speaking": active})
    return out


def response_summary(responses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`summary` of the measured response latencies, plus ``user_turns``, ``no_response`` and
    ``already_speaking`` counts."""
    measured = [r["latency"] for r in responses if r["latency"] is not None]
    return {**summary(measured), "user_turns": len(responses), "no_response": len(responses) - len(measured),
            "already_speaking": sum(bool(r["already_speaking"]) for r in responses)}

