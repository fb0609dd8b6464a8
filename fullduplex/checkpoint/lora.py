"""LoRA adapters in moshi-finetune's format: folded into LM weights (the default), or kept apart as low-rank
layers (:func:`attach_lora_file`, ``--no_fuse_lora``).

moshi-finetune (kyutai-labs) saves ``lora.safetensors`` with, per wrapped ``nn.Linear`` of the reference model,
``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight`` [out, r]; its ``config.json`` holds ``lora``,
``lora_rank`` and ``lora_scaling``; the merged weight is ``W + scaling * B @ A``. The reference's module names
differ from ours for attention: ``transformer.layers.{i}.self_attn.in_projs.0`` is our
``transformer.layers.{i}.self_attn.in_proj``, and ``depformer.layers.{i}.self_attn.in_projs.{s}`` is step ``s`` of our
stacked ``depformer.layers.{i}.self_attn.in_proj`` (likewise ``out_projs``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..lm.depth import StepProjections
from ..nn.lora import UnfusedLoRALinear, low_rank
from .state import read_state_dict

_SUFFIX = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
_ATTN = re.compile(r"^(?P<stack>transformer|depformer)\.layers\.(?P<layer>\d+)\.self_attn\.(?P<kind>in|out)_projs\.(?P<step>\d+)$")


def released_target(module: str) -> tuple[str, int | None]:
    """A reference module name → (our parameter name, depth step or None)."""
    match = _ATTN.match(module)
    if match is None:
        return f"{module}.weight", None
    prefix = f"{match['stack']}.layers.{match['layer']}.self_attn.{match['kind']}_proj"
    if match["stack"] == "transformer":
        if match["step"] != "0":
            raise CheckpointError(f"LoRA module {module}: the temporal transformer has one projection, not per step")
        return f"{prefix}.weight", None
    return prefix, int(match["step"])


def ours_to_released_module(module: str) -> str:
    """Our module name of a :class:`~fullduplex.train.lora.LoRALinear` → the reference's."""
    for kind in ("in", "out"):
        suffix = f".self_attn.{kind}_proj"
        if module.startswith("transformer.layers.") and module.endswith(suffix):
            return module[: -len(suffix)] + f".self_attn.{kind}_projs.0"
    return module


