"""Scoring behaviour probes: from the probe's key times and the model's speech, did it take the turn, how fast did
it answer, did it stop when interrupted, how often did it backchannel. Pure functions, no audio.

    model = ipus(normalize(vad_intervals, duration), rules.min_silence)      # the model's IPUs, seconds
    score_pause(probe.times, model, rules)                # {"takeover": False, "speech_in_pause": 0.0, ...}
    score_turn_end(probe.times, model, rules)             # {"responded": True, "latency": 0.42, ...}
    score_interrupt(probe.times, model, rules)            # {"stopped": True, "stop_latency": 0.31, ...}
    score_backchannel(probe.times, model, rules)          # {"backchannels": 3, "per_min": 9.0, ...}
    summarise("turn-end", [score, ...])                   # rates and latency percentiles

Definitions (Full-Duplex-Bench v1 where it gives them; ``docs/evaluation.md``, "Behaviour probes"):

- The model's **IPUs**: its VAD speech merged across silences shorter than ``rules.min_silence``.
- **Takeover** in a window [start, end): with VAD only, the model takes the turn when one of its IPUs overlaps the
  window and lasts at least ``rules.takeover_min`` seconds from the window's start (or from its own start, if
  later; it may run past the window's end). With words (ASR): the model's words overlapping the window, extended
  by the words that follow them without a silence of ``min_silence``; no words → no takeover; a span shorter than
  ``takeover_min`` with at most ``takeover_words`` words → no takeover; otherwise takeover (FDB's TOR rule).
- **Latency** of a takeover: its onset (IPU start or first word start) minus the window's start, clipped at 0 as
  FDB does; ``raw_latency`` keeps the sign (negative: the model was already speaking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..text.tokenizer import Word
from .latency import summary
from .turns import Interval, analyse_turns, intersect


@dataclass(frozen=True)
class Rules:
    """Thresholds of the scoring (seconds, word counts); :meth:`describe` is what reports record."""

    min_silence: float = 0.2  # model IPUs: the shortest silence that ends one
    takeover_min: float = 1.0  # FDB: a response shorter than 1 s (and <= 3 words) does not take the turn
    takeover_words: int = 3
    response_window: float = 3.0  # turn-end / after an interruption: the answer must start within this
    backchannel_max: float = 1.0  # FDB: a backchannel is shorter than 1 s (and <= 2 words)
    backchannel_words: int = 2
    long_turn: float = 3.0  # backchannel probe: a model IPU this long (or > takeover_words words) takes over

    def __post_init__(self) -> None:
        for name in ("min_silence", "takeover_min", "response_window", "backchannel_max", "long_turn"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        if self.takeover_words < 0 or self.backchannel_words < 0:
            raise ValueError("word counts must be >= 0")

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _word_run(words: Sequence[Word], start: float, end: float, min_silence: float) -> list[Word]:
    """Words overlapping [start, end), extended by the words that follow the last of them with a silence shorter
    than ``min_silence``."""
    ordered = sorted(words, key=lambda w: w.start)
    first = next((i for i, w in enumerate(ordered) if w.end > start and w.start < end), None)
    if first is None:
        return []
    run = [ordered[first]]
    for w in ordered[first + 1 :]:
        if w.start < end or w.start - run[-1].end < min_silence:
            run.append(w)
        else:
            break
    return run


def takeover(model: Sequence[Interval], start: float, end: float, rules: Rules,
             words: Sequence[Word] | None = None) -> dict[str, Any]:
    """Did the model take the turn in [start, end)? (see the module docstring). Returns ``taken``, ``onset``
    (seconds, or None), ``latency`` (clipped at 0, None unless taken), ``raw_latency``, ``duration`` (seconds from
    the window's start, or the onset if later, to the end of the model speech considered) and ``words``
    (counted words, None without ASR)."""
    if words is None:
        candidates = [(s, e) for s, e in model if e > start and s < end]
        chosen = next(((s, e) for s, e in candidates if e - max(s, start) >= rules.takeover_min - 1e-9), None)
        taken = chosen is not None
        shown = chosen or (candidates[0] if candidates else None)
        onset = None if shown is None else shown[0]
        duration = 0.0 if shown is None else shown[1] - max(shown[0], start)
        count = None
    else:
        run = _word_run(words, start, end, rules.min_silence)
        onset = run[0].start if run else None
        duration = run[-1].end - max(run[0].start, start) if run else 0.0
        count = len(run)
        taken = bool(run) and not (run[-1].end - run[0].start < rules.takeover_min and count <= rules.takeover_words)
    raw = None if onset is None else onset - start
    return {"taken": taken, "onset": _r(onset), "latency": _r(max(raw, 0.0)) if taken and raw is not None else None,
            "raw_latency": _r(raw), "duration": _r(duration), "words": count}


def _inside(model: Sequence[Interval], start: float, end: float) -> float:
    return sum(e - s for s, e in intersect(list(model), [(start, end)])) if end > start else 0.0


def score_pause(times: dict[str, float], model: Sequence[Interval], rules: Rules,
                words: Sequence[Word] | None = None) -> dict[str, Any]:
    """Pause probe: ``takeover`` when the model takes the turn in the user's pause [pause_start, pause_end);
    ``speech_in_pause`` (seconds of model IPU inside the pause) and the takeover's details."""
    start, end = times["pause_start"], times["pause_end"]
    t = takeover(model, start, end, rules, words)
    return {"takeover": t["taken"], "speech_in_pause": _r(_inside(model, start, end)), "pause": _r(end - start),
            "detail": t}


def score_turn_end(times: dict[str, float], model: Sequence[Interval], rules: Rules,
                   words: Sequence[Word] | None = None) -> dict[str, Any]:
    """Turn-end probe: ``responded`` when the model takes the turn in [user_end, user_end + response_window);
    ``latency`` (seconds, None unless it responded), ``already_speaking`` (its answer started before the user
    finished)."""
    user_end = times["user_end"]
    t = takeover(model, user_end, user_end + rules.response_window, rules, words)
    return {"responded": t["taken"], "latency": t["latency"], "raw_latency": t["raw_latency"] if t["taken"] else None,
            "already_speaking": bool(t["taken"] and t["raw_latency"] < 0), "detail": t}


def interrupt_onset(model: Sequence[Interval], prompt_end: float, after: float, margin: float = 0.3) -> float | None:
    """Where to interrupt: ``after`` seconds into the first model IPU that is active after ``prompt_end`` (from
    ``prompt_end`` if it started earlier), provided the IPU goes on for ``margin`` more seconds; None when no IPU
    is long enough (the model did not answer the prompt)."""
    for s, e in model:
        onset = max(s, prompt_end) + after
        if e > prompt_end and onset + margin <= e:
            return onset
    return None


def score_interrupt(times: dict[str, float], model: Sequence[Interval], rules: Rules,
                    words: Sequence[Word] | None = None) -> dict[str, Any]:
    """Interrupt probe: the model IPU active at the user's ``onset`` must end while the user still speaks
    (before ``user_end``): ``stopped`` and ``stop_latency`` = its end − onset (None when it did not stop).
    ``applicable`` is False when the model was not speaking at the onset. ``responded`` / ``response_latency``:
    having stopped, the model takes the turn in [user_end, user_end + response_window)."""
    onset, user_end = times["onset"], times["user_end"]
    active = next(((s, e) for s, e in model if s <= onset < e), None)
    after = takeover(model, user_end, user_end + rules.response_window, rules, words)
    out: dict[str, Any] = {"applicable": active is not None, "stopped": None, "stop_latency": None,
                           "model_end": _r(active[1]) if active else None, "responded": after["taken"],
                           "response_latency": after["latency"], "detail": after}
    if active is not None:
        out["stopped"] = active[1] < user_end
        out["stop_latency"] = _r(active[1] - onset) if out["stopped"] else None
    if not out["stopped"]:  # talking on through the interruption is not answering it
        out["responded"], out["response_latency"] = False, None
    return out


def score_backchannel(times: dict[str, float], model: Sequence[Interval], rules: Rules,
                      words: Sequence[Word] | None = None) -> dict[str, Any]:
    """Backchannel probe: the user holds the floor [floor_start, floor_end). Backchannels are the model's
    backchannel-like IPUs (shorter than ``backchannel_max``, inside the floor: :func:`~fullduplex.eval.turns.
    analyse_turns`), with ASR also at most ``backchannel_words`` words. ``per_min``: per minute of floor.
    ``takeover``: a model IPU overlapping the floor lasts ``long_turn`` seconds or more (or holds more than
    ``takeover_words`` words)."""
    start, end = times["floor_start"], times["floor_end"]
    turns = analyse_turns([[(start, end)], list(model)], duration=max(end, *(e for _, e in model), 1e-9),
                          min_silence=0.0, backchannel_max=rules.backchannel_max)
    backchannels = list(turns.backchannels[1])
    during = [(s, e) for s, e in model if e > start and s < end]

    def count(iv: Interval) -> int:
        return sum(1 for w in words or () if w.end > iv[0] and w.start < iv[1])

    if words is not None:
        backchannels = [b for b in backchannels if count(b) <= rules.backchannel_words]
    long = [iv for iv in during
            if iv[1] - iv[0] >= rules.long_turn or (words is not None and count(iv) > rules.takeover_words)]
    minutes = (end - start) / 60
    return {"backchannels": len(backchannels), "per_min": _r(len(backchannels) / minutes) if minutes > 0 else None,
            "floor": _r(end - start), "durations": [_r(e - s) for s, e in backchannels],
            "intervals": [[_r(s), _r(e)] for s, e in backchannels], "takeover": bool(long),
            "speech_in_floor": _r(_inside(model, start, end))}


SCORERS = {"pause": score_pause, "turn-end": score_turn_end, "interrupt": score_interrupt,
           "backchannel": score_backchannel}


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 6) if flags else None


