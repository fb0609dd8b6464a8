"""Audio files in and out: any format ``sphn`` reads → mono float32 at the codec rate, and atomic WAV writes.

    wav = read_audio("talk.flac")               # [1, S] float32 at 24 kHz, mono
    write_wav("out.wav", wav, 24000)            # 16-bit PCM, clipped to [-1, 1], written atomically

Resampling uses our own Hann-windowed sinc interpolation (the same filter as ``torchaudio.functional.resample``
with its defaults): zero delay, output length ``ceil(S * dst / src)``. ``sphn.resample`` is not used because it
delays the signal by a few hundred samples and drops the end of the input, which would shift codec frames
against any timestamps of the source.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..atomic import atomic_output
from ..errors import AudioError

__all__ = ["read_audio", "read_audio_channels", "read_audio_info", "resample", "write_wav"]

T = TypeVar("T")

_LOWPASS_WIDTH = 6  # zero crossings of the sinc on each side of a tap (torchaudio's default)
_ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency (torchaudio's default)
_CHUNK = 1 << 15  # output samples per gather step: bounds memory to ~ chunk x taps floats per channel


def _sphn_call(what: str, path: Path, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a ``sphn`` function and turn its failures (including Rust panics) into :class:`AudioError`."""
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # sphn raises ValueError / OSError, or pyo3's PanicException (a BaseException)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AudioError(f"could not {what} {path}: {detail}") from None


def read_audio(path: str | os.PathLike[str], sample_rate: int = 24000) -> torch.Tensor:
    """Read an audio file (wav, flac, ogg/vorbis, mp3, ...) as mono float32 ``[1, S]`` at ``sample_rate`` Hz.

    Multi-channel audio is averaged to mono with a ``UserWarning`` naming the file and its channel count; other
    rates are resampled (see :func:`resample`). Raises :class:`AudioError` for a missing, unreadable or empty
    file, or one holding NaN or infinite samples.
    """
    wav, _, _ = read_audio_info(path, sample_rate)
    return wav


def read_audio_channels(path: str | os.PathLike[str], sample_rate: int = 24000) -> tuple[torch.Tensor, int]:
    """Every channel of an audio file, resampled to ``sample_rate``: (float32 [C, S], the file's own rate in Hz).
    :class:`AudioError` for a missing, unreadable or empty file, or one holding NaN or infinite samples."""
    import sphn

    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes)")
    data, src_rate = _sphn_call("read audio file", path, sphn.read, str(path))
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[None]
    channels, samples = data.shape
    if samples == 0 or channels == 0:
        raise AudioError(f"audio file {path} holds no samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(f"audio file {path} holds {bad} NaN or infinite samples; fix or re-export it")
    if src_rate <= 0:
        raise AudioError(f"audio file {path} has an invalid sample rate ({src_rate})")
    wav = torch.from_numpy(np.ascontiguousarray(data))
    return resample(wav, int(src_rate), sample_rate).contiguous(), int(src_rate)


def read_audio_info(path: str | os.PathLike[str], sample_rate: int = 24000) -> tuple[torch.Tensor, int, int]:
    """Like :func:`read_audio`, also returning the file's own sample rate (Hz) and channel count."""
    wav, src_rate = read_audio_channels(path, sample_rate)
    channels = wav.shape[0]
    if channels > 1:
        warnings.warn(f"{path}: {channels} channels mixed down to mono", UserWarning, stacklevel=2)
        wav = wav.mean(dim=0, keepdim=True)
    return wav.contiguous(), src_rate, channels


def resample(wav: torch.Tensor, src_rate: int, dst_rate: int) -> torch.Tensor:
    """Band-limited resampling of ``wav`` [..., S] from ``src_rate`` to ``dst_rate`` Hz → [..., ceil(S*dst/src)].

    Hann-windowed sinc interpolation with 6 zero crossings and a cutoff of 0.99 x the lower Nyquist rate (the
    filter of ``torchaudio.functional.resample``); samples outside the signal count as zero, so the output is
    aligned with the input (no delay). Works for any pair of integer rates; memory is bounded by processing the
    output in chunks.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    if src_rate == dst_rate or wav.shape[-1] == 0:
        return wav
    g = math.gcd(src_rate, dst_rate)
    orig, new = src_rate // g, dst_rate // g
    lead = wav.shape[:-1]
    x = wav.reshape(-1, wav.shape[-1]).to(torch.float32)
    length = x.shape[-1]
    out_len = -(-length * new // orig)
    base_freq = min(orig, new) * _ROLLOFF  # cutoff x 2 in units of the reduced rates
    half = math.ceil(_LOWPASS_WIDTH * orig / base_freq) + 1  # taps each side of the output position, in input samples
    # Output k sits at input position k * orig / new = floor + phase / new with phase = k * orig % new; its
    # weights depend only on the phase.
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)  # [taps]
    phases = torch.arange(new, dtype=torch.float64)[:, None] / new  # [new, 1]
    t = (offsets[None] - phases) * (base_freq / orig)  # distance in periods of the cutoff
    t = t.clamp(-_LOWPASS_WIDTH, _LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / (2 * _LOWPASS_WIDTH)) ** 2
    kernel = (torch.sinc(t) * window * (base_freq / orig)).to(torch.float32)  # [new, taps]
    padded = torch.nn.functional.pad(x, (half, half + 1))
    tap_index = torch.arange(2 * half + 1)
    out = x.new_empty(x.shape[0], out_len)
    for start in range(0, out_len, _CHUNK):
        k = torch.arange(start, min(start + _CHUNK, out_len))
        floor = (k * orig) // new  # [N]
        windows = padded[:, floor[:, None] + tap_index[None]]  # [C, N, taps]; padded index = input index + half
        out[:, start : start + k.shape[0]] = (windows * kernel[(k * orig) % new]).sum(-1)
    return out.reshape(*lead, out_len).to(wav.dtype)


def write_wav(path: str | os.PathLike[str], wav: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write mono audio ``wav`` ([1, S] or [S], float, nominally in [-1, 1]) as a 16-bit PCM WAV file.

    Samples are clipped to [-1, 1] (NaN becomes 0). The file is written under a temporary name in the same folder
    and renamed into place, so a failure never leaves a half-written ``path``. Raises :class:`AudioError` when the
    folder does not exist or the file cannot be written.
    """
    import sphn

    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to(device="cpu", dtype=torch.float32).numpy()
    data = np.asarray(wav, dtype=np.float32)
    if data.ndim == 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 1:
        raise AudioError(f"write_wav expects mono audio shaped [1, S] or [S], got {list(data.shape)} for {path}")
    data = np.ascontiguousarray(np.clip(np.nan_to_num(data, nan=0.0), -1.0, 1.0))
    folder = path.parent
    if not folder.is_dir():
        raise AudioError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise AudioError(f"cannot write {path}: it is a folder")
    try:
        with atomic_output(path) as tmp:
            _sphn_call("write", path, sphn.write_wav, str(tmp), data, int(sample_rate))
    except OSError as e:
        raise AudioError(f"could not write {path}: {e.strerror or e}") from None
    return path
