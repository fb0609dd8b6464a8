"""Shared fixtures of the evaluation tests: synthetic stereo conversations written as WAV files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import speech

RATE = 24000


def write_wav(path: Path, data: np.ndarray, rate: int = RATE) -> Path:
    """[C, S] float in [-1, 1] as 16-bit PCM WAV."""
    data = np.atleast_2d(data)
    pcm = (np.clip(data, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(data.shape[0])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.ascontiguousarray(pcm.T).tobytes())
    return path


def conversation(layout: list[tuple[int, float]], duration: float) -> np.ndarray:
    """[2, S] at 24 kHz: the speech sample (2.5 s, voiced 0.01-2.16 s) on ``channel`` from ``start`` s."""
    sample = speech()[0, 0].numpy()
    stereo = np.zeros((2, int(duration * RATE)), np.float32)
    for channel, start in layout:
        i = int(start * RATE)
        n = min(len(sample), stereo.shape[1] - i)
        stereo[channel, i : i + n] += sample[:n]
    return stereo


@pytest.fixture(scope="session")
def dialogue(tmp_path_factory) -> Path:
    """A 10 s exchange: left 0.5 s, right 3.0 s (gap), left 4.8 s (overlap), left 7.5 s (pause)."""
    folder = tmp_path_factory.mktemp("dialogue")
    return write_wav(folder / "dialogue.wav", conversation([(0, 0.5), (1, 3.0), (0, 4.8), (0, 7.5)], 10.0))
