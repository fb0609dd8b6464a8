"""A pre-norm streaming transformer: Mimi's flavour (LayerNorm, GELU MLP, layer scale) and the Moshi LM's
(RMSNorm in fp32, SiLU gating, no layer scale).

Positions are absolute and kept per batch item, so ``reset(mask)`` restarts one item at position 0 while the
others carry on. Streaming keeps keys and values in a ring per item (``kv_layout = "ring"``, Mimi) or in pages of a
shared pool (``"paged"``, the LM's Temporal Transformer: see :mod:`~fullduplex.nn.paged_kv` and
:meth:`StreamingTransformer.configure_kv`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention, StreamingSelfAttention, initial_capacity, sliding_mask
from .norm import make_norm
from .paged_kv import PagedKV, parse_kv_dtype
from .rope import rope_frequencies, rope_rotation
from .streaming import StreamingModule, StreamingState, masked_zero_


class LayerScale(nn.Module):
    """Per-channel learnt scale (``x * scale``), initialised to a small constant."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def gating_hidden(dim: int, dim_feedforward: int) -> int:
    """Hidden width of a gated FFN: 2/3 of ``dim_feedforward`` (21/8 of dim when that is 4 x dim)."""
    return (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3


class GatedFFN(nn.Module):
    """``linear_out(silu(gate) * up)`` with ``[gate | up] = linear_in(x)`` (the first half is the gate)."""

    def __init__(self, dim: int, dim_feedforward: int) -> None:
        super().__init__()
        hidden = gating_hidden(dim, dim_feedforward)
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_in(x).unflatten(-1, (2, -1))  # [..., 2, hidden]
        return self.linear_out(F.silu(h[..., 0, :]) * h[..., 1, :])


class TransformerLayer(nn.Module):
    """Pre-norm layer, [B, T, D] → [B, T, D]: ``x += ls1(attn(norm1(x)))``; ``x += ls2(ffn(norm2(x)))``.

    ``ffn="gelu"``: ``linear2(gelu(linear1(.)))`` (Mimi); ``ffn="silu_gating"``: :class:`GatedFFN` (the Moshi LM).
    ``norm``: see :func:`~fullduplex.nn.norm.make_norm`. ``layer_scale`` None: no scale.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dim_feedforward: int,
        context: int | None,
        layer_scale: float | None,
        norm: str = "layer_norm",
        ffn: str = "gelu",
        kv_repeat: int = 1,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.self_attn = StreamingSelfAttention(dim, num_heads, context, kv_repeat=kv_repeat)
        if cross_attention:  # after self-attention, before the FFN; its norm is a LayerNorm whatever `norm` is
            self.norm_cross = nn.LayerNorm(dim, eps=1e-5)
            self.cross_attention = CrossAttention(dim, num_heads)
        else:
            self.cross_attention = None
        self.norm2 = make_norm(norm, dim)
        if ffn == "gelu":
            self.linear1 = nn.Linear(dim, dim_feedforward, bias=False)
            self.linear2 = nn.Linear(dim_feedforward, dim, bias=False)
        elif ffn == "silu_gating":
            self.gating = GatedFFN(dim, dim_feedforward)
        else:
            raise ValueError(f"unknown ffn {ffn!r} (expected 'gelu' or 'silu_gating')")
        self.ffn_kind = ffn
        self.layer_scale_1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.layer_scale_2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        if self.ffn_kind == "gelu":
            return self.linear2(F.gelu(self.linear1(x)))
        return self.gating(x)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor] | None,
        slots: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        store=None,
        read: torch.Tensor | None = None,
        cross_kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``cross_kv`` [2, B, H, Tc, d]: keys and values of the conditions (layers with cross-attention)."""
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), positions, rotation, slots, mask, store, read))
        if self.cross_attention is not None:
            if cross_kv is None:
                raise ValueError("this layer has cross-attention: give the conditions' keys and values")
            x = x + self.cross_attention(self.norm_cross(x), cross_kv)
        return x + self.layer_scale_2(self._ffn(self.norm2(x)))


