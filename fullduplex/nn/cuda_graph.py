"""Replay a fixed-shape streaming step from a CUDA graph, as the per-frame path on GPU.

Streaming state is updated in place everywhere in ``fullduplex.nn``, so one captured step replays correctly
frame after frame. The first call runs eagerly (it warms up kernels and lets caches reach their steady size),
the second captures the step and replays it, later calls only replay.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


class GraphedStep:
    """Wrap ``fn(x) -> y`` (same shapes at every call, CUDA tensors) so that it runs from a CUDA graph."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: torch.Tensor | None = None
        self.static_out: torch.Tensor | None = None
        self.failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.failed or self.calls == 1:
            return self.fn(x)
        if self.graph is None:
            static_in = x.clone()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    static_out = self.fn(static_in)
            except RuntimeError as e:  # capture recorded nothing, so the state is untouched: run eagerly
                warnings.warn(f"CUDA graph capture failed, running eagerly: {e}", stacklevel=2)
                self.failed = True
                return self.fn(x)
            self.graph, self.static_in, self.static_out = graph, static_in, static_out
        else:
            self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out.clone()
