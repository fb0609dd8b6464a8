"""The streaming protocol shared by every stateful module.

A module that keeps state between calls subclasses :class:`StreamingModule` and implements
``init_state(batch_size, device, dtype)``, returning a small state object (a dataclass deriving from
:class:`StreamingState`). ``with module.streaming(batch_size):`` creates the state of the module and of every
streaming descendant; leaving the block drops it, so the next call runs in batch (offline) mode again.
``module.reset(mask)`` clears the chosen batch items everywhere below ``module`` and leaves the others untouched.

Resets never read tensor values on the host: masks are applied with ``torch.where``-style ops so that a step
can be captured in a CUDA graph.

Per item, every state can be copied out and back (``snapshot_item`` / ``restore_item``, e.g. a persona's prompt
cached once and written into any batch item) and copied between items (``copy_item``, e.g. to compact the live
items into the leading rows). ``with module.rows(n):`` runs the module on the first ``n`` items only: every
state is swapped for a view of its leading ``n`` rows (no copy), so a batch of ``n`` costs what ``n`` costs while
the state keeps room for ``batch_size`` items.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn


@dataclass
class StreamingState:
    """Base class of per-module streaming state. ``batch_size`` is fixed for the life of the state."""

    batch_size: int
    # Set on a view made by `prefix`: the whole-batch state it shows the leading rows of.
    parent: StreamingState | None = field(default=None, init=False, repr=False, compare=False)
    # Tensors with one row per item along dim 0 (the default per-item methods and `prefix` use them).
    item_tensors: ClassVar[tuple[str, ...]] = ()

    def reset(self, mask: torch.Tensor) -> None:
        """Return the items where ``mask`` [B] is True to their initial state."""
        raise NotImplementedError

    # --- per item -----------------------------------------------------------------------------------------
    def snapshot_item(self, item: int) -> object:
        """A self-contained copy of item ``item``'s state (host or device tensors)."""
        if not self.item_tensors:
            raise NotImplementedError(f"{type(self).__name__} does not implement snapshot_item")
        return {name: getattr(self, name)[item].clone() for name in self.item_tensors}

    def restore_item(self, item: int, snap: object) -> None:
        """Write a snapshot of this state type into item ``item`` (any item, any time)."""
        if not self.item_tensors:
            raise NotImplementedError(f"{type(self).__name__} does not implement restore_item")
        for name in self.item_tensors:
            target = getattr(self, name)[item]
            target.copy_(snap[name].to(target.device, target.dtype))

    def copy_item(self, src: int, dst: int) -> None:
        """Item ``dst`` becomes a copy of item ``src``, in place, without a host sync."""
        if not self.item_tensors:
            raise NotImplementedError(f"{type(self).__name__} does not implement copy_item")
        if src != dst:
            for name in self.item_tensors:
                tensor = getattr(self, name)
                tensor[dst].copy_(tensor[src])

    # --- leading rows ---------------------------------------------------------------------------------------
    def prefix(self, n: int) -> StreamingState:
        """A state of the same type whose per-item tensors are views of the first ``n`` rows (writes go through)."""
        if not self.item_tensors:
            raise NotImplementedError(f"{type(self).__name__} does not implement prefix")
        view = replace(self, batch_size=n, **{name: getattr(self, name)[:n] for name in self.item_tensors})
        view.parent = self
        return view

    def absorb(self, view: StreamingState) -> None:
        """After a ``rows(n)`` block: take back what ``view`` changed outside its tensors (host-side counters)."""


def masked_zero_(tensor: torch.Tensor, mask: torch.Tensor, value: float | int = 0) -> None:
    """In place: ``tensor[b] = value`` wherever ``mask[b]``, without a host sync. ``tensor`` is [B, ...]."""
    shape = (mask.shape[0],) + (1,) * (tensor.dim() - 1)
    tensor.masked_fill_(mask.view(shape), value)


