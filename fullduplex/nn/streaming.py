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
