"""A recorded conversation (one speaker per channel) → its turn-taking statistics.

    settings = VadSettings("silero")
    turns, warnings = analyse_file("dialogue.wav", settings, min_silence=0.2)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import AudioError
from .turns import Turns, analyse_turns
from .vad import VadSettings, read_channels, speech_intervals

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".aiff", ".aif"})


def find_audio_files(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files given, with folders replaced by the audio files directly inside them (by suffix, sorted).
    Missing paths are kept, so that each is reported on its own."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
        else:
            out.append(path)
    return out


def analyse_file(
    path: str | os.PathLike[str], settings: VadSettings, min_silence: float = 0.2, backchannel_max: float = 1.0
) -> tuple[Turns, list[str]]:
    """VAD per channel of a stereo file, then :func:`~fullduplex.eval.turns.analyse_turns`. Returns the result and
    warnings about it (a channel without speech). :class:`AudioError` when the file cannot be used: unreadable, not
    two channels, silent, or no speech found on either channel."""
    channels = read_channels(path, settings.sample_rate)  # [C, S] at 16 kHz
    if channels.shape[0] == 1:
        raise AudioError(f"{path} is mono: turn-taking needs a stereo file with one speaker per channel")
    if channels.shape[0] != 2:
        raise AudioError(f"{path} has {channels.shape[0]} channels: turn-taking needs exactly 2, one speaker each")
    if not np.any(channels):
        raise AudioError(f"{path} is silent (every sample is 0)")
    duration = channels.shape[1] / settings.sample_rate
    speech = [speech_intervals(channel, settings) for channel in channels]
    if not speech[0] and not speech[1]:
        raise AudioError(f"{path}: the {settings.method} VAD found no speech on either channel")
    notes = [f"{path}: no speech found on the {side} channel" for side, s in zip(("left", "right"), speech, strict=True)
             if not s]
    return analyse_turns(speech, duration, min_silence, backchannel_max), notes
