"""LoRA: low-rank adapters on chosen ``nn.Linear`` layers, as a wrapper plus functions (wrap, merge, adapters).

``LoRALinear`` computes ``x W^T + scaling (x A^T) B^T`` with ``W`` frozen, ``A`` [r, in] Kaiming-uniform and ``B``
[out, r] zero, so training starts from the base model exactly. Its base weight keeps the name ``weight``: a
wrapped model's state dict holds the base weights under their usual keys plus ``<module>.lora_A`` /
``<module>.lora_B``. Only ``nn.Linear`` layers can be targeted; the Depth Transformer's per-step attention
projections are stacked parameters and stay frozen under LoRA.
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """A frozen linear layer (no bias) plus a trainable rank-``rank`` update scaled by ``scaling``."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float) -> None:
        super().__init__()
        if base.bias is not None:
            raise ValueError("LoRALinear wraps bias-free linear layers only")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scaling = rank, scaling
        self.weight = base.weight
        self.weight.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": torch.float32}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        self.reset_lora()

    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        """A: Kaiming-uniform (a = sqrt(5), as nn.Linear), B: zero."""
        if self.lora_A.device.type == "meta":
            return
        bound = math.sqrt(6 / ((1 + 5) * self.in_features))  # kaiming_uniform_(a=sqrt(5)) on fan_in
        with torch.no_grad():
            if generator is None or generator.device == self.lora_A.device:
                self.lora_A.uniform_(-bound, bound, generator=generator)
            else:  # a CPU generator (seeded, the same on every machine) for weights on an accelerator
                values = torch.empty(self.lora_A.shape, dtype=self.lora_A.dtype).uniform_(-bound, bound, generator=generator)
                self.lora_A.copy_(values)
            self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        update = F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B)  # autocast: bf16 matmuls
        return out + (self.scaling * update).to(out.dtype)

    def merged_weight(self) -> torch.Tensor:
        """``W + scaling B A`` in the base weight's dtype (computed in float32)."""
        delta = self.scaling * (self.lora_B.float() @ self.lora_A.float())
        return (self.weight.float() + delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling}"


def linear_names(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules matching any fnmatch pattern (``*`` matches dots too)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def apply_lora(model: nn.Module, rank: int, scaling: float, patterns: list[str], seed: int = 0) -> list[str]:
    """Freeze every parameter of ``model``, wrap the matching linears in :class:`LoRALinear` (in place), return
    their names. Adapters are initialised from ``seed`` in name order (identical on every rank)."""
    targets = linear_names(model, patterns)
    if not targets:
        raise ValueError(f"lora.target_modules {patterns} match no linear layer of the model "
                         "(e.g. '*', 'transformer.*', '*.gating.*', 'depformer_in.*', 'text_linear')")
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = LoRALinear(getattr(parent, child), rank, scaling)
        wrapped.reset_lora(generator)
        setattr(parent, child, wrapped)
    return targets


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by a plain ``nn.Linear`` holding the merged weight (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            linear = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
            linear.weight = nn.Parameter(module.merged_weight().detach(), requires_grad=False)
            setattr(parent, child, linear)
    return model