def group_adapters(tensors: dict[str, torch.Tensor], source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """moshi-finetune adapter tensors → {reference module: (A [r, in], B [out, r])}, checked for pairs and ranks."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _SUFFIX.match(key)
        if match is None:
            raise CheckpointError(f"{source}: {key} is not a LoRA tensor (expected <module>.lora_A.weight or "
                                  "<module>.lora_B.weight, as moshi-finetune saves them)")
        pairs.setdefault(match["module"], {})[match["which"]] = value
    out = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{source}: {module} has lora_{''.join(pair)} but not both lora_A and lora_B")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{source}: {module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not "
                                  "form a rank-r pair ([r, in] and [out, r])")
        out[module] = (a, b)
    return out


def checked_targets(
    state: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], source: str
) -> list[tuple[str, str, int | None, torch.Tensor, torch.Tensor]]:
    """(reference module, our parameter, depth step or None, A, B) per adapter, each checked against ``state``."""
    out = []
    for module, (a, b) in group_adapters(adapters, source).items():
        name, step = released_target(module)
        if name not in state:
            raise CheckpointError(f"{source}: adapter {module} has no weight {name} in the model")
        weight = state[name]
        target = weight if step is None else weight[step]
        if target.shape != (b.shape[0], a.shape[1]):
            raise CheckpointError(f"{source}: adapter {module} gives [{b.shape[0]}, {a.shape[1]}], the weight "
                                  f"{name}{'' if step is None else f'[{step}]'} is {list(target.shape)}")
        out.append((module, name, step, a, b))
    return out


def merge_released_lora(
    state: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], scaling: float, source: str = "LoRA weights"
) -> dict[str, torch.Tensor]:
    """Fold moshi-finetune adapters into our LM state dict (a new dict; merged in float32, cast back)."""
    out = dict(state)
    for _, name, step, a, b in checked_targets(state, adapters, source):
        weight = out[name]
        delta = scaling * (b.float() @ a.float())
        if step is None:
            out[name] = (weight.float() + delta).to(weight.dtype)
        else:
            merged = weight.clone()
            merged[step] = (weight[step].float() + delta).to(weight.dtype)
            out[name] = merged
    return out


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a moshi-finetune ``lora.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA weights {path} not found")
    return read_state_dict(path)


def apply_lora_file(model: torch.nn.Module, path: str | Path, scaling: float) -> torch.nn.Module:
    """Fold a moshi-finetune ``lora.safetensors`` into a loaded LM, in place (``W += scaling B A``)."""
    state = model.state_dict()
    merged = merge_released_lora(state, read_lora(path), scaling, source=str(path))
    with torch.no_grad():
        for key, value in merged.items():
            if value is not state[key]:
                state[key].copy_(value)
    return model


class UnfusedLoRAStepProjections(StepProjections):
    """:class:`~fullduplex.lm.depth.StepProjections` (the same ``in_proj`` / ``out_proj``) plus kept per-step
    adapters: ``in_A`` [S, r, D], ``in_B`` [S, 3D, r] (likewise ``out_*``), zero for steps without one."""

    def __init__(self, base: StepProjections, adapters: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]],
                 scaling: float) -> None:
        nn.Module.__init__(self)
        self.in_proj, self.out_proj = base.in_proj, base.out_proj
        self.schedule = base.schedule  # adapters are per weight set, as the projections (Kyutai TTS shares them)
        self.scaling = scaling
        for kind, weight in (("in", self.in_proj), ("out", self.out_proj)):
            pairs = adapters.get(kind, {})
            rank = max((a.shape[0] for a, _ in pairs.values()), default=0)
            a_all = weight.new_zeros(weight.shape[0], rank, weight.shape[2])
            b_all = weight.new_zeros(weight.shape[0], weight.shape[1], rank)
            for step, (a, b) in pairs.items():  # a lower rank pads with zeros: an exact zero contribution
                a_all[step, : a.shape[0]] = a.to(weight)
                b_all[step, :, : a.shape[0]] = b.to(weight)
            self.register_parameter(f"{kind}_A", nn.Parameter(a_all, requires_grad=False))
            self.register_parameter(f"{kind}_B", nn.Parameter(b_all, requires_grad=False))

    def _all_steps(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 0:
            return 0
        steps = x.shape[1]
        low = torch.einsum("nsd,srd->nsr", x, self._weights(a, steps))
        return torch.einsum("nsr,ser->nse", low, self._weights(b, steps)) * self.scaling

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        return super().project_in(x) + self._all_steps(x, self.in_A, self.in_B)

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        return super().project_out(x) + self._all_steps(x, self.out_A, self.out_B)

    def step_in(self, x: torch.Tensor, k: int) -> torch.Tensor:
        w = k if self.schedule is None else self.schedule[k]
        return super().step_in(x, k) + low_rank(x, self.in_A[w], self.in_B[w], self.scaling)

    def step_out(self, x: torch.Tensor, k: int) -> torch.Tensor:
        w = k if self.schedule is None else self.schedule[k]
        return super().step_out(x, k) + low_rank(x, self.out_A[w], self.out_B[w], self.scaling)


def attach_lora_file(model: nn.Module, path: str | Path, scaling: float) -> nn.Module:
    """Keep a moshi-finetune ``lora.safetensors`` apart from a loaded LM's weights (``--no_fuse_lora``), in place:
    each adapted linear layer becomes an :class:`~fullduplex.nn.lora.UnfusedLoRALinear`, each adapted layer of
    per-step depth projections an :class:`UnfusedLoRAStepProjections`; the adapters take the weights' dtype and
    device. The model computes what :func:`apply_lora_file` folds, up to rounding."""
    state = model.state_dict()
    steps: dict[str, dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]]] = {}
    for module, name, step, a, b in checked_targets(state, read_lora(path), str(path)):
        if step is None:
            owner_name = name.removesuffix(".weight")
            owner = model.get_submodule(owner_name)
            if not isinstance(owner, nn.Linear) or owner.bias is not None:
                raise CheckpointError(f"{path}: adapter {module} targets {owner_name}, which is not a bias-free "
                                      "linear layer; drop --no_fuse_lora to fold it into the weights")
            _replace(model, owner_name, UnfusedLoRALinear(owner.weight, a, b, scaling))
        else:
            owner_name, _, param = name.rpartition(".")  # ...self_attn, in_proj / out_proj
            steps.setdefault(owner_name, {}).setdefault(param.removesuffix("_proj"), {})[step] = (a, b)
    for owner_name, adapters in steps.items():
        owner = model.get_submodule(owner_name)
        if not isinstance(owner, StepProjections):
            raise CheckpointError(f"{path}: {owner_name} holds no per-step float projections (a quantized model?); "
                                  "drop --no_fuse_lora to fold the adapters into the weights")
        _replace(model, owner_name, UnfusedLoRAStepProjections(owner, adapters, scaling))
    return model


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)
