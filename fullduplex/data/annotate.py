"""Annotation: word timestamps for both channels of stereo conversations, written as alignments JSON files.

Each channel is transcribed on its own (16 kHz mono) by a :class:`Transcriber`; the left channel's words are
tagged ``SPEAKER_MAIN``, the right channel's ``SPEAKER_OTHER``, and both are written, sorted by start, in
moshi-finetune's format (see :mod:`fullduplex.data.formats`). Work is resumable: a file whose alignments
already exist is skipped, and each alignments file appears atomically, so an interrupted run loses at most the
file in progress.

The transcriber is anything with ``transcribe(audio, language) -> list[Word]``; :class:`FasterWhisper` wraps
faster-whisper (an optional install) with a local model folder. Tests use a fake one.

Many processes share the files with :func:`part_tasks` (see :mod:`fullduplex.data.parts`); each file's output is
its own, so the parts need no merging.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from ..errors import FullduplexError
from ..text.tokenizer import Word
from .formats import (
    LEFT_SPEAKER,
    RIGHT_SPEAKER,
    AlignedWord,
    DataError,
    Problem,
    alignments_path,
    audio_files,
    read_manifest,
    read_stereo,
    write_alignments,
)
from .parts import Part, assign

SAMPLE_RATE = 16000  # what Whisper models hear


class Transcriber(Protocol):
    """Speech recognition with word timestamps."""

    def transcribe(self, audio: np.ndarray, language: str | None) -> list[Word]:
        """Words of ``audio`` (float32 [S], mono, 16 kHz) with start/end seconds; ``language`` None: detect it."""
        ...


class FasterWhisper:
    """A :class:`Transcriber` on faster-whisper (CTranslate2 Whisper) loaded from a local model folder.

    ``device``: ``auto``, ``cpu`` or ``cuda`` (``device_index`` picks the GPU); ``compute_type``: CTranslate2's
    (``default``, ``float16``, ``int8``, ...). Decoding uses beam search (5 beams) with word timestamps and does
    not condition on the previous window's text, which keeps hallucinated repetitions from spreading.
    ``batch_size`` > 1 decodes that many 30 s windows per call with faster-whisper's ``BatchedInferencePipeline``
    (its VAD cuts the audio at pauses first; needs faster-whisper >= 1.1).
    """

    def __init__(self, model: str | Path, device: str = "auto", compute_type: str = "default",
                 batch_size: int = 1, device_index: int = 0) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise FullduplexError(
                "`fullduplex data annotate` needs faster-whisper, which is not installed: pip install faster-whisper"
            ) from None
        path = Path(model)
        if not path.is_dir():
            raise FullduplexError(
                f"--model {model}: not a folder; give a local faster-whisper (CTranslate2) model folder, e.g. one "
                "converted with ct2-transformers-converter or downloaded from Systran/faster-whisper-medium"
            )
        try:
            self.model = WhisperModel(str(path), device=device, device_index=device_index, compute_type=compute_type,
                                      local_files_only=True)
        except (RuntimeError, ValueError, OSError) as e:
            raise FullduplexError(f"--model {model}: faster-whisper could not load it ({e})") from None
        self.batch_size = batch_size
        self.batched = None
        if batch_size > 1:
            try:
                from faster_whisper import BatchedInferencePipeline
            except ImportError:
                raise FullduplexError("--batch-size > 1 needs faster-whisper >= 1.1 (BatchedInferencePipeline): "
                                      "pip install -U faster-whisper, or use --batch-size 1") from None
            self.batched = BatchedInferencePipeline(model=self.model)

    def transcribe(self, audio: np.ndarray, language: str | None) -> list[Word]:
        if self.batched is not None:
            segments, _ = self.batched.transcribe(
                audio, language=language, word_timestamps=True, beam_size=5, batch_size=self.batch_size
            )
        else:
            segments, _ = self.model.transcribe(
                audio, language=language, word_timestamps=True, beam_size=5, condition_on_previous_text=False
            )
        return [Word(w.word, float(w.start), float(w.end)) for s in segments for w in (s.words or [])]


@dataclass
class Task:
    """One file to annotate: the audio, where its alignments go, and how to name it in a problem."""

    audio: Path
    output: Path
    source: str  # the manifest (with ``line``) or the audio file
    line: int | None = None
    duration: float = 1.0  # seconds the manifest declares (1 for a folder's files): how parts are dealt


@dataclass
class AnnotateReport:
    """What a run did: files annotated (and their words), files skipped because done, problems."""

    annotated: int = 0
    words: int = 0
    already_done: int = 0
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        return (f"annotated {self.annotated} file(s) ({self.words} words), skipped {self.already_done} already "
                f"done, {len(self.problems)} problem(s)")


def plan(source: str | Path, output: Path) -> tuple[list[Task], list[Problem]]:
    """The tasks for an audio folder (every audio file under it, recursively) or a jsonl manifest, with their
    alignments at the same relative place under ``output``; plus the manifest's bad lines."""
    source = Path(source)
    if source.is_dir():
        files = audio_files(source)
        if not files:
            raise DataError(f"no audio files (.wav .flac .ogg .mp3) under {source}")
        tasks = [Task(p, alignments_path(p, source, output), str(p)) for p in files]
        problems: list[Problem] = []
    else:
        entries, problems = read_manifest(source)
        tasks = [Task(e.path, alignments_path(e.path, source.parent, output), str(source), e.line, e.duration)
                 for e in entries]
    seen: dict[Path, Path] = {}
    for task in tasks:
        if task.output in seen and seen[task.output] != task.audio:
            raise DataError(f"{task.audio} and {seen[task.output]} would both write {task.output}; rename one")
        seen[task.output] = task.audio
    return tasks, problems


