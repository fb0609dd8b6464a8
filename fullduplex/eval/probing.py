"""Run behaviour probes through a model and score them (``fullduplex eval behaviour``).

    clips = [load_clip("hello.wav", 24000, vad)]
    respond = model_responder(mimi, lm, tokenizer, Sampling(seed=4242))      # as `fullduplex generate` runs
    results = run_probes(clips, KINDS, repeats=4, timing=Timing(), rules=Rules(), vad=vad, respond=respond)
    results["turn-end"][0].score                                             # {"responded": True, ...}

A *responder* maps the user's side of each probe (float32 [S] at the clips' rate) to the model's channel as it
would be played (float32 [S], same length); :func:`model_responder` runs the model offline exactly as
``fullduplex generate`` does, frame by frame. Tests pass scripted responders.

Interrupt probes take two passes: the prompt alone, to find when the model answers it, then the prompt with the
interruption placed inside that answer. Generation is causal and each pass runs the same batches from the same
seed, so the model's audio before the interruption is the same in both passes (checked: ``prefix_max_diff``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..codec.audio import read_audio, resample
from ..errors import AudioError
from ..text.tokenizer import Word
from .asr import ASR_RATE, Transcriber
from .behaviour import SCORERS, Rules, interrupt_onset
from .probes import (
    KINDS,
    Clip,
    Probe,
    Timing,
    backchannel_probe,
    interrupt_probe,
    interrupt_prompt,
    pause_probe,
    trim,
    turn_end_probe,
)
from .turns import Interval, ipus, normalize
from .vad import VadSettings, speech_intervals

Respond = Callable[[list[np.ndarray]], list[np.ndarray]]
MIN_CLIP = 0.4  # seconds of voiced speech a clip needs (a pause probe splits it in two)
PREFIX_TOLERANCE = 1e-4


@dataclass
class Instance:
    """One probe run through the model: its input, the model's channel [S] and speech, the score."""

    probe: Probe
    model: np.ndarray
    speech: list[Interval]  # the model's VAD speech, seconds
    ipus: list[Interval]  # merged with rules.min_silence
    words: list[Word] | None
    score: dict[str, Any]
    prefix_max_diff: float | None = None  # interrupt: model audio before the onset, pass 2 vs pass 1


def load_clip(path: str | os.PathLike[str], rate: int, vad: VadSettings) -> Clip:
    """A speech file as a :class:`Clip` (mono at ``rate``, stereo mixed down) trimmed to its voiced span by
    ``vad``; :class:`AudioError` for an unreadable or silent file, or one without (enough) speech."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a stereo recording mixed down to mono: fine for a probe
        wav = read_audio(path, rate)[0]  # [S]
    if not float(wav.abs().max()) > 0:
        raise AudioError(f"speech file {path} is silent (every sample is 0); give a recording of speech")
    speech = speech_intervals(resample(wav[None], rate, vad.sample_rate)[0].numpy(), vad)
    if not speech:
        raise AudioError(f"speech file {path}: the {vad.method} VAD found no speech in it; give a recording of "
                         "speech (or another --vad)")
    clip = trim(wav.numpy(), rate, speech)
    if len(clip) < MIN_CLIP * rate:
        raise AudioError(f"speech file {path} holds only {len(clip) / rate:.2f} s of speech; probes need at least "
                         f"{MIN_CLIP} s")
    return Clip(str(path), clip, rate)


def model_responder(mimi: Any, lm: Any, tokenizer: Any, sampling: Any, batch_size: int = 8,
                    progress: Callable[[int], None] | None = None, prompt: Any = None) -> Respond:
    """A responder running :func:`~fullduplex.inference.offline.generate` (call ``check_models`` first);
    ``prompt``: a persona's forced frames (:func:`~fullduplex.inference.prompt.build_schedule`) stepped before
    each probe."""
    from ..inference.offline import generate

    def respond(inputs: list[np.ndarray]) -> list[np.ndarray]:
        wavs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None] for x in inputs]  # [1, S] each
        results = generate(wavs, mimi, lm, tokenizer, sampling, batch_size, progress, prompt)
        return [r.audio[0].numpy() for r in results]  # row 0: the model as played

    return respond


def model_speech(model: np.ndarray, rate: int, vad: VadSettings) -> list[Interval]:
    """VAD speech intervals (seconds) of the model's channel ``model`` [S] at ``rate``."""
    wav = resample(torch.from_numpy(np.ascontiguousarray(model, dtype=np.float32))[None], rate, vad.sample_rate)
    return speech_intervals(wav[0].numpy(), vad)


