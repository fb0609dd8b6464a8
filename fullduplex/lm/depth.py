"""The Depth Transformer ("depformer"): within one 80 ms frame, generates the model's codebooks one by one.

Step k (0 .. dep_q - 1) has its own attention projections and feed-forward weights ("weights per step"), or
shares them with other steps through a schedule (step k uses weight set ``schedule[k]``: Kyutai TTS); the
norms are shared. Steps attend causally to the earlier steps of the same frame only: no positional embedding,
and the cache starts empty each frame. With ``kv_repeat`` > 1 (grouped-query attention, as the reference applies
it to the Depth Transformer too) keys and values have ``num_heads // kv_repeat`` heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.norm import RMSNorm
from ..nn.transformer import GatedFFN


class StepProjections(nn.Module):
    """The attention projections of one layer, one matrix per step: ``in_proj`` [S, 3D, D] (D + 2 Dkv rows with
    grouped-query attention), ``out_proj`` [S, D, D].

    A quantized model swaps this module for one with the same four methods
    (:class:`~fullduplex.lm.quantize.QuantStepProjections`).
    """

    def __init__(self, dim: int, steps: int, kv_dim: int | None = None, schedule: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.schedule = schedule  # step -> weight set; None: one set per step
        sets = steps if schedule is None else max(schedule) + 1
        self.in_proj = nn.Parameter(torch.empty(sets, dim + 2 * (dim if kv_dim is None else kv_dim), dim))
        self.out_proj = nn.Parameter(torch.empty(sets, dim, dim))

    def _weights(self, weight: torch.Tensor, steps: int) -> torch.Tensor:
        return weight[:steps] if self.schedule is None else weight[list(self.schedule[:steps])]

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        """All steps: [N, S, D] → [N, S, 3D], step s through its own matrix."""
        return torch.einsum("nsd,sed->nse", x, self._weights(self.in_proj, x.shape[1]))

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        """All steps: [N, S, D] → [N, S, D]."""
        return torch.einsum("nsd,sed->nse", x, self._weights(self.out_proj, x.shape[1]))

    def step_in(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Step k: [B, 1, D] → [B, 1, 3D]."""
        return F.linear(x, self.in_proj[k if self.schedule is None else self.schedule[k]])

    def step_out(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Step k: [B, 1, D] → [B, 1, D]."""
        return F.linear(x, self.out_proj[k if self.schedule is None else self.schedule[k]])


class DepthLayer(nn.Module):
    """One layer; ``self_attn.in_proj`` [S, 3D, D] and ``self_attn.out_proj`` [S, D, D] hold one matrix per step."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, steps: int, kv_repeat: int = 1,
                 schedule: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.kv_repeat, self.kv_heads = kv_repeat, num_heads // kv_repeat
        self.norm1 = RMSNorm(dim)
        self.self_attn = StepProjections(dim, steps, self.kv_heads * self.head_dim, schedule)
        self.norm2 = RMSNorm(dim)
        self.weight_of = list(range(steps)) if schedule is None else list(schedule)  # step -> FFN index
        self.gating = nn.ModuleList(GatedFFN(dim, dim_feedforward) for _ in range(max(self.weight_of) + 1))
        for weight in (self.self_attn.in_proj, self.self_attn.out_proj):  # after gating: the same random draws as before
            nn.init.normal_(weight, std=dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All steps at once (teacher forcing): ``x`` [N, S, D] → [N, S, D]."""
        N, S, D = x.shape
        h = self.norm1(x)
        q, k, v = self._split(self.self_attn.project_in(h))  # [N, H, S, d], [N, Hkv, S, d] x 2
        k, v = self._repeat(k), self._repeat(v)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(N, S, D)
        x = x + self.self_attn.project_out(out)
        h = self.norm2(x)
        return x + torch.stack([self.gating[self.weight_of[s]](h[:, s]) for s in range(S)], dim=1)

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected [N, S, D + 2 Dkv] → q [N, H, S, d], k and v [N, Hkv, S, d]."""
        N, S, _ = qkv.shape
        if self.kv_repeat == 1:
            return tuple(qkv.view(N, S, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4))
        D = self.num_heads * self.head_dim
        q = qkv[..., :D].view(N, S, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = qkv[..., D:].view(N, S, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        """[N, Hkv, S, d] → [N, H, S, d]: query head h reads key/value head h // kv_repeat."""
        return x if self.kv_repeat == 1 else x.repeat_interleave(self.kv_repeat, 1)

    def step(self, x: torch.Tensor, k: int, cache: torch.Tensor) -> torch.Tensor:
        """Step ``k`` of a frame: ``x`` [B, 1, D]; ``cache`` [2, B, Hkv, S, d] holds this frame's earlier keys and
        values and receives step k's."""
        B, _, D = x.shape
        q, key, value = self._split(self.self_attn.step_in(self.norm1(x), k))  # [B, H, 1, d], [B, Hkv, 1, d] x 2
        cache[0, :, :, k : k + 1] = key
        cache[1, :, :, k : k + 1] = value
        # All S slots with a mask (not the first k + 1): the reference's shapes, hence its GPU kernels and rounding.
        visible = (torch.arange(cache.shape[3], device=x.device) <= k).view(1, 1, 1, -1)
        out = F.scaled_dot_product_attention(q, self._repeat(cache[0]), self._repeat(cache[1]), attn_mask=visible)
        x = x + self.self_attn.step_out(out.transpose(1, 2).reshape(B, 1, D), k)
        return x + self.gating[self.weight_of[k]](self.norm2(x))


class DepthTransformer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int, dim_feedforward: int, steps: int,
                 kv_repeat: int = 1, schedule: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.steps = steps
        self.layers = nn.ModuleList(
            DepthLayer(dim, num_heads, dim_feedforward, steps, kv_repeat, schedule) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, S, D] → [N, S, D], all steps of N frames at once."""
        for layer in self.layers:
            x = layer(x)
        return x

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """An empty per-frame cache [L, 2, B, Hkv, S, d]."""
        first = self.layers[0]
        return torch.zeros(len(self.layers), 2, batch_size, first.kv_heads, self.steps, first.head_dim, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, k: int, cache: torch.Tensor) -> torch.Tensor:
        """Step ``k`` of the current frame: [B, 1, D] → [B, 1, D]."""
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x = layer.step(x, k, layer_cache)
        return x
