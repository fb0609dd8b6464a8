"""LoRA adapters in moshi-finetune's format, and folding them into LM weights.

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

from ..errors import CheckpointError
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


def merge_released_lora(
    state: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], scaling: float, source: str = "LoRA weights"
) -> dict[str, torch.Tensor]:
    """Fold moshi-finetune adapters into our LM state dict (a new dict; merged in float32, cast back)."""
    out = dict(state)
    for module, (a, b) in group_adapters(adapters, source).items():
        name, step = released_target(module)
        if name not in out:
            raise CheckpointError(f"{source}: adapter {module} has no weight {name} in the model")
        weight = out[name]
        target = weight if step is None else weight[step]
        if target.shape != (b.shape[0], a.shape[1]):
            raise CheckpointError(f"{source}: adapter {module} gives [{b.shape[0]}, {a.shape[1]}], the weight "
                                  f"{name}{'' if step is None else f'[{step}]'} is {list(target.shape)}")
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
