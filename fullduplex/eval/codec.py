"""Codec quality: reconstruct audio through Mimi and score it against the original.

    recon = reconstruct(mimi, wav, codebooks=8)            # [1, S] at mimi.sample_rate, same length as wav
    scores = compare(wav[0].numpy(), recon[0].numpy(), mimi.sample_rate)
    scores["stoi"], scores["pesq_wb"], scores["si_sdr_db"], scores["lag_ms"]

Scoring happens at 16 kHz (wideband PESQ's rate; STOI resamples to 10 kHz itself), after aligning the
reconstruction to the original by cross-correlation within ``max_lag`` seconds (a codec may delay its output).
Metrics:

- STOI (``pystoi``, Taal et al. 2011): 0..1, 1 for identical signals.
- PESQ wideband (``pesq``, ITU-T P.862.2): about 1.0..4.64 (4.64 for identical signals). It needs a few hundred
  milliseconds of speech and raises on silence; its error is then reported instead of a value.
- SI-SDR (Le Roux et al. 2019): both signals made zero-mean, the reference scaled to best fit the estimate,
  ``10 log10(|a r|² / |a r - e|²)`` in dB; +inf for a perfect (scaled) copy, very negative for unrelated noise.
- bitrate: ``codebooks × log2(cardinality) × frame_rate`` bits per second (Mimi: 8 × 11 × 12.5 = 1100 bps).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..codec.audio import resample
from ..codec.mimi import Mimi

METRIC_RATE = 16000
CHUNK_FRAMES = 50  # frames per streaming step (4 s), as `fullduplex codec` does: bounded memory on long files


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB of ``estimate`` against ``reference`` (both [S], same
    length), zero-mean. ValueError when the reference is silent or the lengths differ."""
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape or ref.ndim != 1:
        raise ValueError(f"SI-SDR needs two signals of one shape [S], got {list(ref.shape)} and {list(est.shape)}")
    ref, est = ref - ref.mean(), est - est.mean()
    energy = float(np.dot(ref, ref))
    if energy == 0.0:
        raise ValueError("SI-SDR is undefined for a silent reference")
    target = (np.dot(est, ref) / energy) * ref
    noise = est - target
    noise_energy = float(np.dot(noise, noise))
    if noise_energy == 0.0:
        return math.inf
    return 10.0 * math.log10(float(np.dot(target, target)) / noise_energy)


def stoi(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = METRIC_RATE) -> float:
    """Short-time objective intelligibility (``pystoi``), 0..1."""
    from pystoi import stoi as _stoi

    return float(_stoi(np.asarray(reference, np.float64), np.asarray(estimate, np.float64), sample_rate, extended=False))


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = METRIC_RATE) -> float:
    """Wideband PESQ (``pesq``, mode ``wb``, 16 kHz only). Raises ValueError with pesq's message when it cannot
    score the pair (too short, no speech found)."""
    from pesq import PesqError, pesq

    if sample_rate != 16000:
        raise ValueError(f"wideband PESQ runs at 16000 Hz, got {sample_rate}")
    if not (np.any(reference) and np.any(estimate)):
        raise ValueError("PESQ could not score it: the reference or the reconstruction is silent")
    try:
        return float(pesq(sample_rate, np.asarray(reference, np.float32), np.asarray(estimate, np.float32), "wb"))
    except PesqError as e:
        detail = e.args[0] if e.args else ""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        raise ValueError(f"PESQ could not score it: {type(e).__name__} ({detail or 'no message'})") from None


def bitrate(codebooks: int, cardinality: int, frame_rate: float) -> float:
    """Bits per second of ``codebooks`` codes of ``cardinality`` entries at ``frame_rate`` Hz."""
    return codebooks * math.log2(cardinality) * frame_rate


def best_lag(reference: np.ndarray, estimate: np.ndarray, max_lag: int) -> int:
    """The delay (samples, within ±``max_lag``) at which ``estimate`` best matches ``reference``: the peak of
    their cross-correlation (FFT). Positive: the estimate comes late."""
    n = len(reference) + len(estimate)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(estimate, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([corr[: max_lag + 1], corr[size - max_lag :]])
    return int(lags[int(np.argmax(values))])


def align(reference: np.ndarray, estimate: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Shift ``estimate`` by its :func:`best_lag` and cut both to the part they share: (reference, estimate, lag)."""
    lag = best_lag(reference, estimate, max_lag) if max_lag > 0 else 0
    if lag >= 0:
        est = estimate[lag:]
        ref = reference[: len(est)]
    else:
        ref = reference[-lag:]
        est = estimate[: len(ref)]
    n = min(len(ref), len(est))
    return ref[:n], est[:n], lag


def reconstruct(mimi: Mimi, wav: torch.Tensor, codebooks: int) -> torch.Tensor:
    """``wav`` [1, S] (at ``mimi.sample_rate``) encoded with ``codebooks`` codebooks and decoded again, streaming
    4 s at a time; [1, S] float32 on the CPU."""
    mimi.num_codebooks = codebooks
    device = next(mimi.parameters()).device
    samples, frame = wav.shape[-1], mimi.frame_size
    frames = -(-samples // frame)
    padded = torch.nn.functional.pad(wav, (0, frames * frame - samples))[None]  # [1, 1, T * frame]
    step = CHUNK_FRAMES * frame
    with torch.inference_mode():
        with mimi.streaming(1):
            codes = torch.cat([mimi.encode(padded[..., i : i + step].to(device)) for i in range(0, padded.shape[-1], step)],
                              dim=-1)  # [1, K, T]
        with mimi.streaming(1):
            out = torch.cat([mimi.decode(codes[..., i : i + CHUNK_FRAMES]).float()
                             for i in range(0, frames, CHUNK_FRAMES)], dim=-1)  # [1, 1, T * frame]
    return out[0, :, :samples].cpu()


def compare(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, max_lag: float = 0.1) -> dict[str, Any]:
    """Scores of ``estimate`` against ``reference`` (both [S] at ``sample_rate``): ``stoi``, ``pesq_wb``,
    ``si_sdr_db`` (None where a metric failed, its message under ``errors``) and ``lag_ms`` (the alignment)."""
    ref = resample(torch.from_numpy(np.ascontiguousarray(reference, np.float32))[None], sample_rate, METRIC_RATE)[0].numpy()
    est = resample(torch.from_numpy(np.ascontiguousarray(estimate, np.float32))[None], sample_rate, METRIC_RATE)[0].numpy()
    ref, est, lag = align(ref, est, int(max_lag * METRIC_RATE))
    out: dict[str, Any] = {"lag_ms": round(1000 * lag / METRIC_RATE, 3)}
    errors: dict[str, str] = {}
    for name, fn in (("stoi", stoi), ("pesq_wb", pesq_wb), ("si_sdr_db", si_sdr)):
        try:
            value = fn(ref, est)
        except ValueError as e:
            out[name], errors[name] = None, " ".join(str(e).split())
            continue
        if not math.isfinite(value):
            out[name], errors[name] = None, f"{value} (the reconstruction is an exact scaled copy)"
        else:
            out[name] = round(value, 4)
    out["errors"] = errors
    return out