@dataclass
class KVIndex(StreamingState):
    """What every layer's ring KV cache shares: positions, slot bookkeeping (see ``attention.py``)."""

    offset: torch.Tensor  # [B] absolute position of the next step, per item
    positions: torch.Tensor  # [B, N] absolute position held by each ring slot, -1 when empty
    write: torch.Tensor  # [1] next slot to write, the same for every item (a tensor: CUDA-graph safe)
    filled: int = 0  # slots written at least once (host side); until the ring wraps they are slots 0 .. filled-1
    item_tensors = ("offset", "positions")  # one row per item (the write slot is shared)

    def absorb(self, view: KVIndex) -> None:
        """After a step on a view of the leading rows: take back its host-side counter."""
        self.filled = view.filled

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    item_tensors = ("offset", "positions")

    def reset(self, mask: torch.Tensor) -> None:
        masked_zero_(self.offset, mask)
        masked_zero_(self.positions, mask, -1)

    def item_order(self, item: int) -> torch.Tensor:
        """The item's written slots, oldest position first (reads positions on the host)."""
        positions = self.positions[item]
        slots = torch.nonzero(positions >= 0)[:, 0]
        return slots[torch.argsort(positions[slots])]

    def restore_slots(self, n: int) -> torch.Tensor:
        """[n] the slots just behind the shared write slot, oldest first: where a restored item's n entries go, as
        if it had stepped through them in this ring."""
        if n > self.capacity:
            raise ValueError(f"the snapshot holds {n} positions; the ring holds {self.capacity}")
        return (self.write + torch.arange(-n, 0, device=self.write.device)) % self.capacity

    def snapshot_item(self, item: int) -> dict[str, torch.Tensor]:
        """Positions [n] of the item's written slots, oldest first, and its offset (host reads: not per step)."""
        return {"positions": self.positions[item][self.item_order(item)].clone(), "offset": self.offset[item].clone()}

    def restore_item(self, item: int, snap: dict[str, torch.Tensor]) -> None:
        n = snap["positions"].shape[0]
        slots = self.restore_slots(n)
        if self.positions.device.type == "cpu" and self.filled < self.capacity and int(self.write) < n:
            self.filled = self.capacity  # CPU attends to the first `filled` slots only; these wrap past them
        row = self.positions[item]
        row.fill_(-1)
        row.index_copy_(0, slots, snap["positions"].to(row.device, row.dtype))
        self.offset[item].copy_(snap["offset"].to(self.offset.device))



