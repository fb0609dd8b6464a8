"""A pre-norm streaming transformer (the Mimi bottleneck flavour: LayerNorm, GELU MLP, layer scale).

Positions are absolute and kept per batch item, so ``reset(mask)`` restarts one item at position 0 while the
others carry on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import StreamingSelfAttention, initial_capacity, sliding_mask
from .rope import rope_frequencies, rope_rotation
from .streaming import StreamingModule, StreamingState, masked_zero_


class LayerScale(nn.Module):
    """Per-channel learnt scale (``x * scale``), initialised to a small constant."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class TransformerLayer(nn.Module):
    """``x += ls1(attn(norm1(x)))``; ``x += ls2(linear2(gelu(linear1(norm2(x)))))``. [B, T, D] → [B, T, D]."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dim_feedforward: int,
        context: int | None,
        layer_scale: float | None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = StreamingSelfAttention(dim, num_heads, context)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.linear1 = nn.Linear(dim, dim_feedforward, bias=False)
        self.linear2 = nn.Linear(dim_feedforward, dim, bias=False)
        self.layer_scale_1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.layer_scale_2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor] | None,
        slots: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), positions, rotation, slots, mask))
        return x + self.layer_scale_2(self.linear2(F.gelu(self.linear1(self.norm2(x)))))


@dataclass
class KVIndex(StreamingState):
    """What every layer's ring KV cache shares: positions, slot bookkeeping (see ``attention.py``)."""

    offset: torch.Tensor  # [B] absolute position of the next step, per item
    positions: torch.Tensor  # [B, N] absolute position held by each ring slot, -1 when empty
    write: torch.Tensor  # [1] next slot to write, the same for every item (a tensor: CUDA-graph safe)

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    def reset(self, mask: torch.Tensor) -> None:
        masked_zero_(self.offset, mask)
        masked_zero_(self.positions, mask, -1)


class StreamingTransformer(StreamingModule):
    """A stack of :class:`TransformerLayer`. ``forward`` takes [B, T, D], or [B, D, T] when ``conv_layout``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        context: int | None,
        max_period: float = 10000.0,
        layer_scale: float | None = None,
        norm_eps: float = 1e-5,
        conv_layout: bool = False,
    ) -> None:
        super().__init__()
        self.conv_layout = conv_layout
        self.context = context
        self.layers = nn.ModuleList(
            TransformerLayer(dim, num_heads, dim_feedforward, context, layer_scale, norm_eps) for _ in range(num_layers)
        )
        self.head_dim = dim // num_heads
        self.max_period = max_period
        self.register_buffer("rope_freqs", None, persistent=False)
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        """(Re)compute buffers that checkpoints do not hold, e.g. after building on the meta device."""
        device = self.layers[0].norm1.weight.device if len(self.layers) else torch.device("cpu")
        device = torch.device("cpu") if device.type == "meta" else device
        self.rope_freqs = rope_frequencies(self.head_dim, self.max_period, device)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVIndex:
        if self.context is None:
            raise ValueError("a streaming transformer needs a finite context")
        return KVIndex(
            batch_size,
            torch.zeros(batch_size, dtype=torch.long, device=device),
            torch.full((batch_size, initial_capacity(self.context)), -1, dtype=torch.long, device=device),
            torch.zeros(1, dtype=torch.long, device=device),
        )

    def _grow(self, index: KVIndex, capacity: int) -> None:
        """Enlarge every layer's ring to ``capacity`` slots, oldest entries first (once per new call length).

        Reads the write slot on the host: growing is not part of a steady-state step.
        """
        write = int(index.write)
        order = torch.arange(write, write + index.capacity, device=index.positions.device) % index.capacity
        for layer in self.layers:
            layer.self_attn.state.grow(order, capacity)
        index.positions = F.pad(index.positions[:, order], (0, capacity - index.capacity), value=-1)
        index.write.fill_(len(order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_layout:
            x = x.transpose(1, 2)  # [B, D, T] -> [B, T, D]
        B, T, _ = x.shape
        steps = torch.arange(T, device=x.device)
        index = self._streaming_state
        slots = mask = None
        if index is None:
            positions = steps.expand(B, T)
        else:
            positions = index.offset[:, None] + steps  # [B, T]
            index.offset.add_(T)
            if index.capacity < self.context - 1 + T:
                self._grow(index, self.context - 1 + T)
            slots = (steps + index.write) % index.capacity
            index.positions.index_copy_(1, slots, positions)
            index.write.add_(T).remainder_(index.capacity)
            mask = sliding_mask(positions, index.positions, self.context)  # [B, 1, T, N], shared by all layers
        rotation = rope_rotation(positions, self.rope_freqs)
        for layer in self.layers:
            x = layer(x, positions, rotation, slots, mask)
        return x.transpose(1, 2) if self.conv_layout else x
