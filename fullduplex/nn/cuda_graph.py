"""Replay a fixed-shape streaming step from a CUDA graph, as the per-frame path on GPU.

Streaming state is updated in place everywhere in ``fullduplex.nn``, so one captured step replays correctly
frame after frame. The first call runs eagerly (it warms up kernels and lets caches reach their steady size),
the second captures the step and replays it, later calls only replay. Inputs and outputs are tensors or tuples
of tensors; outputs are cloned, since the next replay overwrites them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


def _clone(out: Any) -> Any:
    return tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()


class GraphedStep:
    """Wrap ``fn(*tensors) -> tensor or tuple of tensors`` (same shapes every call, CUDA) to run from a graph."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: tuple[torch.Tensor, ...] = ()
        self.static_out: Any = None
        self.failed = False

    def __call__(self, *args: torch.Tensor) -> Any:
        self.calls += 1
        if self.failed or self.calls == 1:
            return self.fn(*args)
        if self.graph is None:
            static_in = tuple(a.clone() for a in args)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    static_out = self.fn(*static_in)
            except RuntimeError as e:  # capture recorded nothing, so the state is untouched: run eagerly
                warnings.warn(f"CUDA graph capture failed, running eagerly: {e}", stacklevel=2)
                self.failed = True
                return self.fn(*args)
            self.graph, self.static_in, self.static_out = graph, static_in, static_out
        else:
            for static, arg in zip(self.static_in, args, strict=True):
                static.copy_(arg)
        self.graph.replay()
        return _clone(self.static_out)
