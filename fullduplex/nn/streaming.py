"""The streaming protocol shared by every stateful module.

A module that keeps state between calls subclasses :class:`StreamingModule` and implements
``init_state(batch_size, device, dtype)``, returning a small state object (a dataclass deriving from
:class:`StreamingState`). ``with module.streaming(batch_size):`` creates the state of the module and of every
streaming descendant; leaving the block drops it, so the next call runs in batch (offline) mode again.
``module.reset(mask)`` clears the chosen batch items everywhere below ``module`` and leaves the others untouched.

Resets never read tensor values on the host: masks are applied with ``torch.where``-style ops so that a step
can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StreamingState:
    """Base class of per-module streaming state. ``batch_size`` is fixed for the life of the state."""

    batch_size: int

    def reset(self, mask: torch.Tensor) -> None:
        """Return the items where ``mask`` [B] is True to their initial state."""
        raise NotImplementedError

    def snapshot_item(self, item: int) -> object:
        """A self-contained copy of item ``item``'s state (host work: not for the hot path)."""
        raise NotImplementedError(f"{type(self).__name__} has no snapshot_item")

    def restore_item(self, item: int, snap: object) -> None:
        """Write ``snap`` (from :meth:`snapshot_item` of any item, at any time) into item ``item``."""
        raise NotImplementedError(f"{type(self).__name__} has no restore_item")

    def copy_item(self, src: int, dst: int) -> None:
        """Item ``dst`` becomes a copy of item ``src`` (in place, no host sync needed)."""
        raise NotImplementedError(f"{type(self).__name__} has no copy_item")


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
            yield
        finally:
            for module in modules:
                module._streaming_state = None
                module._streaming_active = False

    def _named_states(self) -> Iterator[tuple[str, StreamingState]]:
        if not self.is_streaming:
            raise RuntimeError("per-item state is only valid inside a `with module.streaming(batch_size):` block")
        for name, module in self.named_modules():
            if isinstance(module, StreamingModule) and module._streaming_state is not None:
                yield name, module._streaming_state

    def snapshot_item(self, item: int) -> dict[str, object]:
        """Item ``item``'s state in every streaming descendant, keyed by the submodule's qualified name."""
        return {name: state.snapshot_item(item) for name, state in self._named_states()}

    def restore_item(self, item: int, snap: dict[str, object]) -> None:
        """Write a :meth:`snapshot_item` result into item ``item``."""
        states = dict(self._named_states())
        if states.keys() != snap.keys():
            raise ValueError(f"snapshot holds states {sorted(snap)}; this module has {sorted(states)}")
        for name, state in states.items():
            state.restore_item(item, snap[name])

    def copy_item(self, src: int, dst: int) -> None:
        """Item ``dst`` becomes a copy of item ``src`` in every streaming descendant."""
        for _, state in self._named_states():
            state.copy_item(src, dst)

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


def _state_device(state: StreamingState) -> torch.device:
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
