"""Everything distributed in one place: the torchrun environment, FSDP2 sharding, reductions, rank-0 helpers.

Without torchrun (no ``WORLD_SIZE`` in the environment) the run is one process and nothing here talks to a
process group. With torchrun: one process per device; ``fsdp`` shards parameters, gradients and optimiser state
with FSDP2 (``fully_shard`` per transformer block, then the root); otherwise every rank holds the whole model
and gradients are summed by :func:`all_reduce_grads` after the last micro-batch (DDP's arithmetic, without DDP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str, backend: str) -> Dist:
    """Read torchrun's environment, pick the device, initialise the process group when world size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("run.device is cuda but no CUDA device is available; set run.device: cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world, device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local_rank, dev)


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum over ranks (in place, returned); a no-op on one process."""
    if d.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_grads(model: nn.Module, d: Dist) -> None:
    """Sum the gradients of trainable parameters over ranks (replicated, non-FSDP multi-process runs)."""
    if not d.enabled:
        return
    for p in model.parameters():
        if p.requires_grad and p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shard_fsdp2(model: nn.Module, blocks: list[nn.Module], mixed_bf16: bool) -> None:
    """FSDP2: ``fully_shard`` each block, then the root. FSDP2 averages gradients over ranks: callers scale the
    loss by the world size (:func:`grad_scale`) to get the sum their global normalisation expects."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_bf16 else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def grad_scale(d: Dist, fsdp: bool) -> float:
    """Factor on the loss so that gradients end up summed over ranks: FSDP2 averages them (a divide factor of 1
    would need PREMUL_SUM, which gloo lacks); the replicated path sums them itself."""
    return float(d.world) if fsdp else 1.0


def gather_objects(obj: object, d: Dist) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[object] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
