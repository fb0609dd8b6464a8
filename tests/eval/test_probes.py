"""Behaviour probes: inputs built at known times, and the whole probe run (VAD on the model's channel, ASR words,
scoring) with a scripted "model" whose behaviour is known, so every score has a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from fullduplex.errors import AudioError
from fullduplex.eval.behaviour import Rules
from fullduplex.eval.probes import (
    Clip,
    Timing,
    backchannel_probe,
    interrupt_probe,
    interrupt_prompt,
    pause_probe,
    split_point,
    turn_end_probe,
)
from fullduplex.eval.probing import load_clip, run_probes
from fullduplex.eval.vad import VadSettings
from fullduplex.text.tokenizer import Word
from tests.eval.conftest import write_wav
from tests.helpers import ASSETS

RATE = 24000
TIMING = Timing(lead=1.0, pause=(1.2, 1.2), listen=4.0, interrupt_after=0.5, monologue=5.0, monologue_gap=0.5)
LEVEL = VadSettings("level")


def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def voiced(audio: np.ndarray) -> list[float]:
    """Exact non-zero spans of a constructed input, flattened: [start, end, start, end, ...] seconds."""
    flags = np.concatenate([[False], audio != 0, [False]])
    return list(np.flatnonzero(np.diff(flags.astype(np.int8))) / RATE)


def flat(intervals) -> list[float]:
    return [x for iv in intervals for x in iv]


# --- construction -----------------------------------------------------------------------------------------------
def test_split_point_falls_in_the_gap_between_words():
    word = tone(0.6)
    clip = np.concatenate([word, np.zeros(int(0.1 * RATE), np.float32), word, word[: int(0.2 * RATE)]])
    cut = split_point(clip, RATE)  # the 0.1 s gap at 0.6-0.7 s lies in the middle third (0.5-1.0 s)
    assert 0.6 * RATE <= cut <= 0.7 * RATE


def test_probes_put_speech_at_known_times():
    clip = Clip("a.wav", tone(2.0), RATE)
    p = pause_probe(clip, 1.2, TIMING)
    cut = split_point(clip.audio, RATE) / RATE
    assert p.times == pytest.approx({"pause_start": 1.0 + cut, "pause_end": 2.2 + cut, "user_end": 4.2})
    assert p.duration == pytest.approx(8.2) and flat(p.user) == pytest.approx([1.0, 1.0 + cut, 2.2 + cut, 4.2])
    assert voiced(p.audio) == pytest.approx(flat(p.user), abs=2 / RATE)  # a sine starts at 0

    t = turn_end_probe(clip, TIMING)
    assert t.times == pytest.approx({"user_end": 3.0}) and t.duration == pytest.approx(7.0)
    assert voiced(t.audio) == pytest.approx([1.0, 3.0], abs=2 / RATE)  # a sine starts at 0

    prompt = interrupt_prompt(clip, TIMING)
    full = interrupt_probe(prompt, Clip("b.wav", tone(1.5, 330.0), RATE), 3.9, TIMING)
    assert full.times == pytest.approx({"prompt_end": 3.0, "onset": 3.9, "user_end": 5.4})
    assert np.array_equal(full.audio[: int(3.9 * RATE)], prompt.audio[: int(3.9 * RATE)])
    assert voiced(full.audio) == pytest.approx([1.0, 3.0, 3.9, 5.4], abs=2 / RATE)  # a sine starts at 0
    assert full.sources == ["a.wav", "b.wav"] and full.duration == pytest.approx(9.4)
    with pytest.raises(ValueError, match="before the prompt ends"):
        interrupt_probe(prompt, clip, 2.5, TIMING)

    b = backchannel_probe([clip, Clip("b.wav", tone(1.5), RATE)], TIMING, index=1)  # starts with b: 1.5+.5+2+.5+1.5
    assert flat(b.user) == pytest.approx([1.0, 2.5, 3.0, 5.0, 5.5, 7.0])
    assert b.times == pytest.approx({"floor_start": 1.0, "floor_end": 7.0}) and b.duration == pytest.approx(8.0)
    assert b.sources == ["b.wav", "a.wav", "b.wav"]


def test_pause_lengths_spread_over_repeats():
    t = Timing(pause=(1.0, 1.5))
    assert [t.pause_length(i, 3) for i in range(3)] == pytest.approx([1.0, 1.25, 1.5])
    assert t.pause_length(0, 1) == 1.0
    with pytest.raises(ValueError, match="pause lengths"):
        Timing(pause=(1.5, 1.0))


def test_load_clip_trims_and_refuses_bad_speech(tmp_path):
    clip = load_clip(ASSETS / "speech_en.wav", RATE, LEVEL)  # level VAD: voiced 0.03-2.16 s of 2.5 s
    assert clip.duration == pytest.approx(2.13, abs=0.011)
    stereo = np.stack([tone(1.0), tone(1.0)])
    assert load_clip(write_wav(tmp_path / "stereo.wav", stereo), RATE, LEVEL).duration == pytest.approx(1.0, abs=0.03)
    with pytest.raises(AudioError, match="silent"):
        load_clip(write_wav(tmp_path / "zero.wav", np.zeros(RATE)), RATE, LEVEL)
    with pytest.raises(AudioError, match="found no speech"):
        load_clip(write_wav(tmp_path / "hiss.wav", np.full(RATE, 1e-4)), RATE, LEVEL)
    with pytest.raises(AudioError, match=r"only 0\.2\d s of speech; probes need at least 0.4 s"):
        load_clip(write_wav(tmp_path / "blip.wav", np.concatenate([tone(0.2), np.zeros(RATE)])), RATE, LEVEL)
    with pytest.raises(AudioError, match="not found"):
        load_clip(tmp_path / "missing.wav", RATE, LEVEL)


# --- a scripted model: known behaviour, known scores --------------------------------------------------------------
def polite(user: np.ndarray) -> np.ndarray:
    """A causal scripted "model" in 10 ms frames: after 0.4 s of silence that follows user speech it talks for
    2 s (a 440 Hz tone); while it talks, 0.3 s of user speech makes it stop."""
    hop = RATE // 100
    out = np.zeros_like(user)
    talking_left, heard, silence, overlap = 0, False, 0, 0
    for f in range(len(user) // hop):
        active = np.sqrt(np.mean(user[f * hop : (f + 1) * hop] ** 2)) > 0.01
        silence = 0 if active else silence + 1
        heard = heard or active
        if talking_left:
            overlap = overlap + 1 if active else 0
            if overlap >= 30:
                talking_left, overlap = 0, 0
        elif heard and silence >= 40:
            talking_left, heard = 200, False
        if talking_left:
            out[f * hop : (f + 1) * hop] = tone(0.01, 440.0)
            talking_left -= 1
    return out


def scripted(inputs: list[np.ndarray]) -> list[np.ndarray]:
    return [polite(x) for x in inputs]


def test_scripted_model_gets_the_known_scores():
    clips = [Clip("a.wav", tone(2.0), RATE)]
    results = run_probes(clips, ["pause", "turn-end", "interrupt", "backchannel"], 1, TIMING, Rules(), LEVEL,
                         scripted)
    assert list(results) == ["pause", "turn-end", "interrupt", "backchannel"]
    tol = 0.05  # a 30 ms VAD frame and the 10 ms script frame
    # Pause: the model starts 0.4 s into the 1.2 s pause, the user resumes 0.8 s later, it stops 0.3 s after
    # that: a 1.1 s IPU inside the pause -> takeover.
    pause = results["pause"][0]
    assert pause.score["takeover"] is True and pause.score["detail"]["latency"] == pytest.approx(0.4, abs=tol)
    assert pause.score["speech_in_pause"] == pytest.approx(0.8, abs=tol)
    # Turn end: answers 0.4 s after the user stops.
    turn = results["turn-end"][0].score
    assert turn["responded"] and turn["latency"] == pytest.approx(0.4, abs=tol) and not turn["already_speaking"]
    # Interrupt: answer 3.4-5.4 s in the first pass -> the user starts at 3.9 s; the model stops 0.3 s later and
    # answers again 0.4 s after the interruption ends; its audio before 3.9 s is the same in both passes.
    inter = results["interrupt"][0]
    assert inter.probe.times["onset"] == pytest.approx(3.9, abs=tol)
    assert inter.score["applicable"] and inter.score["stopped"]
    assert inter.score["stop_latency"] == pytest.approx(0.3, abs=tol)
    assert inter.score["responded"] and inter.score["response_latency"] == pytest.approx(0.4, abs=tol)
    assert inter.prefix_max_diff == 0.0
    # Backchannel: three 2 s clips with two 0.5 s breaks; in each break the model starts after 0.4 s and stops
    # 0.3 s after the user resumes: two 0.4 s backchannels over a 7 s floor.
    back = results["backchannel"][0].score
    assert back["backchannels"] == 2 and back["per_min"] == pytest.approx(2 / (7 / 60), rel=1e-4)
    assert back["durations"] == pytest.approx([0.4, 0.4], abs=tol) and back["takeover"] is False


def test_silent_model_and_a_fake_transcriber():
    calls = []

    def transcriber(audio: np.ndarray, rate: int) -> list[Word]:
        calls.append((len(audio), rate))
        return []

    clips = [Clip("a.wav", tone(2.0), RATE), Clip("b.wav", tone(1.0), RATE)]
    silent = run_probes(clips, ["turn-end", "interrupt"], 2, TIMING, Rules(), LEVEL,
                        lambda xs: [np.zeros_like(x) for x in xs], transcriber)
    assert [i.score["responded"] for i in silent["turn-end"]] == [False, False]
    assert [i.probe.sources for i in silent["turn-end"]] == [["a.wav"], ["b.wav"]]
    assert all(not i.score["applicable"] and "did not speak" in i.score["reason"] for i in silent["interrupt"])
    # The transcriber hears every model channel at 16 kHz (2 turn-end + 2 interrupt prompts twice).
    assert len(calls) == 6 and all(rate == 16000 for _, rate in calls)
    assert calls[0][0] == round(7.0 * 16000)


def test_scripted_model_with_words():
    """Word rules through the whole run: a transcriber that hears one word per 0.25 s of the model's tone."""

    def transcriber(audio: np.ndarray, rate: int) -> list[Word]:
        hop = rate // 4
        return [Word("la", i * hop / rate, (i + 1) * hop / rate) for i in range(len(audio) // hop)
                if np.abs(audio[i * hop : (i + 1) * hop]).max() > 0.05]

    clips = [Clip("a.wav", tone(2.0), RATE)]
    results = run_probes(clips, ["turn-end", "backchannel"], 1, TIMING, Rules(), LEVEL, scripted, transcriber)
    turn = results["turn-end"][0]
    assert turn.words and turn.score["responded"] and turn.score["detail"]["words"] >= 4
    # Each 0.4 s backchannel touches two or three 0.25 s "words": two words -> backchannel, three -> not.
    back = results["backchannel"][0].score
    assert back["backchannels"] <= 2


def test_run_probes_refuses_bad_arguments():
    clips = [Clip("a.wav", tone(2.0), RATE)]
    with pytest.raises(ValueError, match="unknown probe kind"):
        run_probes(clips, ["laugh"], 1, TIMING, Rules(), LEVEL, scripted)
    with pytest.raises(ValueError, match="repeats"):
        run_probes(clips, ["pause"], 0, TIMING, Rules(), LEVEL, scripted)