def part_tasks(tasks: Sequence[Task], part: Part) -> list[Task]:
    """The tasks of ``part``, in their order: dealt by :func:`~fullduplex.data.parts.assign` on their durations
    (a folder's files all count 1, so they are dealt in turn)."""
    parts = assign([t.duration for t in tasks], part.count)
    return [t for t, p in zip(tasks, parts, strict=True) if p == part.index]


def clean_words(words: Sequence[Word], duration: float) -> list[Word]:
    """Stripped, non-empty words with ``0 <= start <= end <= duration``, sorted by start."""
    out = []
    for w in words:
        text = w.text.strip()
        if not text:
            continue
        start = min(max(w.start, 0.0), duration)
        out.append(Word(text, start, min(max(w.end, start), duration)))
    return sorted(out, key=lambda w: w.start)


def annotate_file(audio: Path, output: Path, transcriber: Transcriber, language: str | None) -> int:
    """Transcribe both channels of ``audio`` and write ``output``; returns the number of words."""
    wav = read_stereo(audio, SAMPLE_RATE).numpy()  # [2, S]
    duration = wav.shape[-1] / SAMPLE_RATE
    words: list[AlignedWord] = []
    for channel, speaker in ((0, LEFT_SPEAKER), (1, RIGHT_SPEAKER)):
        heard = transcriber.transcribe(np.ascontiguousarray(wav[channel]), language)
        words += [AlignedWord(w.text, w.start, w.end, speaker) for w in clean_words(heard, duration)]
    write_alignments(output, words)
    return len(words)


def annotate(
    tasks: Sequence[Task], transcriber: Transcriber | None, language: str | None = None, quiet: bool = False
) -> AnnotateReport:
    """Run ``tasks``, skipping those whose output exists; a file that fails is recorded and the rest go on.
    ``transcriber`` may be None only when every output exists."""
    report = AnnotateReport()
    with tqdm(tasks, desc="annotate", unit="file", file=sys.stderr, disable=True if quiet else None) as bar:
        for task in bar:
            if task.output.is_file():
                report.already_done += 1
                continue
            if transcriber is None:
                raise ValueError(f"{task.audio} needs annotating but no transcriber was given")
            try:
                report.words += annotate_file(task.audio, task.output, transcriber, language)
                report.annotated += 1
            except (FullduplexError, ValueError, OSError) as e:
                reason = " ".join(str(e).split())
                report.problems.append(Problem(task.source, reason, task.line))
    return report
