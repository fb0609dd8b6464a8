"""Stereo conversations built from the committed English sample, placed at known times on each channel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sphn

from tests.helpers import speech

SR = 24000


def sample() -> np.ndarray:
    """The English speech sample, float32 [S] at 24 kHz (2.5 s)."""
    return speech()[0, 0].numpy()


def stereo(path: Path, seconds: float, left_at: float | None, right_at: float | None, rate: int = SR) -> Path:
    """A stereo WAV of ``seconds``: the sample starting at ``left_at`` s on the left, ``right_at`` s on the right
    (cut at the end), at ``rate`` Hz."""
    import torch

    from fullduplex.codec.audio import resample

    wav = np.zeros((2, int(seconds * SR)), dtype=np.float32)
    for channel, at in ((0, left_at), (1, right_at)):
        if at is not None:
            start = int(at * SR)
            piece = sample()[: wav.shape[1] - start]
            wav[channel, start : start + piece.shape[0]] = 0.8 * piece
    if rate != SR:
        wav = resample(torch.from_numpy(wav), SR, rate).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    sphn.write_wav(str(path), np.ascontiguousarray(wav), rate)
    return path


def mono(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = np.zeros(int(seconds * SR), dtype=np.float32)
    wav[: sample().shape[0]] = sample()[: wav.shape[0]]
    sphn.write_wav(str(path), wav, SR)
    return path


def alignments(path: Path, words: list[tuple[str, float, float, str]]) -> Path:
    """An alignments JSON of ``(word, start, end, speaker)`` exactly as given (order kept)."""
    path.write_text(json.dumps({"alignments": [[w, [s, e], spk] for w, s, e, spk in words]}))
    return path


def manifest(path: Path, lines: list[dict | str]) -> Path:
    """A jsonl manifest; a ``str`` line is written as it is (for malformed lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path
