"""A paged KV cache: each batch item holds keys and values only for the steps it has had, in fixed-size pages taken
from one pool shared by the whole batch.

Layout. Item b sees its steps through a logical ring of ``ring = context - 1 + max_steps`` slots (step p lives in
slot ``p % ring``, as in the reference's ring for an item that started with the batch); slot s is row
``s % page_size`` of logical page ``s // page_size``, and ``table[b, s // page_size]`` names the physical page
(-1: none yet). A page is taken from the pool the first time the item writes into it and goes back when the item
is reset, so a session holds ``ceil(min(steps, ring) / page_size)`` pages; past the context it reuses its own
pages (the sliding window). Which step a slot holds follows from the item's offset alone, so there is no
per-slot position table.

Everything a step does is tensor work on the device (allocation is a cumsum over a stack of free pages): no host
sync, fixed shapes, so a step can be captured in a CUDA graph. The pool is allocated up front (``pages``); if it
runs dry the overflowing writes land on a spare sink page and ``overflow`` turns True (raised at once on CPU; on
GPU the server sizes admission with :meth:`PagedKV.pages_for`). Keys and values can be stored quantized
(``int8``, ``fp8`` = float8 e4m3) with one scale per token and head, dequantized when read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .streaming import StreamingState, masked_zero_

KV_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def parse_kv_dtype(name: str | None) -> torch.dtype | None:
    """``None`` / ``"auto"``: the model's dtype; ``"int8"``, ``"fp8"`` (float8 e4m3): quantized."""
    if name in (None, "auto"):
        return None
    if name not in KV_DTYPES:
        raise ValueError(f"unknown KV dtype {name!r}; choose auto, {', '.join(KV_DTYPES)}")
    return KV_DTYPES[name]


