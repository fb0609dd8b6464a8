"""Load Moshi LM checkpoints in the released format (``model.safetensors`` of moshiko, J-Moshi, Human-1, and
NVIDIA PersonaPlex, whose Depth Transformer has 16 steps: 120 more tensors and twice the per-step attention rows).

Key names (``keys/moshiko.txt``) match our modules except the attention projections. The Temporal Transformer's
are fused (``in_proj_weight``) or module-style (``in_projs.0.weight``); the Depth Transformer's hold one slice per
step, fused on disk (``in_proj_weight`` [S * 3D, D], ``out_proj.weight`` [S * D, D]) or module-style
(``in_projs.{s}.weight``). Ours are ``self_attn.in_proj.weight`` / ``self_attn.out_proj.weight`` (temporal) and
stacked ``self_attn.in_proj`` [S, 3D, D] / ``self_attn.out_proj`` [S, D, D] (depth).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..lm.config import LMConfig
from ..lm.model import LMModel
from ..nn.transformer import gating_hidden
from .resolve import DEFAULT_REPO, hf_download, repo_config, resolve_file
from .state import SAFETENSORS_SUFFIXES, assign_weights, check_state_dict, iter_state_dict, write_safetensors

MOSHI_NAME = "model.safetensors"

_TEMPORAL_ATTN = re.compile(r"^transformer\.layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj\.weight|in_projs\.0\.weight|out_proj\.weight|out_projs\.0\.weight)$")
_DEPTH_FUSED = re.compile(r"^depformer\.layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj\.weight|out_proj\.weight)$")
_DEPTH_SPLIT = re.compile(r"^depformer\.layers\.(\d+)\.self_attn\.(in_projs|out_projs)\.(\d+)\.weight$")
MIMI_MARKERS = ("encoder.model.0.conv.conv.weight", "quantizer.rvq_first.input_proj.weight")


def from_released(
    tensors: Iterable[tuple[str, torch.Tensor]], steps: int, dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Released LM (name, tensor) pairs → (our state dict, keys of no LM module). Casts each tensor to ``dtype``
    as it arrives (floats only), so a checkpoint is never held twice."""
    ours: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    split: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in tensors:
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        if key.startswith(("condition_provider.", "fuser.")) or "lora" in key:
            unknown.append(key)
            continue
        match = _TEMPORAL_ATTN.match(key)
        if match:
            kind = "in_proj" if match.group(2).startswith("in_proj") else "out_proj"
            ours[f"transformer.layers.{match.group(1)}.self_attn.{kind}.weight"] = value
            continue
        match = _DEPTH_FUSED.match(key)
        if match:
            kind = "in_proj" if match.group(2).startswith("in_proj") else "out_proj"
            if value.shape[0] % steps:
                raise CheckpointError(f"{key}: {value.shape[0]} rows do not split into {steps} depth steps")
            ours[f"depformer.layers.{match.group(1)}.self_attn.{kind}"] = value.view(steps, -1, value.shape[1])
            continue
        match = _DEPTH_SPLIT.match(key)
        if match:
            kind = "in_proj" if match.group(2) == "in_projs" else "out_proj"
            split.setdefault(f"depformer.layers.{match.group(1)}.self_attn.{kind}", {})[int(match.group(3))] = value
            continue
        ours[key] = value
    for name, pieces in split.items():
        if sorted(pieces) != list(range(steps)):
            raise CheckpointError(f"{name}: per-step slices {sorted(pieces)} are not 0..{steps - 1}")
        ours[name] = torch.stack([pieces[s] for s in range(steps)])
    return ours, unknown