def summarise(kind: str, scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate one kind's scores: rates over the instances and latency percentiles (milliseconds, nearest rank,
    as :func:`~fullduplex.eval.latency.summary`)."""
    n = len(scores)
    if kind == "pause":
        onsets = [s["detail"]["latency"] for s in scores if s["takeover"]]
        return {"n": n, "takeovers": sum(s["takeover"] for s in scores),
                "takeover_rate": _rate([s["takeover"] for s in scores]), "takeover_onset_ms": summary(onsets),
                "speech_in_pause_mean": _r(sum(s["speech_in_pause"] for s in scores) / n) if n else None}
    if kind == "turn-end":
        return {"n": n, "responded": sum(s["responded"] for s in scores),
                "response_rate": _rate([s["responded"] for s in scores]),
                "already_speaking": sum(s["already_speaking"] for s in scores),
                "latency_ms": summary([s["latency"] for s in scores if s["responded"]])}
    if kind == "interrupt":
        done = [s for s in scores if s["applicable"]]
        return {"n": n, "applicable": len(done), "not_applicable": n - len(done),
                "stopped": sum(bool(s["stopped"]) for s in done), "did_not_stop": sum(not s["stopped"] for s in done),
                "stop_rate": _rate([bool(s["stopped"]) for s in done]),
                "stop_latency_ms": summary([s["stop_latency"] for s in done if s["stopped"]]),
                "response_rate": _rate([s["responded"] for s in done]),
                "response_latency_ms": summary([s["response_latency"] for s in done if s["responded"]])}
    if kind == "backchannel":
        floor = sum(s["floor"] for s in scores)
        count = sum(s["backchannels"] for s in scores)
        return {"n": n, "backchannels": count, "floor_sec": _r(floor),
                "per_min": _r(count / (floor / 60)) if floor > 0 else None,
                "takeover_rate": _rate([s["takeover"] for s in scores]),
                "durations": [d for s in scores for d in s["durations"]]}
    raise ValueError(f"unknown probe kind {kind!r}")
