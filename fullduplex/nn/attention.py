"""Causal multi-head self-attention with a sliding context and a ring KV cache for streaming.

A query at absolute position p attends to keys at positions p - context + 1 .. p. In streaming mode each layer
keeps its keys and values in a ring buffer; which slot holds which absolute position (per batch item, so one item
can be reset without touching the others), where the next step is written, and the resulting mask are the same
for every layer, so the transformer keeps them once (:class:`~fullduplex.nn.transformer.KVIndex`) and hands each
layer the slots to write and the mask to apply. The ring holds ``context - 1 + T`` slots for calls of T steps, so
streaming sees exactly the keys that batch mode sees. The LM's Temporal Transformer uses a paged cache instead
(:mod:`~fullduplex.nn.paged_kv`): the transformer owns its pool and hands each layer its store and the rows to
write and read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .paged_kv import KVStore
from .rope import apply_rope
from .streaming import StreamingModule, StreamingState


def initial_capacity(context: int) -> int:
    """Ring slots allocated when streaming starts: enough for calls of one step (the LM, laid out as the
    reference's ring, so that GPU kernels see the same shapes); Mimi's two-step calls grow it once."""
    return context


@dataclass
class KVCacheState(StreamingState):
    keys: torch.Tensor  # [B, H, N, D]
    values: torch.Tensor  # [B, H, N, D]
    index: object = None  # the transformer's KVIndex (set by `link_states`): which slot holds which position
    item_tensors = ("keys", "values")

    def reset(self, mask: torch.Tensor) -> None:
        """Nothing to clear: the transformer's :class:`KVIndex` marks the item's slots empty."""

    def snapshot_item(self, item: int) -> dict[str, torch.Tensor]:
        """The item's written slots, oldest position first: keys/values [H, n, D] (reads positions on the host)."""
        order = self.index.item_order(item)
        return {"keys": self.keys[item][:, order].clone(), "values": self.values[item][:, order].clone()}

    def restore_item(self, item: int, snap: dict[str, torch.Tensor]) -> None:
        """The snapshot's entries go to the ring slots just behind the shared write slot (see KVIndex)."""
        slots = self.index.restore_slots(snap["keys"].shape[1])
        self.keys[item].index_copy_(1, slots, snap["keys"].to(self.keys.device, self.keys.dtype))
        self.values[item].index_copy_(1, slots, snap["values"].to(self.values.device, self.values.dtype))

    def grow(self, order: torch.Tensor, capacity: int) -> None:
        """Re-lay the ring with slots ``order`` (oldest first) followed by empty slots up to ``capacity``."""
        extra = capacity - self.keys.shape[2]
        pad = (0, 0, 0, extra)
        self.keys = F.pad(self.keys[:, :, order], pad)
        self.values = F.pad(self.values[:, :, order], pad)


def sliding_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, context: int | None) -> torch.Tensor:
    """[B, 1, Tq, Tk] bool: key valid (position >= 0), not in the future, and within ``context`` steps."""
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask &= delta < context
    return mask[:, None]