def to_released(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our LM state dict → the released format (fused attention names, per-step slices concatenated)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("depformer.layers.") and key.endswith(("self_attn.in_proj", "self_attn.out_proj")):
            name = "in_proj_weight" if key.endswith("in_proj") else "out_proj.weight"
            out[key.rsplit(".", 1)[0] + "." + name] = value.reshape(-1, value.shape[-1])
        elif key.startswith("transformer.layers.") and key.endswith("self_attn.in_proj.weight"):
            out[key.replace("self_attn.in_proj.weight", "self_attn.in_proj_weight")] = value
        else:
            out[key] = value
    return out


def read_lm_config(path: str | Path) -> LMConfig | None:
    """An :class:`LMConfig` from a moshi-style ``config.json`` file (None if it names no LM setting)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"could not read LM config {path}: {e}") from None
    return _config_from_dict(raw, str(path))


def resolve_lm(path_or_hf: str | Path | None = None, hf_repo: str | None = None) -> tuple[Path, LMConfig | None]:
    """(weights file, the LM config of the repo's or folder's ``config.json``, if any) for a path, folder,
    ``hf://`` reference or repo name. Repos without a ``config.json`` (moshiko, J-Moshi) give None: 7B defaults."""
    text = str(path_or_hf) if path_or_hf is not None else f"hf://{hf_repo or DEFAULT_REPO}"
    if text.startswith("hf://") and len(text[len("hf://") :].strip("/").split("/")) == 2:  # a repo, not a file
        repo = text[len("hf://") :].strip("/")
        raw, reachable = repo_config(repo)
        config = None if raw is None else _config_from_dict(raw, f"{repo}/config.json")
        return hf_download(repo, (raw or {}).get("moshi_name") or MOSHI_NAME, try_network=reachable), config
    folder = Path(text.removeprefix("file://")).expanduser()
    config = read_lm_config(folder / "config.json") if (folder / "config.json").is_file() else None
    return resolve_file(path_or_hf if path_or_hf is not None else text, MOSHI_NAME), config


def _config_from_dict(raw: dict, source: str) -> LMConfig | None:
    """None for a ``config.json`` that names no LM setting at all (PersonaPlex's stub): the tensors then tell."""
    if not {f.name for f in fields(LMConfig)} & set(raw):
        return None
    try:
        return LMConfig.from_moshi_dict(raw, source=source)
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of a checkpoint file (safetensors: from the header, nothing loaded)."""
    if path.suffix in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
        except Exception as e:  # corrupt files raise many types; say which file
            raise CheckpointError(f"could not read checkpoint {path}: {type(e).__name__}: {e}") from None
    return {key: tuple(value.shape) for key, value in iter_state_dict(path)}


def _count(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in shapes if (m := regex.match(key))})


def infer_lm_config(shapes: Mapping[str, tuple[int, ...]], base: LMConfig | None = None, source: str = "checkpoint") -> LMConfig:
    """The architecture a released-format checkpoint's tensor names and shapes imply: widths, layer counts,
    vocabularies, codebooks and depth steps (``dep_q``: 8 for Moshi, 16 for PersonaPlex). What shapes cannot
    tell (attention heads, context, RoPE period, delays) comes from ``base`` (default: moshiko 7B)."""
    base = base or LMConfig()

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"{source}: no tensor {key!r}; is this a Moshi LM checkpoint?")
        return shapes[key]

    text_rows, dim = shape("text_emb.weight")
    n_q, dep_q = _count(shapes, r"^emb\.(\d+)\.weight$"), _count(shapes, r"^linears\.(\d+)\.weight$")
    depformer_dim = shape("linears.0.weight")[1]
    hidden = shape("transformer.layers.0.gating.linear_in.weight")[0] // 2
    depth_hidden = shape("depformer.layers.0.gating.0.linear_in.weight")[0] // 2
    text_out = shape("text_linear.weight")[0]
    values = dict(
        dim=dim, num_layers=_count(shapes, r"^transformer\.layers\.(\d+)\."), text_card=text_rows - 1,
        text_card_out=None if text_out == text_rows - 1 else text_out, n_q=n_q, dep_q=dep_q,
        card=shape("emb.0.weight")[0] - 1, depformer_dim=depformer_dim,
        depformer_num_layers=_count(shapes, r"^depformer\.layers\.(\d+)\."),
    )
    if gating_hidden(dim, int(base.hidden_scale * dim)) != hidden:
        values["hidden_scale"] = 4.0 if hidden == 21 * dim // 8 else 3 * hidden / (2 * dim)
    if gating_hidden(depformer_dim, base.depformer_feedforward) != depth_hidden:
        values["depformer_dim_feedforward"] = 3 * depth_hidden // 2
    if len(base.delays) != 1 + n_q:  # text, then each party's semantic codebook undelayed, acoustic ones 1 frame late
        half = n_q // 2
        values["delays"] = (0,) + ((0,) + (1,) * (half - 1)) * 2
    try:
        config = replace(base, **values)
    except ValueError as e:
        raise CheckpointError(f"{source}: inferred architecture is invalid ({e}); pass its config (--config)") from None
    attn = shapes.get("depformer.layers.0.self_attn.in_proj_weight")
    if attn is not None and attn[0] != dep_q * 3 * depformer_dim:
        raise CheckpointError(
            f"{source}: depformer attention has {attn[0]} rows, expected {dep_q} steps x 3 x {depformer_dim}"
        )
    return config


def load_lm(
    path_or_hf: str | Path | None = None,
    config: LMConfig | str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    hf_repo: str | None = None,
) -> LMModel:
    """Build the Moshi LM from a released-format checkpoint.

    ``path_or_hf``: a file, a folder holding ``model.safetensors`` (and optionally ``config.json``),
    ``hf://OWNER/REPO`` or ``hf://OWNER/REPO/FILE``; None uses ``hf_repo`` (default
    ``kyutai/moshiko-pytorch-bf16``). ``config``: an :class:`LMConfig`, a preset name, or a ``config.json`` path;
    default: the repo's or folder's ``config.json``, else what the tensors imply (:func:`infer_lm_config`: the
    7B moshiko architecture, or PersonaPlex's 16 depth steps). ``dtype``: default bfloat16
    on CUDA, float32 on CPU; bf16 and fp32 files both load. Weights are converted one tensor at a time into a
    model built on the meta device, so memory never holds two copies. Mismatches name keys and shapes.
    """
    path, repo_config = resolve_lm(path_or_hf, hf_repo)
    if isinstance(config, str) and not config.endswith(".json"):
        from ..lm.config import lm_preset

        try:
            config = lm_preset(config)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    elif isinstance(config, (str, Path)):
        config = read_lm_config(config)
    if config is None and repo_config is None:
        shapes = tensor_shapes(path)  # not an LM at all: the checks below say what it is
        config = infer_lm_config(shapes, source=str(path)) if "text_emb.weight" in shapes else LMConfig()
    config = config or repo_config
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    state, unknown = from_released(iter_state_dict(path), config.dep_q, dtype)
    if any(k in state for k in MIMI_MARKERS):
        raise CheckpointError(f"{path} is a Mimi checkpoint, not the LM; pass the LM file ({MOSHI_NAME})")
    if "text_emb.weight" not in state:
        sample = ", ".join(list(state)[:3]) or "no tensors"
        raise CheckpointError(f"{path} does not look like a Moshi LM checkpoint (keys: {sample}, ...)")
    with torch.device("meta"):
        model = LMModel(config)
    check_state_dict(
        model, state, unknown, str(path), "LM",
        "is the architecture right? Pass the checkpoint's config.json (--config) or the matching preset",
    )
    return assign_weights(model, state, device)


def save_lm(model: LMModel, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a released-format safetensors file (atomically)."""
    state = to_released(model.state_dict())
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return write_safetensors(state, path, metadata={"format": "pt", "model": "moshi-lm"})
