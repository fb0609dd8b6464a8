"""Assemble an LM state dict one checkpoint tensor at a time: float in the target dtype, or straight into
quantized layers, so that no loader ever holds the whole model twice or in a wider dtype than asked."""

from __future__ import annotations

import torch

from ..errors import CheckpointError
from ..lm.model import LMModel
from ..lm.quantize import AffineWeight, as_float, quantized_embedding, quantized_linear, targets


class StateBuilder:
    """Collects (our key, tensor) pairs for ``model`` (built on the meta device, not yet quantized).

    ``add(key, value, step)``: ``value`` is a float tensor or MLX codes (:class:`AffineWeight`). Keys of the
    Depth Transformer's per-step projections (``depformer.layers.L.self_attn.in_proj``) come whole [S, ...]
    (``step`` None) or one step at a time. With ``mode`` ("int8" / "int4") every quantization target is
    converted on arrival, on ``device``; otherwise tensors are cast to ``dtype`` and stay on the CPU.
    """

    def __init__(self, model: LMModel, mode: str | None, dtype: torch.dtype, device: torch.device) -> None:
        self.mode, self.dtype, self.device = mode, dtype, torch.device(device)
        self.shapes = {k: v.shape for k, v in model.state_dict().items()}
        self.targets = targets(model) if mode else {}
        self.state: dict[str, torch.Tensor] = {}
        self._stacks: dict[str, set[int]] = {}

    def expected_shape(self, key: str) -> torch.Size | None:
        """The float shape our model has for ``key`` (one step's for per-step projections), None if no such key."""
        shape = self.shapes.get(key)
        if shape is not None and key.startswith("depformer.layers.") and key.endswith(("self_attn.in_proj", "self_attn.out_proj")):
            return shape[1:]
        return shape

    def add(self, key: str, value: torch.Tensor | AffineWeight, step: int | None = None) -> None:
        module_name, _, param = key.rpartition(".")
        kind = self.targets.get(module_name)
        if kind == "steps":
            pieces = enumerate(value) if step is None else [(step, value)]
            for s, piece in pieces:
                name = f"{module_name}.{param}s.{s}"
                self._put(name, quantized_linear(piece, self.mode, name, self.device))
        elif kind == "linear" and param == "weight":
            self._put(module_name, quantized_linear(value, self.mode, module_name, self.device))
        elif kind == "embedding" and param == "weight":
            self._put(module_name, quantized_embedding(value, self.mode, self.dtype, self.device, module_name))
        elif step is None:
            self.state[key] = as_float(value, self.dtype)
        else:
            self._add_step(key, as_float(value, self.dtype), step)

    def _put(self, prefix: str, module: torch.nn.Module) -> None:
        for name, tensor in module.state_dict().items():
            self.state[f"{prefix}.{name}"] = tensor

    def _add_step(self, key: str, value: torch.Tensor, step: int) -> None:
        shape = self.shapes.get(key)
        if shape is None:  # not one of ours: keep it under a name check_state_dict will report
            self.state[f"{key}.{step}"] = value
            return
        if key not in self.state:
            self.state[key] = torch.empty(shape, dtype=value.dtype)
            self._stacks[key] = set()
        stacked = self.state[key]
        if not 0 <= step < shape[0] or value.shape != stacked.shape[1:]:
            raise CheckpointError(
                f"{key} step {step}: checkpoint {list(value.shape)}, model {shape[0]} steps of {list(stacked.shape[1:])}"
            )
        stacked[step] = value
        self._stacks[key].add(step)

    def finish(self) -> dict[str, torch.Tensor]:
        """The state dict; raises if a per-step projection missed some steps."""
        for key, seen in self._stacks.items():
            missing = sorted(set(range(self.shapes[key][0])) - seen)
            if missing:
                raise CheckpointError(f"{key}: the checkpoint has no weights for depth steps {missing}")
        return self.state