def build_probes(clips: Sequence[Clip], kinds: Sequence[str], repeats: int, timing: Timing) -> dict[str, list[Probe]]:
    """The probes of every kind but ``interrupt`` (built later, in two passes): ``repeats`` each, the i-th from
    clip ``i % len(clips)`` (a monologue starts there)."""
    n = len(clips)
    out: dict[str, list[Probe]] = {}
    if "pause" in kinds:
        out["pause"] = [pause_probe(clips[i % n], timing.pause_length(i, repeats), timing, i) for i in range(repeats)]
    if "turn-end" in kinds:
        out["turn-end"] = [turn_end_probe(clips[i % n], timing, i) for i in range(repeats)]
    if "backchannel" in kinds:
        out["backchannel"] = [backchannel_probe(clips, timing, i) for i in range(repeats)]
    return out


def run_probes(
    clips: Sequence[Clip], kinds: Sequence[str], repeats: int, timing: Timing, rules: Rules, vad: VadSettings,
    respond: Respond, transcriber: Transcriber | None = None,
) -> dict[str, list[Instance]]:
    """Build, run and score ``repeats`` probes of each of ``kinds`` (in :data:`KINDS` order)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown probe kind {unknown[0]!r}" if unknown else "no probe kind given")
    if not clips:
        raise ValueError("probes need at least one speech clip")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    rate = clips[0].rate

    def analyse(probe: Probe, model: np.ndarray) -> tuple[list[Interval], list[Interval], list[Word] | None]:
        speech = model_speech(model, rate, vad)
        merged = ipus(normalize(speech, probe.duration), rules.min_silence)
        words = None
        if transcriber is not None:
            audio16 = resample(torch.from_numpy(np.ascontiguousarray(model))[None], rate, ASR_RATE)[0].numpy()
            words = transcriber(audio16, ASR_RATE)
        return speech, merged, words

    results: dict[str, list[Instance]] = {}
    probes = build_probes(clips, kinds, repeats, timing)
    flat = [p for k in KINDS for p in probes.get(k, [])]
    if flat:
        for probe, model in zip(flat, respond([p.audio for p in flat]), strict=True):
            speech, merged, words = analyse(probe, model)
            score = SCORERS[probe.kind](probe.times, merged, rules, words)
            results.setdefault(probe.kind, []).append(Instance(probe, model, speech, merged, words, score))
    if "interrupt" in kinds:
        results["interrupt"] = _interrupts(clips, repeats, timing, rules, respond, analyse)
    return {k: results[k] for k in KINDS if k in results}


def _interrupts(clips: Sequence[Clip], repeats: int, timing: Timing, rules: Rules, respond: Respond,
                analyse: Callable[[Probe, np.ndarray], Any]) -> list[Instance]:
    n = len(clips)
    prompts = [interrupt_prompt(clips[i % n], timing, i) for i in range(repeats)]
    first = respond([p.audio for p in prompts])
    onsets = [interrupt_onset(analyse(p, m)[1], p.times["prompt_end"], timing.interrupt_after)
              for p, m in zip(prompts, first, strict=True)]
    full = [p if t is None else interrupt_probe(p, clips[(p.index + 1) % n], t, timing)
            for p, t in zip(prompts, onsets, strict=True)]
    second = respond([p.audio for p in full])  # the same batches as the first pass: same draws, same prefix
    out = []
    for probe, model, before in zip(full, second, first, strict=True):
        speech, merged, words = analyse(probe, model)
        if "onset" not in probe.times:
            score = {"applicable": False, "stopped": None, "stop_latency": None, "model_end": None,
                     "responded": None, "response_latency": None,
                     "reason": f"the model did not speak for {timing.interrupt_after:g} s + 0.3 s after the prompt"}
            out.append(Instance(probe, model, speech, merged, words, score))
            continue
        cut = round(probe.times["onset"] * probe.rate)
        diff = float(np.abs(model[:cut] - before[:cut]).max()) if cut else 0.0
        if diff > PREFIX_TOLERANCE:
            warnings.warn(f"interrupt probe {probe.index}: the model's audio before the interruption differs "
                          f"between the two passes (max {diff:.3g}); generation is not deterministic here",
                          stacklevel=1)
        score = SCORERS["interrupt"](probe.times, merged, rules, words)
        if not score["applicable"]:
            score["reason"] = "the model was not speaking at the interruption's onset"
        out.append(Instance(probe, model, speech, merged, words, score, round(diff, 9)))
    return out
