"""Normalisations: RMSNorm computed in fp32 (the Moshi LM's ``rms_norm_f32``) and a factory by name."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """``x * alpha / sqrt(eps + mean(x^2))`` over the last dim, computed in fp32, returned in x's dtype.

    ``alpha`` is [1, 1, D] as in the released checkpoints.
    """

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        var = self.eps + torch.mean(x32 * x32, dim=-1, keepdim=True)
        return (x32 * (self.alpha.float() * torch.rsqrt(var))).to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    """``layer_norm`` (eps 1e-5, with bias: Mimi), ``rms_norm_f32`` (eps 1e-8: the Moshi LM) or ``rms_norm``
    (eps 1e-5: Kyutai TTS's ``depformer_norm``)."""
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=1e-5)
    if kind == "rms_norm_f32":
        return RMSNorm(dim, eps=1e-8)
    if kind == "rms_norm":
        return RMSNorm(dim, eps=1e-5)
    raise ValueError(f"unknown norm {kind!r} (expected 'layer_norm', 'rms_norm_f32' or 'rms_norm')")
