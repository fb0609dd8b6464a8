"""Synthetic stereo conversations: scripted dialogues (:mod:`.dialogues`) spoken by two espeak-ng voices, one per
channel, with exact word timestamps, written in moshi-finetune's layout (:mod:`.formats`).

Every word is synthesised on its own, resampled to the output rate and trimmed to its speech: from the first to
the last sample whose level reaches :data:`SILENCE_LEVEL`, the end then extended (into the word's own quiet
tail) to a whole number of timing steps. Words are placed at chosen gaps on a grid of whole milliseconds (at
24 kHz: 24 samples), so the ``[start, end]`` written in the alignments (rounded to the millisecond) are exactly
the first and one-past-the-last sample of the word's audio; a channel is exactly silent between its words.

Timing rules (seconds; drawn per dialogue from the seed within :class:`SynthConfig`'s ranges):

- words of a turn follow each other after ``word_gap``; a pause inside a turn lasts ``pause``;
- a turn starts ``turn_gap`` after the previous turn ends, or — an overlap — ``overlap`` before it ends (at most
  80 % of the previous turn's last word, so both speakers are heard at once);
- a backchannel starts inside the scripted word of the other speaker's turn;
- a speaker never talks over themself: anything of theirs starts at least ``word_gap[0]`` after their last word
  (a backchannel that cannot fit is left out, and a turn starts later, which may undo a scripted overlap). The
  events returned are those that really happened.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import OutputKind, check_output_folder, folder_output
from ..codec.audio import resample
from ..errors import FullduplexError
from .dialogues import LANGUAGES, Script, Token, plan
from .formats import LEFT_SPEAKER, RIGHT_SPEAKER, AlignedWord, write_alignments

SILENCE_LEVEL = 0.01  # |sample| below this (-40 dBFS) is silence when a word's audio is trimmed
MANIFEST_NAME = "manifest.jsonl"
TRANSCRIPT_NAME = "transcripts.txt"
INFO_NAME = "synth.json"


def _synth_files(folder: Path) -> set[str] | None:
    """The files of a corpus folder written by :func:`synthesize_corpus`, as its manifest lists them."""
    try:
        json.loads((folder / INFO_NAME).read_text(encoding="utf-8"))
        names = {INFO_NAME, MANIFEST_NAME, TRANSCRIPT_NAME}
        for line in (folder / MANIFEST_NAME).read_text(encoding="utf-8").splitlines():
            wav = str(json.loads(line)["path"])
            names |= {wav, wav.removesuffix(".wav") + ".json"}
        return names
    except (OSError, ValueError, KeyError, TypeError):
        return None


SYNTH = OutputKind("fullduplex data synth", _synth_files)
INSTALL_HINT = "install it: apt-get install espeak-ng (macOS: brew install espeak-ng)"


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice (``name``, e.g. ``en-us+m3``: language voice + variant), pitch 0-99, speed (words/min)."""

    name: str
    pitch: int = 50
    speed: int = 160

    @property
    def label(self) -> str:
        return f"espeak-ng:{self.name}"


# Left: the speaker a model learns to be; right: the other. Variants and pitch keep the two apart.
DEFAULT_VOICES: dict[str, tuple[Voice, Voice]] = {
    "en": (Voice("en-us+m3", 45, 165), Voice("en-gb-x-rp+f3", 65, 155)),
    "hi": (Voice("hi+m3", 45, 150), Voice("hi+f3", 65, 140)),
    "ja": (Voice("ja+m3", 45, 160), Voice("ja+f3", 65, 150)),
}


