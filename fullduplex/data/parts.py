"""Splitting a manifest's work into N parts, one per process (a Slurm array task, a torchrun rank, a machine).

A part is chosen by ``--num-shards N --shard-index I`` or, when neither is given and the process runs under
torchrun (``RANK`` and ``WORLD_SIZE`` in the environment), by ``I = RANK`` and ``N = WORLD_SIZE``. Every process
computes the same split from the manifest alone: :func:`assign` deals units of work (a shard's conversations for
``data prepare``, a file for ``data annotate``) greedily by their duration, longest first, each to the part with
the least audio so far; ties go to the earlier unit and to the lower part. The split depends only on the
durations the manifest declares and their order, never on the files themselves, the machine or the time.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import FullduplexError


@dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count``."""

    index: int
    count: int

    @property
    def folder_name(self) -> str:
        """Where this part writes under ``--output``: ``part-00003-of-00008``."""
        return f"part-{self.index:05d}-of-{self.count:05d}"

    def __str__(self) -> str:
        return f"part {self.index} of {self.count}"


def resolve_part(num_shards: int | None, shard_index: int | None, env: Mapping[str, str] | None = None) -> Part | None:
    """The part this process does: the explicit options, else torchrun's ``RANK`` / ``WORLD_SIZE`` from ``env``
    (default ``os.environ``), else None (the whole manifest in one process). Raises :class:`FullduplexError` for
    an inconsistent choice."""
    env = os.environ if env is None else env
    if num_shards is not None or shard_index is not None:
        if num_shards is None or shard_index is None:
            raise FullduplexError("--num-shards and --shard-index go together: give both (parts are numbered "
                                  "0 .. N-1), or neither")
        if num_shards < 1:
            raise FullduplexError(f"--num-shards must be at least 1, got {num_shards}")
        if not 0 <= shard_index < num_shards:
            raise FullduplexError(f"--shard-index {shard_index} is outside 0 .. {num_shards - 1}: parts are numbered "
                                  f"from 0, so with --num-shards {num_shards} the last is {num_shards - 1}")
        return Part(shard_index, num_shards)
    if "RANK" in env and "WORLD_SIZE" in env:
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        except ValueError:
            raise FullduplexError(f"RANK={env['RANK']!r} / WORLD_SIZE={env['WORLD_SIZE']!r} in the environment are "
                                  "not whole numbers; unset them or pass --num-shards N --shard-index I") from None
        if world < 1 or not 0 <= rank < world:
            raise FullduplexError(f"RANK={rank} / WORLD_SIZE={world} in the environment do not name a part; unset "
                                  "them or pass --num-shards N --shard-index I")
        return Part(rank, world)
    return None


def local_device(env: Mapping[str, str] | None = None) -> torch.device | None:
    """``cuda:LOCAL_RANK`` when torchrun set ``LOCAL_RANK`` and CUDA is there (one GPU per rank), else None."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env or not torch.cuda.is_available():
        return None
    try:
        local = int(env["LOCAL_RANK"])
    except ValueError:
        raise FullduplexError(f"LOCAL_RANK={env['LOCAL_RANK']!r} in the environment is not a whole number") from None
    if not 0 <= local < torch.cuda.device_count():
        raise FullduplexError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                              "start at most that many processes per node, or pass --device")
    return torch.device("cuda", local)


def assign(durations: Sequence[float], count: int) -> list[int]:
    """The part (0 .. ``count``-1) of each unit of work: longest first to the least-loaded part (ties: earlier
    unit, lower part). Parts differ by at most the longest unit's duration."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    heap = [(0.0, part) for part in range(count)]  # (audio so far, part): the least-loaded, lowest part on top
    parts = [0] * len(durations)
    for unit in sorted(range(len(durations)), key=lambda u: (-durations[u], u)):
        load, part = heapq.heappop(heap)
        parts[unit] = part
        heapq.heappush(heap, (load + durations[unit], part))
    return parts


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def module_sha256(module: torch.nn.Module) -> str:
    """Hex SHA-256 of a module's parameters and buffers (names, dtypes, shapes, values): the same weights give the
    same digest wherever they were loaded."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