class StreamingModule(nn.Module):
    """An ``nn.Module`` whose forward may keep state between calls (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming_state: StreamingState | None = None
        self._streaming_active = False

    # --- to implement -------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> StreamingState | None:
        """Fresh state for ``batch_size`` items; ``None`` for modules that only hold stateful children."""
        return None

    # --- protocol -----------------------------------------------------------------------------------------
    @property
    def state(self) -> StreamingState | None:
        """The current state, or ``None`` outside a ``streaming`` block."""
        return self._streaming_state

    @property
    def is_streaming(self) -> bool:
        return self._streaming_active

    def _streaming_modules(self) -> Iterator[StreamingModule]:
        for module in self.modules():
            if isinstance(module, StreamingModule):
                yield module

    def link_states(self) -> None:
        """Called once every state of a ``streaming`` block exists (e.g. to let states find each other)."""

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        for tensor in list(self.parameters()) + list(self.buffers()):
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    @contextmanager
    def streaming(self, batch_size: int = 1) -> Iterator[None]:
        """Run the module and all its streaming children statefully for ``batch_size`` items."""
        if batch_size < 1:
            raise ValueError(f"streaming batch_size must be >= 1, got {batch_size}")
        modules = list(self._streaming_modules())
        busy = [m for m in modules if m.is_streaming]
        if busy:
            raise RuntimeError(
                f"{type(busy[0]).__name__} is already streaming; leave its `streaming()` block before opening "
                "another one (use `reset(mask)` to restart items)"
            )
        device, dtype = self._device_dtype()
        try:
            for module in modules:
                module._streaming_active = True
                module._streaming_state = module.init_state(batch_size, device, dtype)
            for module in modules:
                module.link_states()
            yield
        finally:
            for module in modules:
                module._streaming_state = None
                module._streaming_active = False

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Reset the batch items where ``mask`` [B] (bool) is True; all items when ``mask`` is None.

        Only valid inside a ``streaming`` block. Items not in ``mask`` are not touched.
        """
        if not self.is_streaming:
            raise RuntimeError("reset() is only valid inside a `with module.streaming(batch_size):` block")
        for module in self._streaming_modules():
            state = module._streaming_state
            if state is None:
                continue
            if mask is None:
                item_mask = torch.ones(state.batch_size, dtype=torch.bool)
            else:
                item_mask = mask
            if item_mask.shape != (state.batch_size,):
                raise ValueError(
                    f"reset mask must have shape [{state.batch_size}] (the streaming batch size), "
                    f"got {tuple(item_mask.shape)}"
                )
            device = _state_device(state)
            state.reset(item_mask.to(device=device, dtype=torch.bool))


    def _states(self) -> Iterator[tuple[str, StreamingState]]:
        if not self.is_streaming:
            raise RuntimeError("per-item state is only valid inside a `with module.streaming(batch_size):` block")
        for name, module in self.named_modules():
            if isinstance(module, StreamingModule) and module._streaming_state is not None:
                yield name, module._streaming_state

    def snapshot_item(self, item: int) -> dict[str, object]:
        """Item ``item``'s state in this module and every streaming descendant, keyed by qualified name."""
        return {name: state.snapshot_item(item) for name, state in self._states()}

    def restore_item(self, item: int, snap: dict[str, object]) -> None:
        """Write ``snap`` (from :meth:`snapshot_item` of a module of the same structure) into item ``item``."""
        states = dict(self._states())
        if set(states) != set(snap):
            raise ValueError(f"the snapshot holds states {sorted(snap)}; this module streams {sorted(states)}")
        for name, state in states.items():
            state.restore_item(item, snap[name])

    def copy_item(self, src: int, dst: int) -> None:
        """Item ``dst`` becomes a copy of item ``src`` everywhere below this module (no host sync)."""
        for _, state in self._states():
            for i in (src, dst):
                if not 0 <= i < state.batch_size:
                    raise IndexError(f"item {i} is outside the streaming batch of {state.batch_size}")
            state.copy_item(src, dst)

    @contextmanager
    def rows(self, n: int) -> Iterator[None]:
        """Inside: this module and its streaming descendants run on their first ``n`` items only (calls take
        batches of ``n``); items ``n ..`` are not touched."""
        modules = [m for m in self._streaming_modules() if m._streaming_state is not None]
        if not modules:
            raise RuntimeError("rows() is only valid inside a `with module.streaming(batch_size):` block")
        full = [m._streaming_state for m in modules]
        if not 1 <= n <= full[0].batch_size:
            raise ValueError(f"rows must be in 1..{full[0].batch_size} (the streaming batch size), got {n}")
        views = [state.prefix(n) for state in full]
        try:
            for module, view in zip(modules, views, strict=True):
                module._streaming_state = view
            yield
        finally:
            for module, state, view in zip(modules, full, views, strict=True):
                module._streaming_state = state
                state.absorb(view)

    def drop_streaming(self) -> None:
        """Forget the streaming state of this module and its descendants (for a copy made while streaming)."""
        for module in self._streaming_modules():
            module._streaming_state, module._streaming_active = None, False


def _state_device(state: StreamingState) -> torch.device:
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