@dataclass(frozen=True)
class SynthConfig:
    """Timing ranges (seconds, drawn uniformly) and event chances of the synthesised dialogues."""

    sample_rate: int = 24000
    word_gap: tuple[float, float] = (0.08, 0.18)
    pause: tuple[float, float] = (0.6, 1.0)
    turn_gap: tuple[float, float] = (0.25, 0.8)
    overlap: tuple[float, float] = (0.15, 0.5)
    lead: tuple[float, float] = (0.3, 0.6)  # silence before the first word
    tail: float = 0.5  # silence after the last word
    p_pause: float = 0.3
    p_overlap: float = 0.3
    p_backchannel: float = 0.4

    def __post_init__(self) -> None:
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be at least 8000 Hz, got {self.sample_rate}")
        for name in ("word_gap", "pause", "turn_gap", "overlap", "lead"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range 0 < low <= high seconds, got ({low}, {high})")
        for name in ("p_pause", "p_overlap", "p_backchannel"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")

    @property
    def step(self) -> int:
        """Samples per timing step: the fewest that make a whole number of milliseconds (24 at 24 kHz)."""
        return self.sample_rate // math.gcd(self.sample_rate, 1000)


@dataclass(frozen=True)
class Event:
    """Something a script asked for, as it was placed: ``kind`` ``pause`` (silence inside a turn, on
    ``channel``), ``overlap`` (both talk: the new turn on ``channel`` starts before the other's ends) or
    ``backchannel`` (on ``channel``, during the other's word); ``start``/``end`` in seconds."""

    kind: str
    channel: int
    start: float
    end: float


@dataclass
class Dialogue:
    """A rendered conversation: ``audio`` float32 [2, S] (row 0 left), its words and events."""

    audio: np.ndarray
    words: list[AlignedWord]
    events: list[Event]
    script: Script
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.audio.shape[1] / self.sample_rate


# --- espeak-ng ------------------------------------------------------------------------------------------------
def espeak_binary() -> str:
    """The espeak-ng executable; :class:`FullduplexError` saying how to install it when there is none."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise FullduplexError(f"espeak-ng not found on PATH; {INSTALL_HINT}")
    return path


def espeak_version() -> str:
    out = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, check=False).stdout
    return " ".join(out.split()[:5]) if out else "unknown"


def _listed(binary: str, which: str) -> list[list[str]]:
    out = subprocess.run([binary, f"--voices={which}"], capture_output=True, text=True, check=False).stdout
    return [line.split() for line in out.splitlines()[1:] if line.strip()]


def check_voice(voice: Voice, language: str) -> None:
    """Raise :class:`FullduplexError` unless espeak-ng has ``voice`` (base voice and ``+variant``) for
    ``language``, naming what it does list."""
    binary = espeak_binary()
    base, _, variant = voice.name.partition("+")
    rows = _listed(binary, language)
    names = {n.lower() for row in rows for n in (row[1], row[3], row[4], row[4].rsplit("/", 1)[-1]) if len(row) >= 5}
    if base.lower() not in names:
        known = ", ".join(sorted({row[1] for row in rows if len(row) >= 5 and not row[4].startswith("mb/")}))
        raise FullduplexError(f"espeak-ng has no voice {base!r} for language {language!r} "
                              f"(espeak-ng --voices={language} lists: {known or 'none'})")
    if variant:
        variants = {n.lower() for row in _listed(binary, "variant") if len(row) >= 5
                    for n in (row[3], row[4].rsplit("/", 1)[-1])}
        if variant.lower() not in variants:
            raise FullduplexError(f"espeak-ng has no voice variant {variant!r} (in {voice.name!r}); "
                                  "see espeak-ng --voices=variant (e.g. m3, f3)")


def espeak(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    """espeak-ng's audio of ``text``: float32 [S] and its sample rate (22050 Hz for the usual voices)."""
    cmd = [espeak_binary(), "--stdout", "-b", "1", "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed)]
    done = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        detail = " ".join(done.stderr.decode("utf-8", "replace").split()) or f"exit status {done.returncode}"
        raise FullduplexError(f"espeak-ng failed for voice {voice.name!r} on {text!r}: {detail}")
    return _parse_wav(done.stdout, voice)


def _parse_wav(data: bytes, voice: Voice) -> tuple[np.ndarray, int]:
    # espeak-ng streams to stdout with placeholder chunk sizes, so the data chunk runs to the end of the bytes.
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise FullduplexError(f"espeak-ng (voice {voice.name!r}) did not write a WAV stream")
    pos, rate, bits, channels = 12, 0, 0, 0
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if kind == b"fmt ":
            channels = int.from_bytes(data[pos + 10 : pos + 12], "little")
            rate = int.from_bytes(data[pos + 12 : pos + 16], "little")
            bits = int.from_bytes(data[pos + 22 : pos + 24], "little")
        elif kind == b"data":
            if bits != 16 or channels != 1 or rate <= 0:
                raise FullduplexError(f"espeak-ng (voice {voice.name!r}) wrote {channels}-channel {bits}-bit audio; "
                                      "expected mono 16-bit")
            body = data[pos + 8 :]
            samples = np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
            return samples, rate
        pos += 8 + size
    raise FullduplexError(f"espeak-ng (voice {voice.name!r}) wrote no audio data")


class WordAudio:
    """Trimmed word clips at the output rate, cached per (voice, spoken text): float32 [S], S a whole number of
    timing steps, the first sample and the last non-padding one at or above :data:`SILENCE_LEVEL`."""

    def __init__(self, sample_rate: int, step: int) -> None:
        self.sample_rate, self.step = sample_rate, step
        self._cache: dict[tuple[Voice, str], np.ndarray] = {}

    def __call__(self, word: str, voice: Voice) -> np.ndarray:
        key = (voice, word)
        if key not in self._cache:
            raw, rate = espeak(word, voice)
            wav = resample(torch.from_numpy(raw), rate, self.sample_rate).numpy()
            loud = np.flatnonzero(np.abs(wav) >= SILENCE_LEVEL)
            if loud.size == 0:
                raise FullduplexError(f"espeak-ng voice {voice.name!r} says nothing for the word {word!r}")
            first, last = int(loud[0]), int(loud[-1])
            length = -(-(last + 1 - first) // self.step) * self.step
            clip = np.zeros(length, dtype=np.float32)
            piece = wav[first : first + length]
            clip[: piece.shape[0]] = piece
            self._cache[key] = clip
        return self._cache[key]


# --- rendering ------------------------------------------------------------------------------------------------
def render(script: Script, voices: tuple[Voice, Voice], config: SynthConfig, rng: random.Random,
           words_audio: WordAudio | None = None) -> Dialogue:
    """Speak ``script``: place every word on its speaker's channel following the timing rules (module doc)."""
    sr, step = config.sample_rate, config.step
    words_audio = words_audio or WordAudio(sr, step)

    def steps(low_high: tuple[float, float]) -> int:  # a duration drawn from a range, in samples, on the grid
        return max(1, round(rng.uniform(*low_high) * sr / step)) * step

    min_gap = max(1, math.ceil(config.word_gap[0] * sr / step)) * step
    clips: list[list[tuple[int, np.ndarray]]] = [[], []]  # per channel: (start sample, clip)
    words: list[AlignedWord] = []
    events: list[Event] = []
    free = [0, 0]  # per channel: the first sample where its speaker may start again

    def place(channel: int, at: int, token: Token) -> int:
        clip = words_audio(token.spoken, voices[channel])
        clips[channel].append((at, clip))
        end = at + clip.shape[0]
        label = LEFT_SPEAKER if channel == 0 else RIGHT_SPEAKER
        words.append(AlignedWord(token.text, at / sr, end / sr, label))
        free[channel] = end + min_gap
        return end

    previous_end: int | None = None
    previous_last_word = 0  # samples of the previous turn's last word
    for turn in script.turns:
        ch = turn.speaker
        if previous_end is None:
            start = steps(config.lead)
        elif turn.overlap:
            overlap = min(steps(config.overlap), int(0.8 * previous_last_word) // step * step)
            start = previous_end - overlap
        else:
            start = previous_end + steps(config.turn_gap)
        start = max(start, free[ch])
        if previous_end is not None and start < previous_end:
            events.append(Event("overlap", ch, start / sr, previous_end / sr))
        at, spans = start, []
        for i, token in enumerate(turn.words):
            end = place(ch, at, token)
            spans.append((at, end))
            gap = steps(config.pause) if i == turn.pause_after else steps(config.word_gap)
            if i == turn.pause_after:
                events.append(Event("pause", ch, end / sr, (end + gap) / sr))
            at = end + gap
        if turn.backchannel and turn.backchannel_at is not None:
            lo, hi = spans[turn.backchannel_at]
            bc_at = (lo + int(rng.uniform(0.2, 0.6) * (hi - lo))) // step * step
            if bc_at >= free[1 - ch]:
                bc = bc_at
                for token in turn.backchannel:
                    bc_end = place(1 - ch, bc, token)
                    bc = bc_end + steps(config.word_gap)
                events.append(Event("backchannel", 1 - ch, bc_at / sr, bc_end / sr))
        previous_end = spans[-1][1]
        previous_last_word = spans[-1][1] - spans[-1][0]

    total = max(at + clip.shape[0] for channel in clips for at, clip in channel) + round(config.tail * sr / step) * step
    audio = np.zeros((2, total), dtype=np.float32)
    for channel in (0, 1):
        for at, clip in clips[channel]:
            audio[channel, at : at + clip.shape[0]] = clip  # a channel's words never overlap: copy, not add
    words.sort(key=lambda w: (w.start, not w.left))
    events.sort(key=lambda e: e.start)
    return Dialogue(audio, words, events, script, sr)


def dialogue_rng(seed: int, index: int) -> random.Random:
    """The random stream of dialogue ``index`` of a run with ``seed`` (independent of how many are made)."""
    return random.Random(seed * 1_000_003 + index)


def synthesize(language: str, index: int, seed: int, voices: tuple[Voice, Voice], config: SynthConfig,
               words_audio: WordAudio | None = None) -> Dialogue:
    """Dialogue ``index`` of a run: its script and its timing both come from :func:`dialogue_rng`."""
    rng = dialogue_rng(seed, index)
    script = plan(language, rng, config.p_pause, config.p_overlap, config.p_backchannel)
    return render(script, voices, config, rng, words_audio)


# --- output ---------------------------------------------------------------------------------------------------
def write_stereo_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """``audio`` float32 [2, S] as a 16-bit PCM stereo WAV (left = row 0)."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(np.ascontiguousarray(pcm.T).tobytes())


def resolve_voices(language: str, names: str | None) -> tuple[Voice, Voice]:
    """The two voices of ``language``: the defaults, or ``"LEFT,RIGHT"`` espeak-ng voice names (the defaults'
    pitch and speed kept), each checked with espeak-ng."""
    if language not in LANGUAGES:
        raise FullduplexError(f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}")
    left, right = DEFAULT_VOICES[language]
    if names:
        parts = [p.strip() for p in names.split(",")]
        if len(parts) != 2 or not all(parts):
            raise FullduplexError(f"--voices must name two espeak-ng voices, LEFT,RIGHT (e.g. en-us+m3,en-gb-x-rp+f3); "
                                  f"got {names!r}")
        left, right = Voice(parts[0], left.pitch, left.speed), Voice(parts[1], right.pitch, right.speed)
    for voice in (left, right):
        check_voice(voice, language)
        espeak("test", voice)  # a listed voice may still fail to load (an mbrola voice without its data)
    return left, right


@dataclass
class SynthReport:
    """Totals of a run (``synth.json`` holds them with the settings)."""

    dialogues: int = 0
    seconds: float = 0.0
    words: int = 0
    events: dict[str, int] = field(default_factory=lambda: {"pause": 0, "overlap": 0, "backchannel": 0})

    def summary(self) -> str:
        e = self.events
        return (f"{self.dialogues} dialogues, {self.seconds / 60:.1f} min, {self.words} words; "
                f"{e['pause']} pauses, {e['overlap']} overlaps, {e['backchannel']} backchannels")


def synthesize_corpus(language: str, dialogues: int, output: str | os.PathLike[str], seed: int = 0,
                      voices: tuple[Voice, Voice] | None = None, config: SynthConfig | None = None,
                      quiet: bool = False, overwrite: bool = False) -> SynthReport:
    """Write ``dialogues`` conversations to ``output`` (a new or empty folder, or with ``overwrite`` a previous
    output of this function): ``{lang}-NNNNN.wav`` (stereo) and
    ``.json`` (alignments), ``manifest.jsonl``, ``transcripts.txt`` (one turn a line) and ``synth.json`` (settings
    and totals). Built in a temporary folder renamed into place at the end. Same arguments and espeak-ng version →
    byte-identical files."""
    config = config or SynthConfig()
    if dialogues < 1:
        raise ValueError(f"dialogues must be at least 1, got {dialogues}")
    output = Path(output)
    check_output_folder(output, SYNTH, overwrite)
    voices = voices or resolve_voices(language, None)
    words_audio = WordAudio(config.sample_rate, config.step)
    report = SynthReport()
    with folder_output(output, SYNTH, overwrite) as work:
        manifest, transcripts = [], []
        for index in tqdm(range(dialogues), desc=f"synth {language}", unit="dialogue", file=sys.stderr,
                          disable=True if quiet else None):
            dialogue = synthesize(language, index, seed, voices, config, words_audio)
            name = f"{language}-{index:05d}"
            write_stereo_wav(work / f"{name}.wav", dialogue.audio, config.sample_rate)
            write_alignments(work / f"{name}.json", dialogue.words)
            manifest.append({"path": f"{name}.wav", "duration": round(dialogue.duration, 3),
                             "speakers": [voices[0].label, voices[1].label]})
            transcripts.extend(dialogue.script.lines())
            report.dialogues += 1
            report.seconds += dialogue.duration
            report.words += len(dialogue.words)
            for event in dialogue.events:
                report.events[event.kind] += 1
        (work / MANIFEST_NAME).write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in manifest),
                                          encoding="utf-8")
        (work / TRANSCRIPT_NAME).write_text("".join(line + "\n" for line in transcripts), encoding="utf-8")
        info: dict[str, Any] = {
            "language": language, "dialogues": dialogues, "seed": seed,
            "voices": [asdict(v) for v in voices], "espeak_ng": espeak_version(),
            "config": asdict(config), "silence_level": SILENCE_LEVEL,
            "seconds": round(report.seconds, 3), "words": report.words, "events": report.events,
        }
        (work / INFO_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report
