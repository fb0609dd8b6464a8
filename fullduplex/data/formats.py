"""moshi-finetune's data layout: a jsonl manifest of stereo conversations and an alignments JSON per conversation.

Manifest (``.jsonl``), one conversation per line; ``path`` is relative to the manifest's folder unless absolute::

    {"path": "calls/0001.wav", "duration": 412.3}
    {"path": "calls/0002.wav", "duration": 388.0, "speakers": ["spk_17", "spk_4"]}

``speakers`` (optional, ours) names the left and the right speaker; ``data prepare`` counts distinct names.

Audio: a stereo file; the left channel is the speaker the model learns to be, the right channel the other one.

Alignments: ``<stem>.json`` beside the audio (or in a folder given to the commands), words sorted by start::

    {"alignments": [["hello", [0.48, 0.80], "SPEAKER_MAIN"], ["hi", [0.62, 0.90], "SPEAKER_OTHER"], ...]}

Times are seconds from the start of the file. ``SPEAKER_MAIN`` (moshi-finetune's label, the only one it keeps)
marks the left channel's words; every other label marks the right channel's words (``data annotate`` writes
``SPEAKER_OTHER``).

Every reader here raises :class:`DataError` with a message naming the file and the line or word at fault.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_output
from ..codec.audio import read_audio_channels
from ..errors import FullduplexError
from ..text.tokenizer import Word

LEFT_SPEAKER = "SPEAKER_MAIN"
RIGHT_SPEAKER = "SPEAKER_OTHER"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
END_TOLERANCE = 0.25  # seconds a word may end after the audio does (ASR timestamps overshoot a little)


class DataError(FullduplexError, ValueError):
    """An input file of the data pipeline is missing or malformed; the message names the file and the place."""


@dataclass(frozen=True)
class Problem:
    """Why an input was skipped: ``file`` (and ``line`` of a manifest, when known) and the ``reason``."""

    file: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file} line {self.line}"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass(frozen=True)
class ManifestEntry:
    """One conversation of a manifest: the audio ``path`` (resolved), its ``duration`` (s) as the manifest says,
    the manifest ``line`` (1-based) and the optional ``speakers`` (left, right)."""

    path: Path
    duration: float
    line: int
    speakers: tuple[str, str] | None = None


@dataclass(frozen=True)
class AlignedWord:
    """A word of an alignments file: text, ``start``/``end`` seconds and the speaker label."""

    text: str
    start: float
    end: float
    speaker: str

    @property
    def word(self) -> Word:
        return Word(self.text, self.start, self.end)

    @property
    def left(self) -> bool:
        """Whether the word is the left channel's (``SPEAKER_MAIN``)."""
        return self.speaker == LEFT_SPEAKER


