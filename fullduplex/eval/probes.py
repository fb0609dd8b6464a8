"""Behaviour probes: the user's side of a test conversation, built from speech clips placed at known times.

    clip = Clip("hello.wav", trimmed, 24000)                   # float32 [S], cut to its voiced span
    probe = pause_probe(clip, pause=1.2, timing=Timing())
    probe.audio                                                # [S'] at 24 kHz: what the model hears
    probe.user                                                 # [(start, end), ...] s: the user's speech
    probe.times                                                # {"pause_start": 2.06, "pause_end": 3.26, ...}

Four kinds (see ``docs/evaluation.md``, "Behaviour probes"); every probe starts with ``timing.lead`` seconds of
silence and all times are seconds from the start of the probe:

- ``pause``: the clip, split near its middle at its quietest 20 ms, with ``pause`` seconds of silence inserted;
  then ``timing.listen`` seconds of silence. Keys ``pause_start``, ``pause_end``, ``user_end``.
- ``turn-end``: the whole clip, then ``timing.listen`` seconds of silence. Key ``user_end``.
- ``interrupt``: first a *prompt* (the clip, then ``timing.listen`` seconds of silence, key ``prompt_end``); once
  the model's answer to the prompt is known, :func:`interrupt_probe` adds a second clip starting at ``onset``,
  inside that answer. Keys ``prompt_end``, ``onset``, ``user_end`` (end of the interrupting clip).
- ``backchannel``: a monologue of clips separated by ``timing.monologue_gap`` seconds of silence, at least
  ``timing.monologue`` seconds long, then 1 s of silence. Keys ``floor_start``, ``floor_end``.

Everything here is pure (numpy in, numpy out); the voiced span of a clip is found by the caller (VAD).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .turns import Interval

KINDS = ("pause", "turn-end", "interrupt", "backchannel")
SPLIT_WINDOW = 0.02  # seconds: the window whose RMS picks the split point of a pause probe
BACKCHANNEL_TAIL = 1.0  # seconds of silence after a monologue


@dataclass(frozen=True)
class Timing:
    """Where the probes put speech and silence (seconds)."""

    lead: float = 1.0  # silence before the user's first word
    pause: tuple[float, float] = (1.0, 1.5)  # pause probes: silence lengths, spread evenly over the repeats
    listen: float = 4.0  # silence after the user's last word (turn-end, pause, interrupt prompt and probe)
    interrupt_after: float = 0.5  # interrupt: the user starts this long after the model's answer starts
    monologue: float = 20.0  # backchannel: the user's monologue lasts at least this long
    monologue_gap: float = 0.5  # backchannel: silence between the monologue's clips (phrase breaks)

    def __post_init__(self) -> None:
        low, high = self.pause
        if not 0 < low <= high:
            raise ValueError(f"pause lengths must satisfy 0 < min <= max, got {low} and {high}")
        for name in ("lead", "listen", "interrupt_after", "monologue", "monologue_gap"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")

    def pause_length(self, index: int, repeats: int) -> float:
        """The pause of the ``index``-th of ``repeats`` pause probes: evenly spaced over ``pause``."""
        low, high = self.pause
        return low if repeats <= 1 else low + (high - low) * index / (repeats - 1)


@dataclass(frozen=True)
class Clip:
    """One speech recording, mono float32 [S] at ``rate``, trimmed to its voiced span (first to last speech)."""

    name: str
    audio: np.ndarray
    rate: int

    @property
    def duration(self) -> float:
        return len(self.audio) / self.rate


@dataclass(frozen=True)
class Probe:
    """The user's side of one probe: ``audio`` float32 [S] at ``rate``, the user's speech spans ``user`` (the
    placed clips' voiced spans, seconds) and the probe's key ``times`` (seconds; see the module docstring)."""

    kind: str
    index: int
    audio: np.ndarray
    rate: int
    user: list[Interval]
    times: dict[str, float]
    sources: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.rate


def trim(wav: np.ndarray, rate: int, speech: Sequence[Interval]) -> np.ndarray:
    """``wav`` [S] cut to the span from the first speech interval's start to the last one's end (seconds)."""
    if not speech:
        raise ValueError("no speech interval to trim to")
    start, end = round(speech[0][0] * rate), round(speech[-1][1] * rate)
    return np.asarray(wav[start:end], dtype=np.float32)


def split_point(wav: np.ndarray, rate: int) -> int:
    """Where to cut ``wav`` [S] for a pause mid-sentence: the centre (sample index) of the quietest
    ``SPLIT_WINDOW`` window whose centre lies in the middle third of the clip (between words, if there is a
    gap there)."""
    hop = max(1, round(SPLIT_WINDOW * rate))
    lo, hi = len(wav) // 3, 2 * len(wav) // 3
    starts = range(max(0, lo - hop // 2), max(1, hi - hop // 2), max(1, hop // 4))
    energy = [float(np.mean(np.square(wav[s : s + hop], dtype=np.float64))) if s < len(wav) else 0.0
              for s in starts]
    best = starts[int(np.argmin(energy))]
    return min(max(best + hop // 2, 1), len(wav) - 1)


def _silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def _assemble(parts: Sequence[tuple[np.ndarray, bool]], rate: int) -> tuple[np.ndarray, list[Interval]]:
    """Concatenate ``(audio, is_speech)`` parts; the spans (seconds, from sample positions) of the speech parts."""
    spans, position = [], 0
    for audio, is_speech in parts:
        if is_speech:
            spans.append((position / rate, (position + len(audio)) / rate))
        position += len(audio)
    return np.concatenate([a for a, _ in parts]).astype(np.float32), spans


def pause_probe(clip: Clip, pause: float, timing: Timing, index: int = 0) -> Probe:
    """The clip split mid-sentence with ``pause`` seconds of silence inside (see the module docstring)."""
    cut = split_point(clip.audio, clip.rate)
    audio, user = _assemble([(_silence(timing.lead, clip.rate), False), (clip.audio[:cut], True),
                             (_silence(pause, clip.rate), False), (clip.audio[cut:], True),
                             (_silence(timing.listen, clip.rate), False)], clip.rate)
    times = {"pause_start": user[0][1], "pause_end": user[1][0], "user_end": user[1][1]}
    return Probe("pause", index, audio, clip.rate, user, times, [clip.name])


def turn_end_probe(clip: Clip, timing: Timing, index: int = 0) -> Probe:
    """The whole clip, then silence: how soon does the model answer?"""
    audio, user = _assemble([(_silence(timing.lead, clip.rate), False), (clip.audio, True),
                             (_silence(timing.listen, clip.rate), False)], clip.rate)
    return Probe("turn-end", index, audio, clip.rate, user, {"user_end": user[0][1]}, [clip.name])


def interrupt_prompt(clip: Clip, timing: Timing, index: int = 0) -> Probe:
    """The first half of an interrupt probe: the clip, then silence while the model answers."""
    audio, user = _assemble([(_silence(timing.lead, clip.rate), False), (clip.audio, True),
                             (_silence(timing.listen, clip.rate), False)], clip.rate)
    return Probe("interrupt", index, audio, clip.rate, user, {"prompt_end": user[0][1]}, [clip.name])


def interrupt_probe(prompt: Probe, clip: Clip, onset: float, timing: Timing) -> Probe:
    """``prompt`` with ``clip`` spoken from ``onset`` seconds (rounded to a sample), then ``timing.listen``
    seconds of silence. The audio before ``onset`` is the prompt's, so a causal model answers it as before."""
    if clip.rate != prompt.rate:
        raise ValueError(f"the clip is at {clip.rate} Hz but the prompt at {prompt.rate} Hz")
    start = round(onset * prompt.rate)
    if start < round(prompt.times["prompt_end"] * prompt.rate):
        raise ValueError(f"the interruption at {onset:.3f} s starts before the prompt ends "
                         f"({prompt.times['prompt_end']:.3f} s)")
    head = np.zeros(start, dtype=np.float32)
    head[: min(start, len(prompt.audio))] = prompt.audio[:start]
    audio, spans = _assemble([(head, False), (clip.audio, True), (_silence(timing.listen, prompt.rate), False)],
                             prompt.rate)
    times = {"prompt_end": prompt.times["prompt_end"], "onset": spans[0][0], "user_end": spans[0][1]}
    return Probe("interrupt", prompt.index, audio, prompt.rate, [*prompt.user, *spans], times,
                 [*prompt.sources, clip.name])


def backchannel_probe(clips: Sequence[Clip], timing: Timing, index: int = 0) -> Probe:
    """A monologue: ``clips`` in turn (cycled, starting with the ``index``-th) separated by phrase breaks, until
    it lasts ``timing.monologue`` seconds (at least one clip)."""
    if not clips:
        raise ValueError("a monologue needs at least one clip")
    rate = clips[0].rate
    parts: list[tuple[np.ndarray, bool]] = [(_silence(timing.lead, rate), False)]
    spoken, k, names = 0.0, index, []
    while True:
        clip = clips[k % len(clips)]
        parts.append((clip.audio, True))
        names.append(clip.name)
        spoken += clip.duration
        k += 1
        if spoken >= timing.monologue:
            break
        parts.append((_silence(timing.monologue_gap, rate), False))
        spoken += timing.monologue_gap
    parts.append((_silence(BACKCHANNEL_TAIL, rate), False))
    audio, user = _assemble(parts, rate)
    times = {"floor_start": user[0][0], "floor_end": user[-1][1]}
    return Probe("backchannel", index, audio, rate, user, times, names)
