"""Tensors derived from parameters (a transposed weight, codebook norms), cached until the parameter changes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def cached_derivation(
    owner: nn.Module, name: str, source: torch.Tensor, derive: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``derive(source)``, recomputed only when ``source`` is another tensor or was modified in place.

    Under autograd (``source`` requires grad) nothing is cached, so gradients flow. Tensors made under
    ``torch.inference_mode`` keep no version counter: for those, in-place changes made inside inference mode are
    not noticed (load new weights with ``load_state_dict`` instead, which replaces or copies into them outside it).
    """
    if torch.is_grad_enabled() and source.requires_grad:
        return derive(source)
    try:
        version = source._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        version = -1
    key = (source.data_ptr(), version, source.dtype, source.device, tuple(source.shape))
    cached = owner.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = (key, derive(source.detach()))
        owner.__dict__[name] = cached
    return cached[1]