class KVStore:
    """One layer's keys and values: ``keys`` / ``values`` [H, S, D] over the pool's S = (pages + 1) x page_size
    slot rows (the last page is the sink), stored in ``dtype`` (quantized: with ``*_scale`` [H, S, 1] fp32)."""

    def __init__(self, heads: int, slots: int, head_dim: int, device: torch.device, dtype: torch.dtype,
                 stored: torch.dtype | None) -> None:
        self.dtype = dtype  # what attention computes in
        self.stored = stored or dtype
        # Zeros, not empty: rows never written are masked, but a masked NaN would still poison attn @ V.
        self.keys = torch.zeros(heads, slots, head_dim, device=device, dtype=self.stored)
        self.values = torch.zeros_like(self.keys)
        self.quantized = self.stored in _QMAX
        if self.quantized:
            self.key_scale = torch.zeros(heads, slots, 1, device=device, dtype=torch.float32)
            self.value_scale = torch.zeros_like(self.key_scale)

    def tensors(self) -> list[torch.Tensor]:
        return [self.keys, self.values] + ([self.key_scale, self.value_scale] if self.quantized else [])

    @property
    def bytes_per_slot(self) -> int:
        return sum(t.element_size() * t.shape[0] * t.shape[2] for t in self.tensors())

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float()
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / _QMAX[self.stored]
        q = x / scale
        if self.stored == torch.int8:
            q = q.round().clamp(-127, 127)
        return q.to(self.stored), scale

    def write(self, rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``keys`` / ``values`` [H, N, D] at slot rows ``rows`` [N]."""
        if not self.quantized:
            self.keys.index_copy_(1, rows, keys.to(self.stored))
            self.values.index_copy_(1, rows, values.to(self.stored))
            return
        for data, scales, x in ((self.keys, self.key_scale, keys), (self.values, self.value_scale, values)):
            q, scale = self._quantize(x)
            _raw(data).index_copy_(1, rows, _raw(q))
            scales.index_copy_(1, rows, scale)

    def read(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [H, N, D] of slot rows ``rows`` [N], in the compute dtype."""
        if not self.quantized:
            return self.keys.index_select(1, rows), self.values.index_select(1, rows)
        return tuple(
            (_raw(data).index_select(1, rows).view(data.dtype).float() * scales.index_select(1, rows)).to(self.dtype)
            for data, scales in ((self.keys, self.key_scale), (self.values, self.value_scale))
        )

    def copy_rows(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        for t in self.tensors():
            _raw(t).index_copy_(1, dst, _raw(t).index_select(1, src))


def _raw(t: torch.Tensor) -> torch.Tensor:
    """fp8 tensors as their bytes: CPU kernels lack index_copy_ / index_select for float8."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


@dataclass
class KVItemSnapshot:
    """One item's cached window: ``offset`` (its next step) and, per layer, the stored rows of steps
    ``offset - n .. offset - 1`` in order, ``data[layer]`` = the layer's tensors [H, n, ...] (see KVStore)."""

    offset: int
    data: list[list[torch.Tensor]]

    @property
    def steps(self) -> int:
        return self.data[0][0].shape[1] if self.data else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.data for t in layer)


@dataclass
class PagedKV(StreamingState):
    """The paged cache of a whole transformer (every layer's :class:`KVStore` and the shared page bookkeeping)."""

    offset: torch.Tensor  # [B] absolute step of each item's next input
    table: torch.Tensor  # [B, pages_per_item] physical page of each logical page, -1 when none
    free: torch.Tensor  # [pages + 1] stack of free pages (the first `free_count`), last entry a scratch cell
    free_count: torch.Tensor  # [1]
    overflow: torch.Tensor  # [1] bool: a write found the pool empty since the streaming block began
    active: torch.Tensor  # [B] bool: items that take pages (idle ones write to the sink and hold none)
    stores: list[KVStore]
    page_size: int
    ring: int  # logical slots per item: context - 1 + max_steps
    context: int
    filled: int = 0  # host side: logical slots any item may have written (CPU reads only these)
    item_tensors = ("offset", "table", "active")  # one row per item; the pool and free stack are shared

    def prefix(self, n: int) -> PagedKV:
        """The same cache seen by its first ``n`` items (views: writes go through; pages come from the shared
        pool), for a step that runs on the leading rows only."""
        return replace(self, batch_size=n, **{name: getattr(self, name)[:n] for name in self.item_tensors})

    def absorb(self, view: PagedKV) -> None:
        """After a step on a :meth:`prefix` view: take back its host-side counter."""
        self.filled = max(self.filled, view.filled)

    @classmethod
    def create(cls, batch_size: int, layers: int, heads: int, head_dim: int, context: int, device: torch.device,
               dtype: torch.dtype, page_size: int = 16, pages: int | None = None, stored: torch.dtype | None = None,
               max_steps: int = 1) -> PagedKV:
        """``pages`` None: enough for every item to hold a full context (today's worst case)."""
        if page_size < 1:
            raise ValueError(f"KV page size must be at least 1, got {page_size}")
        ring = context - 1 + max_steps
        per_item = -(-ring // page_size)
        pages = batch_size * per_item if pages is None else pages
        if pages < 1:
            raise ValueError(f"the KV pool needs at least 1 page, got {pages}")
        slots = (pages + 1) * page_size  # + the sink page
        stores = [KVStore(heads, slots, head_dim, device, dtype, stored) for _ in range(layers)]
        # [pages-1, .., 1, 0, scratch]: pops take from index free_count - 1, so page 0 goes first
        free = torch.cat([torch.arange(pages - 1, -1, -1, device=device), torch.full((1,), pages, device=device)])
        return cls(
            batch_size, torch.zeros(batch_size, dtype=torch.long, device=device),
            torch.full((batch_size, per_item), -1, dtype=torch.long, device=device), free,
            torch.full((1,), pages, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.bool, device=device),
            torch.ones(batch_size, dtype=torch.bool, device=device), stores, page_size, ring, context,
        )

    # --- accounting (host side) ---------------------------------------------------------------------------
    @property
    def pages(self) -> int:
        return self.free.shape[0] - 1

    @property
    def pages_per_item(self) -> int:
        return self.table.shape[1]

    @property
    def page_bytes(self) -> int:
        """Bytes of one page summed over layers (keys, values and their scales)."""
        return self.page_size * sum(s.bytes_per_slot for s in self.stores)

    def pages_for(self, steps: int) -> int:
        """Pages an item holds after ``steps`` steps."""
        return -(-min(steps, self.ring) // self.page_size)

    def item_pages(self, item: int) -> int:
        return int((self.table[item] >= 0).sum())

    def item_bytes(self, item: int) -> int:
        return self.item_pages(item) * self.page_bytes

    def free_pages(self) -> int:
        return int(self.free_count)

    def check(self) -> None:
        """Raise if a write found the pool empty (host sync: call between steps)."""
        if bool(self.overflow):
            raise RuntimeError(
                f"the KV page pool ({self.pages} pages of {self.page_size} steps) ran out: give it more pages "
                "(--kv-pages / configure_kv(pages=...)) or run fewer sessions at once"
            )

    # --- page allocation (device side, no host sync) -----------------------------------------------------
    def _take(self, need: torch.Tensor) -> torch.Tensor:
        """Pop one free page for every True in ``need`` [N] (bool); [N] page ids, -1 where none (pool empty)."""
        rank = need.long().cumsum(0) - 1
        top = self.free_count - 1 - rank  # [N]
        ok = need & (top >= 0)
        self.overflow |= (need & (top < 0)).any()
        pages = self.free[top.clamp(min=0)]
        self.free_count -= ok.long().sum()
        return torch.where(ok, pages, -1)

    def _give_back(self, pages: torch.Tensor) -> None:
        """Push every page id >= 0 of ``pages`` [N] onto the free stack."""
        valid = pages >= 0
        at = torch.where(valid, self.free_count + valid.long().cumsum(0) - 1, self.pages)  # invalid: scratch
        self.free.scatter_(0, at, pages.clamp(min=0))
        self.free_count += valid.long().sum()

    def _release(self, mask: torch.Tensor) -> None:
        """Free every page of the items where ``mask`` [B]; their table rows become empty."""
        self._give_back(torch.where(mask[:, None], self.table, -1).view(-1))
        masked_zero_(self.table, mask, -1)

    def rows(self, logical_pages: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
        """Pool rows of (physical page ``logical_pages`` already looked up) and row ``within``; the sink when -1."""
        return torch.where(logical_pages >= 0, logical_pages, self.pages) * self.page_size + within

    # --- the step ----------------------------------------------------------------------------------------
    def advance(self, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Book ``steps`` new steps for every item: (positions [B, T], write rows [B * T], read rows [B * N],
        mask [B, 1, T, N]). Allocates the pages the new steps enter; N = the logical slots read."""
        device = self.offset.device
        if steps > self.ring - self.context + 1:
            raise ValueError(f"the paged KV cache takes calls of at most {self.ring - self.context + 1} steps, got {steps}")
        positions = self.offset[:, None] + torch.arange(steps, device=device)  # [B, T]
        write = []
        for t in range(steps):
            slot = positions[:, t] % self.ring
            logical = (slot // self.page_size)[:, None]
            page = self.table.gather(1, logical)[:, 0]
            page = torch.where(page >= 0, page, self._take((page < 0) & self.active))
            self.table.scatter_(1, logical, page[:, None])
            write.append(self.rows(page, slot % self.page_size))
        self.offset.add_(steps)
        if device.type == "cpu":
            self.filled = min(self.filled + steps, self.ring)
            self.check()
        else:  # CUDA graphs replay without this Python: read every slot, fixed shapes
            self.filled = self.ring
        used = self.filled
        read, held = self.read_rows(used)
        mask = _window_mask(positions, held, self.context)
        return positions, torch.stack(write, dim=1).view(-1), read, mask

    def read_rows(self, used: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool rows of every item's logical slots 0 .. used - 1 ([B * used]) and the step each holds
        ([B, used], negative when none)."""
        slots = torch.arange(used, device=self.offset.device)
        pages = self.table[:, : -(-used // self.page_size)].repeat_interleave(self.page_size, dim=1)[:, :used]
        last = self.offset[:, None] - 1  # the newest step held
        held = last - (last - slots).remainder(self.ring)
        return self.rows(pages, slots % self.page_size).view(-1), held

    def set_active(self, active: torch.Tensor) -> None:
        """Mark which items [B] (bool) hold a conversation: the others give their pages back and take none
        (their steps write to the sink page; their outputs are meaningless). Tensor work only."""
        self.active.copy_(active)
        self._release(~self.active)

    # --- protocol ----------------------------------------------------------------------------------------
    def reset(self, mask: torch.Tensor) -> None:
        self._release(mask)
        masked_zero_(self.offset, mask)

    def _window(self, item: int) -> tuple[int, torch.Tensor]:
        """(offset, pool rows of the item's held steps, oldest first) — host side."""
        offset = int(self.offset[item])
        steps = torch.arange(max(0, offset - self.ring), offset, device=self.offset.device)
        slots = steps % self.ring
        pages = self.table[item, slots // self.page_size]
        return offset, self.rows(pages, slots % self.page_size)

    def snapshot_item(self, item: int) -> KVItemSnapshot:
        offset, rows = self._window(item)
        return KVItemSnapshot(offset, [[_raw(t).index_select(1, rows).view(t.dtype) for t in s.tensors()] for s in self.stores])

    def restore_item(self, item: int, snap: KVItemSnapshot) -> None:
        n = snap.steps
        if n > self.ring or n < min(snap.offset, self.ring) or len(snap.data) != len(self.stores):
            raise ValueError(
                f"KV snapshot of {n} steps at offset {snap.offset} over {len(snap.data)} layers does not fit this "
                f"cache ({len(self.stores)} layers, a window of {self.ring} steps)"
            )
        mask = torch.zeros(self.batch_size, dtype=torch.bool, device=self.offset.device)
        mask[item] = True
        self.reset(mask)
        self.offset[item] = snap.offset
        steps = torch.arange(snap.offset - n, snap.offset, device=self.offset.device)
        slots = steps % self.ring
        logical = torch.unique(slots // self.page_size)
        self.table[item, logical] = self._take(torch.ones_like(logical, dtype=torch.bool))
        rows = self.rows(self.table[item, slots // self.page_size], slots % self.page_size)
        for store, data in zip(self.stores, snap.data, strict=True):
            for t, d in zip(store.tensors(), data, strict=True):
                _raw(t).index_copy_(1, rows, _raw(d.to(device=t.device, dtype=t.dtype)))
        self.filled = max(self.filled, min(snap.offset, self.ring))
        if self.offset.device.type == "cpu":
            self.check()

    def copy_item(self, src: int, dst: int) -> None:
        """Item ``dst`` becomes a copy of ``src`` (own pages, same slots): tensor work only."""
        if src == dst:
            return
        mask = torch.zeros(self.batch_size, dtype=torch.bool, device=self.offset.device)
        mask[dst] = True
        self._release(mask)
        source = self.table[src]
        pages = self._take(source >= 0)
        self.table[dst] = pages
        within = torch.arange(self.page_size, device=source.device)
        src_rows = self.rows(source[:, None], within).view(-1)
        dst_rows = self.rows(pages[:, None], within).view(-1)
        for store in self.stores:
            store.copy_rows(src_rows, dst_rows)
        self.offset[dst] = self.offset[src]
        if self.offset.device.type == "cpu":
            self.check()


def _window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, context: int) -> torch.Tensor:
    """[B, 1, T, N] bool: key held (step >= 0), not in the future, within ``context`` steps."""
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    return ((k_pos[:, None, :] >= 0) & (delta >= 0) & (delta < context))[:, None]