# --- manifest -------------------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike[str]) -> tuple[list[ManifestEntry], list[Problem]]:
    """The usable lines of a jsonl manifest, and a :class:`Problem` for each line that is not (malformed JSON,
    no ``path``, a bad ``duration``...). Blank lines are ignored. Raises :class:`DataError` when the manifest
    itself cannot be read. Whether the audio files exist is checked later, by the commands."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"manifest {path} is a folder; give the .jsonl file (one {{\"path\", \"duration\"}} per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from None
    entries: list[ManifestEntry] = []
    problems: list[Problem] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            entries.append(_manifest_entry(text, path.parent, number))
        except DataError as e:
            problems.append(Problem(str(path), str(e), number))
    return entries, problems


def _manifest_entry(text: str, folder: Path, line: int) -> ManifestEntry:
    try:
        item = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(item, dict):
        raise DataError(f"expected a JSON object {{\"path\": ..., \"duration\": ...}}, got {type(item).__name__}")
    audio = item.get("path")
    if not isinstance(audio, str) or not audio:
        raise DataError("no \"path\" (a string naming the audio file)")
    duration = item.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) or duration <= 0:
        raise DataError(f"\"duration\" must be a number of seconds > 0, got {duration!r}")
    speakers = item.get("speakers")
    if speakers is not None:
        if not (isinstance(speakers, list) and len(speakers) == 2 and all(isinstance(s, str) for s in speakers)):
            raise DataError(f"\"speakers\" must be [left name, right name], got {speakers!r}")
        speakers = (speakers[0], speakers[1])
    resolved = Path(audio) if Path(audio).is_absolute() else folder / audio
    return ManifestEntry(resolved, float(duration), line, speakers)


def audio_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Audio files under ``folder`` (recursive, sorted; ``.wav .flac .ogg .mp3``)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def alignments_path(audio: Path, root: Path | None = None, folder: Path | None = None) -> Path:
    """Where the alignments of ``audio`` live: ``<stem>.json`` beside it, or with ``folder`` at the same place
    under ``folder`` as ``audio`` is under ``root`` (just the name when ``audio`` is not under ``root``)."""
    if folder is None:
        return audio.with_suffix(".json")
    try:
        relative = audio.resolve().relative_to(root.resolve()) if root is not None else Path(audio.name)
    except ValueError:
        relative = Path(audio.name)
    return folder / relative.with_suffix(".json")


# --- alignments -----------------------------------------------------------------------------------------------
def read_alignments(path: str | os.PathLike[str], duration: float | None = None) -> list[AlignedWord]:
    """The words of an alignments file, checked: each ``[word, [start, end], speaker]`` with ``0 <= start <=
    end``, sorted by start, and — when the audio's ``duration`` (s) is given — starting before the audio ends and
    ending at most :data:`END_TOLERANCE` after. Raises :class:`DataError` naming the file and the word index."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"alignments not found: {path} (run `fullduplex data annotate`, or pass --alignments DIR)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read alignments {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"alignments {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("alignments"), list):
        raise DataError(f"alignments {path}: expected {{\"alignments\": [[word, [start, end], speaker], ...]}}")
    words: list[AlignedWord] = []
    for i, item in enumerate(data["alignments"]):
        word = _aligned_word(item)
        if word is None:
            raise DataError(f"alignments {path}: word {i}: expected [word, [start, end], speaker], got {item!r}")
        if not 0 <= word.start <= word.end:
            raise DataError(f"alignments {path}: word {i} ({word.text!r}): times must satisfy 0 <= start <= end, "
                            f"got [{word.start}, {word.end}]")
        if words and word.start < words[-1].start:
            raise DataError(f"alignments {path}: word {i} ({word.text!r}) starts at {word.start} s, before word "
                            f"{i - 1} ({words[-1].start} s): alignments must be sorted by start")
        if duration is not None and (word.start >= duration or word.end > duration + END_TOLERANCE):
            raise DataError(f"alignments {path}: word {i} ({word.text!r}) at [{word.start}, {word.end}] s is past "
                            f"the end of the audio ({duration:.3f} s): do these alignments belong to this file?")
        words.append(word)
    return words


def _aligned_word(item: Any) -> AlignedWord | None:
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[2], str)):
        return None
    times = item[1]
    if not (isinstance(times, list) and len(times) == 2):
        return None
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times):
        return None
    return AlignedWord(item[0], float(times[0]), float(times[1]), item[2])


def write_alignments(path: str | os.PathLike[str], words: Sequence[AlignedWord]) -> Path:
    """Write ``words`` (sorted by start here) in moshi-finetune's alignments format, atomically."""
    path = Path(path)
    ordered = sorted(words, key=lambda w: (w.start, not w.left))
    data = {"alignments": [[w.text, [round(w.start, 3), round(w.end, 3)], w.speaker] for w in ordered]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def side_words(words: Sequence[AlignedWord], side: str) -> list[Word]:
    """The words of one channel (``"left"`` or ``"right"``) as :class:`~fullduplex.text.Word`."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return [w.word for w in words if w.left == (side == "left")]


# --- stereo audio ---------------------------------------------------------------------------------------------
def read_stereo(path: str | os.PathLike[str], sample_rate: int) -> torch.Tensor:
    """A stereo file as float32 ``[2, S]`` at ``sample_rate`` Hz (row 0 left, row 1 right). Raises
    :class:`DataError` for a missing file or one that is not exactly two channels, :class:`AudioError` for one that
    cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file not found: {path}")
    wav, _ = read_audio_channels(path, sample_rate)
    if wav.shape[0] != 2:
        raise DataError(f"{path} has {wav.shape[0]} channel{'s' * (wav.shape[0] != 1)}; expected stereo (left: the "
                        "speaker the model learns to be, right: the other speaker)")
    return wav