class StreamingSelfAttention(StreamingModule):
    """``in_proj`` (rows q | k | v, no bias) → RoPE → sliding-window causal attention → ``out_proj``.

    ``kv_repeat`` > 1: grouped-query attention. Keys and values have ``num_heads // kv_repeat`` heads (so
    ``in_proj`` has ``dim + 2 * dim // kv_repeat`` rows) and the cache holds only those; query head h reads
    key/value head ``h // kv_repeat``.
    """

    def __init__(self, dim: int, num_heads: int, context: int | None, block: int = 256, kv_repeat: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        if kv_repeat < 1 or num_heads % kv_repeat:
            raise ValueError(f"num_heads {num_heads} not divisible by kv_repeat {kv_repeat}")
        self.num_heads, self.head_dim, self.context, self.block = num_heads, dim // num_heads, context, block
        self.kv_repeat, self.kv_heads = kv_repeat, num_heads // kv_repeat
        self.in_proj = nn.Linear(dim, dim + 2 * self.kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.paged = False  # set by the transformer: its PagedKV holds the keys and values
        self.shared_index = None  # set by the transformer when streaming starts (the ring's KVIndex)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCacheState:
        if self.context is None:
            raise ValueError("streaming attention needs a finite context")
        if self.paged:
            return None  # the transformer's PagedKV holds this layer's store
        shape = (batch_size, self.kv_heads, initial_capacity(self.context), self.head_dim)
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return KVCacheState(batch_size, zeros, zeros.clone(), self.shared_index)

    def cache_address(self) -> int | None:
        """Where the ring's keys live (changes when the ring grows); None outside streaming."""
        state = self._streaming_state
        return None if state is None else state.keys.data_ptr()

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor] | None = None,
        slots: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        store: KVStore | None = None,
        read: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` [B, T, D] → [B, T, D].

        ``positions`` [B, T]: absolute step of each input; ``rotation``: from
        :func:`~fullduplex.nn.rope.rope_rotation` (None: no positional rotation). Streaming only: ``slots`` [T]
        where this call's keys go in the ring, and ``mask`` [B, 1, T, N] over the ring's first N slots; paged:
        ``store`` the layer's pool, ``slots`` [B * T] its rows to write, ``read`` [B * N] the rows to attend to.
        """
        B, T, D = x.shape
        if self.kv_repeat == 1:
            qkv = self.in_proj(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
            if rotation is not None:
                q, k = apply_rope(qkv[:2], rotation)
                v = qkv[2]
            else:
                q, k, v = qkv
        else:
            projected = self.in_proj(x)
            q = projected[..., :D].view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
            k, v = projected[..., D:].view(B, T, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, Hkv, T, D]
            if rotation is not None:
                q, k = apply_rope(q, rotation), apply_rope(k, rotation)
        state = self._streaming_state
        if store is not None:
            out = self._attend_paged(q, k, v, store, slots, read, mask)
        elif state is None:
            out = self._attend_batch(q, k, v, positions)
        else:
            if slots is None or mask is None:
                raise ValueError("streaming attention needs the ring slots and mask from its transformer")
            state.keys.index_copy_(2, slots, k)
            state.values.index_copy_(2, slots, v)
            used = mask.shape[-1]  # the leading slots the transformer lets this step see
            keys, values = self._repeat(state.keys[:, :, :used]), self._repeat(state.values[:, :, :used])
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        """Key/value heads → one per query head: [B, Hkv, N, D] → [B, H, N, D] (each repeated ``kv_repeat`` times)."""
        return x if self.kv_repeat == 1 else x.repeat_interleave(self.kv_repeat, 1)

    def _attend_paged(self, q, k, v, store: KVStore, write: torch.Tensor, read: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Write this call's keys and values [B, H, T, d] at pool rows ``write``, attend to the rows ``read``."""
        B, H, T, d = k.shape  # H: key/value heads
        store.write(write, k.transpose(0, 1).reshape(H, B * T, d), v.transpose(0, 1).reshape(H, B * T, d))
        keys, values = store.read(read)  # [H, B * N, d]
        if self.kv_repeat > 1:
            keys, values = keys.repeat_interleave(self.kv_repeat, 0), values.repeat_interleave(self.kv_repeat, 0)
            H = self.num_heads
        # Heads as the outer batch dimension: the gathered rows stay contiguous per (head, item), which CPU SDPA
        # runs 3x faster at B = 8 than a transposed [B, H, N, d] view (same values, bit for bit).
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), keys.view(H, B, -1, d), values.view(H, B, -1, d), attn_mask=mask.transpose(0, 1)
        )  # [H, B, T, d]
        return out.transpose(0, 1)

    def _attend_batch(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Blockwise over queries so memory stays linear in T: each block sees only its window of keys."""
        T = q.shape[2]
        k, v = self._repeat(k), self._repeat(v)
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


class CrossAttention(nn.Module):
    """Attention from a stream to a fixed set of conditions (Kyutai TTS's voice embeddings): no mask, no
    positions. ``in_proj`` rows q | k | v (the released layout); keys and values of the conditions are computed
    once (:meth:`keys_values`) and reused every step."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def keys_values(self, source: torch.Tensor) -> torch.Tensor:
        """``source`` [B, Tc, D] → keys and values [2, B, H, Tc, d]."""
        B, Tc, D = source.shape
        kv = F.linear(source, self.in_proj.weight[D:])
        return kv.view(B, Tc, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """``x`` [B, T, D], ``kv`` [2, B, H, Tc, d] → [B, T, D]."""
        B, T, D = x.shape
        q = F.linear(x, self.in_proj.weight[:D]).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, kv[0].to(q.dtype), kv[1].to(q.dtype))
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))
