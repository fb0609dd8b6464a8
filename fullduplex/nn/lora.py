"""A linear layer with its LoRA adapter kept apart at inference (``--no_fuse_lora``).

``W x + scaling · B (A x)``, with ``A`` [r, in] and ``B`` [out, r] in the weight's dtype: three products where the
folded weight ``W + scaling · B A`` needs one, but the base weight stays as released and the adapter as trained
(moshi's unfused layers compute the same, in the same order). Training uses its own wrapper
(:class:`fullduplex.train.lora.LoRALinear`, float32 adapters with gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def low_rank(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scaling · B (A x)`` for ``x`` [..., in], ``a`` [r, in], ``b`` [out, r] → [..., out]."""
    return F.linear(F.linear(x, a), b) * scaling


class UnfusedLoRALinear(nn.Module):
    """A bias-free linear layer (its parameter ``weight`` [out, in], as ``nn.Linear``) plus a kept adapter
    (``lora_A`` [r, in], ``lora_B`` [out, r], ``scaling``); inference only (no gradients)."""

    def __init__(self, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> None:
        super().__init__()
        if lora_a.shape[1] != weight.shape[1] or lora_b.shape != (weight.shape[0], lora_a.shape[0]):
            raise ValueError(f"adapter A {list(lora_a.shape)}, B {list(lora_b.shape)} does not fit weight "
                             f"{list(weight.shape)}")
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.lora_A = nn.Parameter(lora_a.to(weight), requires_grad=False)
        self.lora_B = nn.Parameter(lora_b.to(weight), requires_grad=False)
        self.scaling = scaling

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + low_rank(x, self.lora_A, self.lora_B, self.scaling)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.lora_A.shape[0]}, scaling={self.scaling}"
