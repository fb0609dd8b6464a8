"""Rotary position embedding, interleaved layout (pairs ``[r0, i0, r1, i1, ...]``), angles in fp32."""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_dim: int, max_period: float, device: torch.device | None = None) -> torch.Tensor:
    """[head_dim / 2] angular frequencies ``exp(-ln(max_period) * 2j / head_dim)``."""
    j = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    return torch.exp(j * (-math.log(max_period) * 2 / head_dim))


def rope_rotation(positions: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin), each [B, 1, T, D], for absolute ``positions`` [B, T].

    Computed once per call and shared by every layer. Each pair's angle is repeated for its two lanes; the sine
    is negated on the real lanes, so that :func:`apply_rope` needs two products and one sum.
    """
    angles = positions.to(torch.float32)[:, None, :, None] * freqs  # [B, 1, T, D/2]
    cos, sin = torch.cos(angles), torch.sin(angles)
    return cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate ``x`` [..., T, D] by ``rotation`` from :func:`rope_rotation`, in fp32; returns x's dtype.

    Per pair (r, i): (r cos − i sin, i cos + r sin), computed as ``x * cos + swap(x) * signed_sin``, which
    rounds exactly like the textbook formula (a − b equals a + (−b) in floating point).
    """
    cos, signed_sin = rotation
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (i, r) per pair
    return (x32 * cos + swapped * signed_sin).to(x.dtype)