class StreamingTransformer(StreamingModule):
    """A stack of :class:`TransformerLayer`. ``forward`` takes [B, T, D], or [B, D, T] when ``conv_layout``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        context: int | None,
        max_period: float | None = 10000.0,
        layer_scale: float | None = None,
        norm: str = "layer_norm",
        ffn: str = "gelu",
        conv_layout: bool = False,
        kv_repeat: int = 1,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.conv_layout = conv_layout
        self.context = context
        self.layers = nn.ModuleList(
            TransformerLayer(dim, num_heads, dim_feedforward, context, layer_scale, norm, ffn, kv_repeat, cross_attention)
            for _ in range(num_layers)
        )
        self.head_dim = dim // num_heads
        self.num_heads = num_heads
        self.kv_heads = num_heads // kv_repeat  # heads of the keys and values (grouped-query attention)
        self.max_period = max_period
        self.kv_layout = "ring"
        # True: moshi's window (see `forward`), for the drop-in `python -m fullduplex.run_inference`.
        self.moshi_window = False
        self.kv_page_size, self.kv_pages, self.kv_dtype = 16, None, "auto"
        self.register_buffer("rope_freqs", None, persistent=False)
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        """(Re)compute buffers that checkpoints do not hold, e.g. after building on the meta device."""
        if self.max_period is None:
            return
        device = self.layers[0].self_attn.in_proj.weight.device if len(self.layers) else torch.device("cpu")
        device = torch.device("cpu") if device.type == "meta" else device
        self.rope_freqs = rope_frequencies(self.head_dim, self.max_period, device)

    def configure_kv(self, layout: str | None = None, page_size: int | None = None, pages: int | None = None,
                     dtype: str | None = None) -> None:
        """Choose the streaming KV cache before ``streaming()``: ``layout`` "ring" (a full-context ring per item)
        or "paged" (pages of ``page_size`` steps from a pool of ``pages``; 0: enough for every item's full
        context); ``dtype`` "auto" (the model's), "int8" or "fp8" (paged only; stored quantized). Arguments left
        None keep their value."""
        layout = layout or self.kv_layout
        dtype = self.kv_dtype if dtype is None else dtype
        if layout not in ("ring", "paged"):
            raise ValueError(f"unknown KV layout {layout!r} (expected 'ring' or 'paged')")
        if parse_kv_dtype(dtype) is not None and layout != "paged":
            raise ValueError("a quantized KV cache (--kv-dtype) needs the paged layout")
        if pages is not None and pages < 0:
            raise ValueError(f"the KV pool needs at least 1 page (0: a full context per item), got {pages}")
        if page_size is not None and page_size < 1:
            raise ValueError(f"KV page size must be at least 1, got {page_size}")
        if self.is_streaming:
            raise RuntimeError("configure the KV cache before entering `streaming()`")
        self.kv_layout, self.kv_dtype = layout, dtype
        self.kv_pages = (pages or None) if pages is not None else self.kv_pages
        self.kv_page_size = page_size or self.kv_page_size
        for layer in self.layers:
            layer.self_attn.paged = layout == "paged"

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVIndex | PagedKV:
        if self.context is None:
            raise ValueError("a streaming transformer needs a finite context")
        if self.kv_layout == "paged":
            return PagedKV.create(
                batch_size, len(self.layers), self.kv_heads, self.head_dim, self.context, device, dtype,
                self.kv_page_size, self.kv_pages, parse_kv_dtype(self.kv_dtype),
            )
        index = KVIndex(
            batch_size,
            torch.zeros(batch_size, dtype=torch.long, device=device),
            torch.full((batch_size, initial_capacity(self.context)), -1, dtype=torch.long, device=device),
            torch.zeros(1, dtype=torch.long, device=device),
        )
        for layer in self.layers:  # their states are made next (modules() is pre-order) and restore through it
            layer.self_attn.shared_index = index
        return index

    def link_states(self) -> None:
        if not isinstance(self._streaming_state, KVIndex):  # the paged cache keeps every layer's keys itself
            return
        for layer in self.layers:
            if layer.self_attn.state is not None:
                layer.self_attn.state.index = self._streaming_state

    def _grow(self, index: KVIndex, capacity: int) -> None:
        """Enlarge every layer's ring to ``capacity`` slots, oldest entries first (once per new call length).

        Reads the write slot on the host: growing is not part of a steady-state step. Inside ``rows(n)`` the whole
        batch grows and the views are re-made.
        """
        old = index.capacity
        whole = index.parent or index
        whole.filled = index.filled
        # Before the ring wraps, slots 0 .. filled-1 are the written ones and stay in place; after, the oldest
        # entry sits at the write slot and the ring is unrolled from there.
        start = int(index.write) if index.filled == old else 0
        order = torch.arange(start, start + old, device=index.positions.device) % old
        for layer in self.layers:
            view = layer.self_attn.state
            (view.parent or view).grow(order, capacity)
            if view.parent is not None:
                view.keys, view.values = view.parent.keys[: view.batch_size], view.parent.values[: view.batch_size]
        whole.positions = F.pad(whole.positions[:, order], (0, capacity - old), value=-1)
        index.positions = whole.positions[: index.batch_size]
        index.write.fill_(index.filled)

    def cross_keys_values(self, source: torch.Tensor) -> torch.Tensor:
        """Keys and values of every layer's cross-attention for conditions ``source`` [B, Tc, D]:
        [B, L, 2, H, Tc, d] (items first, so a generator keeps them per item)."""
        return torch.stack([layer.cross_attention.keys_values(source) for layer in self.layers], dim=0).permute(2, 0, 1, 3, 4, 5)

    def forward(self, x: torch.Tensor, cross_kv: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, T, D] (or [B, D, T]); ``cross_kv`` [B, L, 2, H, Tc, d] from :meth:`cross_keys_values`, for
        transformers with cross-attention."""
        if self.conv_layout:
            x = x.transpose(1, 2)  # [B, D, T] -> [B, T, D]
        B, T, _ = x.shape
        steps = torch.arange(T, device=x.device)
        index = self._streaming_state
        slots = mask = read = None
        if index is None:
            positions = steps.expand(B, T)
        elif isinstance(index, PagedKV):
            positions, slots, read, mask = index.advance(T)
        else:
            if self.moshi_window and T > index.capacity:
                raise ValueError(f"moshi's window takes at most {index.capacity} steps per call, got {T}")
            positions = index.offset[:, None] + steps  # [B, T]
            index.offset.add_(T)
            if index.capacity < self.context - 1 + T and not self.moshi_window:
                self._grow(index, self.context - 1 + T)
            slots = (steps + index.write) % index.capacity
            index.positions.index_copy_(1, slots, positions)
            index.write.add_(T).remainder_(index.capacity)
            # On CPU, attend only to the slots written so far (a conversation's first minutes read a fraction of
            # the cache). On GPU keep the full ring, whose fixed shapes a CUDA graph can replay; replays do not run
            # this Python code, so there the ring always counts as full (and `_grow` unrolls it from the write slot).
            if x.device.type == "cpu" and not self.moshi_window:
                index.filled = min(index.filled + T, index.capacity)
            else:
                index.filled = index.capacity
            used = index.filled
            mask = sliding_mask(positions, index.positions[:, :used], self.context)  # [B, 1, T, used], all layers
        rotation = None if self.rope_freqs is None else rope_rotation(positions, self.rope_freqs)
        paged = isinstance(index, PagedKV)
        layer_kv = None if cross_kv is None else cross_kv.transpose(0, 1)  # [L, B, 2, ...]
        for i, layer in enumerate(self.layers):
            kv = None if layer_kv is None else layer_kv[i].transpose(0, 1)  # [2, B, H, Tc, d]
            x = layer(x, positions, rotation, slots, mask, index.stores[i] if paged else None, read, kv)
        return x.transpose(1, 2) if self.conv_layout else x
