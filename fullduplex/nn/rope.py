"""Rotary position embedding, interleaved layout (pairs ``[r0, i0, r1, i1, ...]``), angles in fp32."""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_dim: int, max_period: float, device: torch.device | None = None) -> torch.Tensor:
    """[head_dim / 2] angular frequencies ``exp(-ln(max_period) * 2j / head_dim)``."""
    j = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    return torch.exp(j * (-math.log(max_period) * 2 / head_dim))


def rope_rotation(positions: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [B, 1, T, D/2] for absolute ``positions`` [B, T]; computed once, shared by every layer."""
    angles = positions.to(torch.float32)[:, None, :, None] * freqs
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate ``x`` [..., T, D] by ``rotation`` from :func:`rope_rotation`; returns x's dtype."""
    cos, sin = rotation
    pairs = x.unflatten(-1, (-1, 2)).float()  # [B, H, T, D/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
