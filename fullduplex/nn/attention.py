"""Causal multi-head self-attention with a sliding context and a ring KV cache for streaming.

A query at absolute position p attends to keys at positions p - context + 1 .. p. In streaming mode the keys
live in a ring buffer shared by the batch (every item advances by the same number of steps per call) while
each slot records, per item, the absolute position it holds, so one item can be reset without touching the
others. The ring holds ``context - 1 + T`` slots for calls of T steps, so streaming sees exactly the keys that
batch mode sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope
from .streaming import StreamingModule, StreamingState, masked_zero_


@dataclass
class KVCacheState(StreamingState):
    keys: torch.Tensor  # [B, H, N, D]
    values: torch.Tensor  # [B, H, N, D]
    positions: torch.Tensor  # [B, N] absolute position held by each slot, -1 when empty
    write: torch.Tensor  # [1] next slot to write, the same for every item (a tensor: CUDA-graph safe)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def reset(self, mask: torch.Tensor) -> None:
        masked_zero_(self.positions, mask, -1)

    def grow(self, capacity: int) -> None:
        """Enlarge the ring to ``capacity`` slots, oldest entries first."""
        write = int(self.write)  # a host sync, but growing happens once per new call length, not per step
        order = torch.arange(write, write + self.capacity, device=self.keys.device) % self.capacity
        extra = capacity - self.capacity
        self.keys = torch.cat([self.keys[:, :, order], self.keys.new_zeros(*self.keys.shape[:2], extra, self.keys.shape[3])], 2)
        self.values = torch.cat([self.values[:, :, order], self.values.new_zeros(*self.values.shape[:2], extra, self.values.shape[3])], 2)
        self.positions = torch.cat([self.positions[:, order], self.positions.new_full((self.positions.shape[0], extra), -1)], 1)
        self.write.fill_(capacity - extra)


def sliding_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, context: int | None) -> torch.Tensor:
    """[B, 1, Tq, Tk] bool: key valid (position >= 0), not in the future, and within ``context`` steps."""
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask &= delta < context
    return mask[:, None]


class StreamingSelfAttention(StreamingModule):
    """``in_proj`` (rows q | k | v, no bias) → RoPE → sliding-window causal attention → ``out_proj``."""

    def __init__(self, dim: int, num_heads: int, context: int | None, block: int = 256) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.context, self.block = num_heads, dim // num_heads, context, block
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCacheState:
        if self.context is None:
            raise ValueError("streaming attention needs a finite context")
        capacity = self.context + 1  # two steps per call; grows on demand
        shape = (batch_size, self.num_heads, capacity, self.head_dim)
        return KVCacheState(
            batch_size,
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            torch.full((batch_size, capacity), -1, device=device, dtype=torch.long),
            torch.zeros(1, device=device, dtype=torch.long),
        )

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``x`` [B, T, D], ``positions`` [B, T] absolute step of each input, ``rotation`` from
        :func:`~fullduplex.nn.rope.rope_rotation` (None: no positional rotation) → [B, T, D]."""
        B, T, D = x.shape
        qkv = self.in_proj(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        if rotation is not None:
            q, k = apply_rope(qkv[:2], rotation)
            v = qkv[2]
        else:
            q, k, v = qkv
        state = self._streaming_state
        if state is None:
            out = self._attend_batch(q, k, v, positions)
        else:
            needed = (self.context or 0) - 1 + T
            if state.capacity < needed:
                state.grow(needed)
            slots = (torch.arange(T, device=x.device) + state.write) % state.capacity
            state.keys.index_copy_(2, slots, k)
            state.values.index_copy_(2, slots, v)
            state.positions.index_copy_(1, slots, positions)
            state.write.add_(T).remainder_(state.capacity)
            mask = sliding_mask(positions, state.positions, self.context)
            out = F.scaled_dot_product_attention(q, state.keys, state.values, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))

    def _attend_batch(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Blockwise over queries so memory stays linear in T: each block sees only its window of keys."""
        T = q.shape[2]
        if self.context is None or T <= 2 * self.block:
            mask = sliding_mask(positions, positions, self.context)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        outs = []
        for start in range(0, T, self.block):
            end = min(start + self.block, T)
            lo = max(0, start - self.context + 1)
            mask = sliding_mask(positions[:, start:end], positions[:, lo:end], self.context)
            outs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, lo:end], v[:, :, lo:end], attn_mask=mask))
        return torch.cat(outs, dim=2)

