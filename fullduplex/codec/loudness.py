"""Integrated loudness (ITU-R BS.1770-4, LUFS) and normalisation, as PersonaPlex applies to voice prompts (-24 LUFS).

K-weighting (a +4 dB high shelf at 1500 Hz, then a 38 Hz high pass: the biquads of pyloudnorm's default meter,
which the reference uses, at any sample rate), mean square over 400 ms blocks every 100 ms, an absolute gate at -70 LUFS and a relative gate
10 LU below the mean of the blocks that pass it. Mono only: the voice prompts are mono.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import AudioError

_SHELF = (4.0, 1 / math.sqrt(2), 1500.0)  # gain dB, Q, centre Hz
_HIGH_PASS = (0.5, 38.0)  # Q, centre Hz
BLOCK_SECONDS, BLOCK_OVERLAP = 0.4, 0.75
ABSOLUTE_GATE, RELATIVE_GATE = -70.0, -10.0


def _biquads(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(b, a) of the two K-weighting stages at ``rate`` Hz."""
    gain, q, fc = _SHELF
    A, w0 = 10 ** (gain / 40), 2 * math.pi * fc / rate
    alpha, cos = math.sin(w0) / (2 * q), math.cos(w0)
    shelf_b = [A * ((A + 1) + (A - 1) * cos + 2 * math.sqrt(A) * alpha), -2 * A * ((A - 1) + (A + 1) * cos),
               A * ((A + 1) + (A - 1) * cos - 2 * math.sqrt(A) * alpha)]
    shelf_a = [(A + 1) - (A - 1) * cos + 2 * math.sqrt(A) * alpha, 2 * ((A - 1) - (A + 1) * cos),
               (A + 1) - (A - 1) * cos - 2 * math.sqrt(A) * alpha]
    q, fc = _HIGH_PASS
    w0 = 2 * math.pi * fc / rate
    alpha, cos = math.sin(w0) / (2 * q), math.cos(w0)
    pass_b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
    pass_a = [1 + alpha, -2 * cos, 1 - alpha]
    return [(np.array(b) / a[0], np.array(a) / a[0]) for b, a in ((shelf_b, shelf_a), (pass_b, pass_a))]


def _filter(b: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    try:
        from scipy.signal import lfilter
    except ImportError:  # a direct-form loop: slow, but a voice prompt is a few seconds
        y = np.zeros_like(x)
        x1 = x2 = y1 = y2 = 0.0
        for i, v in enumerate(x.tolist()):
            out = b[0] * v + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2
            x2, x1, y2, y1 = x1, v, y1, out
            y[i] = out
        return y
    return lfilter(b, a, x)


def integrated_loudness(wav: torch.Tensor | np.ndarray, sample_rate: int) -> float:
    """Loudness of mono ``wav`` [S] (or [1, S]) in LUFS; -inf when every block is below the absolute gate.
    :class:`AudioError` when it is shorter than one 400 ms block."""
    x = np.asarray(wav.detach().cpu() if isinstance(wav, torch.Tensor) else wav, dtype=np.float64).reshape(-1)
    block = int(round(BLOCK_SECONDS * sample_rate))
    if x.shape[0] < block:
        raise AudioError(f"loudness needs at least {BLOCK_SECONDS} s of audio, got {x.shape[0] / sample_rate:.3f} s")
    for b, a in _biquads(sample_rate):
        x = _filter(b, a, x)
    step = 1 - BLOCK_OVERLAP
    count = int(round((x.shape[0] / sample_rate - BLOCK_SECONDS) / (BLOCK_SECONDS * step))) + 1
    bounds = [(int(BLOCK_SECONDS * j * step * sample_rate), int(BLOCK_SECONDS * (j * step + 1) * sample_rate)) for j in range(count)]
    power = np.array([np.sum(np.square(x[lo:hi])) / (BLOCK_SECONDS * sample_rate) for lo, hi in bounds])
    with np.errstate(divide="ignore"):
        levels = -0.691 + 10 * np.log10(power)
    kept = power[levels >= ABSOLUTE_GATE]
    if not kept.size:
        return float("-inf")
    relative = -0.691 + 10 * math.log10(kept.mean()) + RELATIVE_GATE
    kept = power[(levels > ABSOLUTE_GATE) & (levels > relative)]
    if not kept.size:
        return float("-inf")
    return float(-0.691 + 10 * math.log10(kept.mean()))


def normalize_loudness(wav: torch.Tensor, sample_rate: int, target: float = -24.0, source: str = "audio") -> torch.Tensor:
    """``wav`` scaled to ``target`` LUFS (no clipping, like the reference). :class:`AudioError` if it is silent."""
    loudness = integrated_loudness(wav, sample_rate)
    if not math.isfinite(loudness):
        raise AudioError(f"{source} is silent (below {ABSOLUTE_GATE:.0f} LUFS): nothing to take a voice from")
    return wav * 10 ** ((target - loudness) / 20)
