"""Training windows: fixed-length segments cut from the shards, chosen as a pure function of (seed, step, index).

A global step consumes ``batch_size x world_size x grad_accumulation`` windows. Window ``g`` of step ``s`` is drawn
with its own generator seeded by ``(seed, s, g)``: an item with probability proportional to its length, then a
uniformly random start. Rank ``r`` of micro-batch ``m`` takes windows ``g = (m x world + r) x batch_size + b``, so
the windows of a step do not depend on how the global batch is split across ranks and micro-batches, and the
data position to resume from is the step number alone.

Validation walks the held-out items in order, in non-overlapping windows, and wraps around: it never runs dry, and
its position is one counter saved with the checkpoints.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..data.shards import ShardDataset
from ..lm.model import ZERO_TOKEN


def cut_window(codes: torch.Tensor, start: int, frames: int) -> torch.Tensor:
    """``codes`` [K, T] → [K, frames] from ``start``; past the end filled with ZERO_TOKEN (no input, no loss)."""
    window = codes[:, start : start + frames]
    if window.shape[1] < frames:
        pad = torch.full((codes.shape[0], frames - window.shape[1]), ZERO_TOKEN, dtype=codes.dtype)
        window = torch.cat([window, pad], dim=1)
    return window


class TrainWindows:
    """Random windows of ``frames`` frames from a :class:`ShardDataset`, reproducible per (seed, step, index)."""

    def __init__(self, dataset: ShardDataset, frames: int, seed: int) -> None:
        if len(dataset) == 0:
            raise ValueError(f"no items in the training shards {[str(f) for f in dataset.files]}")
        self.frames, self.seed = frames, seed
        self.codes = lru_cache(maxsize=32)(lambda j: dataset[j]["codes"])  # conversations are read many times
        lengths = np.maximum(np.asarray(dataset.frames, dtype=np.float64), 1.0)
        self.cumulative = np.cumsum(lengths / lengths.sum())
        self.lengths = dataset.frames

    def locate(self, step: int, index: int) -> tuple[int, int]:
        """(item, first frame) of window ``index`` of global step ``step``."""
        rng = np.random.Generator(np.random.PCG64([self.seed, step, index]))
        j = min(int(np.searchsorted(self.cumulative, rng.random(), side="right")), len(self.lengths) - 1)
        return j, int(rng.integers(0, max(self.lengths[j] - self.frames, 0) + 1))

    def window(self, step: int, index: int) -> torch.Tensor:
        """Window ``index`` of global step ``step``: [K, frames] int64, read from its item only."""
        j, start = self.locate(step, index)
        return cut_window(self.codes(j), start, self.frames)

    def batch(self, step: int, micro: int, rank: int, world: int, batch_size: int) -> torch.Tensor:
        """[B, K, frames] for ``rank``'s share of micro-batch ``micro`` of ``step``."""
        first = (micro * world + rank) * batch_size
        return torch.stack([self.window(step, first + b) for b in range(batch_size)])


class ValidWindows:
    """Non-overlapping windows of the held-out items in order, cycling forever."""

    def __init__(self, dataset: ShardDataset, frames: int) -> None:
        self.frames = frames
        self.codes = lru_cache(maxsize=4)(lambda j: dataset[j]["codes"])
        self.windows = [(j, s) for j, t in enumerate(dataset.frames) for s in range(0, max(t, 1), frames)]
        if not self.windows:
            raise ValueError(f"no items in the validation shards {[str(f) for f in dataset.files]}")

    def batch(self, position: int, rank: int, world: int, batch_size: int) -> torch.Tensor:
        """Windows ``position + rank x batch_size ...`` (modulo the number of windows): [B, K, frames]."""
        out = []
        for b in range(batch_size):
            j, start = self.windows[(position + rank * batch_size + b) % len(self.windows)]
            out.append(cut_window(self.codes(j), start, self.frames))
        return torch.stack(out)
