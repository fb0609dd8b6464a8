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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..lm.config import LMConfig
from ..lm.model import LMModel
from ..lm.quantize import check_mode, quantized_skeleton
from ..lm.quantize import quantize as quantize_lm
from ..nn.transformer import gating_hidden
from .builder import StateBuilder
from .mlx import is_mlx_keys, read_mlx
from .resolve import DEFAULT_REPO, hf_download, read_config_json, repo_config, resolve_file
from .state import SAFETENSORS_SUFFIXES, assign_weights, check_state_dict, iter_state_dict, write_safetensors

MOSHI_NAME = "model.safetensors"
LORA_NAME = "lora.safetensors"
# The LM file names of released repos, tried in this order when a repo's config.json names none (the MLX repos
# kyutai/moshiko-mlx-q8 / -q4 hold model.q8 / model.q4). The format itself is read from the keys.
LM_NAMES = (MOSHI_NAME, "model.q8.safetensors", "model.q4.safetensors")

_TEMPORAL_ATTN = re.compile(r"^transformer\.layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj\.weight|in_projs\.0\.weight|out_proj\.weight|out_projs\.0\.weight)$")
_CROSS_ATTN = re.compile(r"^transformer\.layers\.(\d+)\.cross_attention\.(in_proj_weight|in_proj\.weight|in_projs\.0\.weight|out_proj\.weight|out_projs\.0\.weight)$")
_DEPTH_FUSED = re.compile(r"^depformer\.layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj\.weight|out_proj\.weight)$")
_DEPTH_SPLIT = re.compile(r"^depformer\.layers\.(\d+)\.self_attn\.(in_projs|out_projs)\.(\d+)\.weight$")
HIBIKI_EOS_ID = 2  # the text tokenizer's end of sequence, which ends a Hibiki translation
MIMI_MARKERS = ("encoder.model.0.conv.conv.weight", "quantizer.rvq_first.input_proj.weight")


def from_released(
    tensors: Iterable[tuple[str, torch.Tensor]], steps: int, dtype: torch.dtype | None,
    put: Callable[[str, torch.Tensor], None] | None = None, conditions: bool = False,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Released LM (name, tensor) pairs → (our state dict, keys of no LM module). Casts each tensor to ``dtype``
    as it arrives (floats only), so a checkpoint is never held twice. With ``put``, each converted tensor is
    handed to it instead of being kept (the returned dict is then empty). ``steps``: the Depth Transformer's
    weight sets (``dep_q``, fewer with a weights-per-step schedule); ``conditions``: the model has conditioners
    (``condition_provider.*`` keys are its own, else they are reported as unknown)."""
    ours: dict[str, torch.Tensor] = {} if put is None else _Sink(put)
    unknown: list[str] = []
    split: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in tensors:
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        if (key.startswith("condition_provider.") and not conditions) or key.startswith("fuser.") or "lora" in key:
            unknown.append(key)
            continue
        match = _CROSS_ATTN.match(key)
        if match:
            kind = "in_proj" if match.group(2).startswith("in_proj") else "out_proj"
            ours[f"transformer.layers.{match.group(1)}.cross_attention.{kind}.weight"] = value
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


class _Sink(dict):
    """A dict that hands every item to a function instead of keeping it (``in`` stays false)."""

    def __init__(self, put: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__()
        self._put = put

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self._put(key, value)


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
    return _config_from_dict(read_config_json(Path(path)), str(path))


def resolve_lm(path_or_hf: str | Path | None = None, hf_repo: str | None = None) -> tuple[Path, LMConfig | None]:
    """(weights file, the LM config of the repo's or folder's ``config.json``, if any) for a path, folder,
    ``hf://`` reference or repo name. Repos without a ``config.json`` (moshiko, J-Moshi) give None: 7B defaults."""
    text = str(path_or_hf) if path_or_hf is not None else f"hf://{hf_repo or DEFAULT_REPO}"
    if text.startswith("hf://") and len(text[len("hf://") :].strip("/").split("/")) == 2:  # a repo, not a file
        repo = text[len("hf://") :].strip("/")
        raw, reachable = repo_config(repo)
        config = None if raw is None else _config_from_dict(raw, f"{repo}/config.json")
        if (raw or {}).get("moshi_name"):
            return hf_download(repo, raw["moshi_name"], try_network=reachable), config
        errors = []
        for name in LM_NAMES:
            try:
                return hf_download(repo, name, try_network=reachable), config
            except CheckpointError as e:
                errors.append(e)
        raise errors[0]  # about the usual name
    folder = Path(text.removeprefix("file://")).expanduser()
    raw = None
    if (folder / "config.json").is_file():
        raw = read_config_json(folder / "config.json")
        config = _config_from_dict(raw, str(folder / "config.json"))
    else:
        config = None
    if folder.is_dir():
        names = [raw["moshi_name"]] if isinstance(raw, dict) and raw.get("moshi_name") else list(LM_NAMES)
        for name in names:
            if (folder / name).is_file():
                return folder / name, config
        raise CheckpointError(f"folder {folder} has no {' or '.join(names)}; pass the file itself")
    return resolve_file(path_or_hf if path_or_hf is not None else text, MOSHI_NAME), config


def resolve_lora(path_or_hf: str | Path | None = None, hf_repo: str | None = None) -> tuple[Path, float] | None:
    """(adapter file, scaling) when the folder's or repo's ``config.json`` says ``"lora": true`` (what
    moshi-finetune and ``fullduplex export --keep-lora`` write: ``lora_name``, default ``lora.safetensors``, and
    ``lora_scaling``, default 2.0); None otherwise, and for a plain weights file."""
    text = str(path_or_hf) if path_or_hf is not None else f"hf://{hf_repo or DEFAULT_REPO}"
    if text.startswith("hf://"):
        repo = text[len("hf://") :].strip("/")
        if len(repo.split("/")) != 2:
            return None
        raw, reachable = repo_config(repo)
        if not raw or not raw.get("lora"):
            return None
        return hf_download(repo, raw.get("lora_name") or LORA_NAME, try_network=reachable), _lora_scaling(raw)
    folder = Path(text.removeprefix("file://")).expanduser()
    if not (folder / "config.json").is_file():
        return None
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"could not read {folder / 'config.json'}: {e}") from None
    if not isinstance(raw, dict) or not raw.get("lora"):
        return None
    lora = folder / (raw.get("lora_name") or LORA_NAME)
    if not lora.is_file():
        raise CheckpointError(f"{folder / 'config.json'} names LoRA weights {lora.name}, which are not in {folder}")
    return lora, _lora_scaling(raw)


def _lora_scaling(raw: dict) -> float:
    value = raw.get("lora_scaling", 2.0)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise CheckpointError(f"config.json: lora_scaling must be a number, got {value!r}")
    return float(value)


def _config_from_dict(raw: dict, source: str) -> LMConfig | None:
    """None for a ``config.json`` that names no LM setting at all (PersonaPlex's stub): the tensors then tell."""
    if not ({f.name for f in fields(LMConfig)} - {"model_type"}) & set(raw):
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
    depformer_dim = shape("linears.0.weight")[1] if dep_q else base.depformer_dim  # dep_q 0: speech to text
    hidden = shape("transformer.layers.0.gating.linear_in.weight")[0] // 2
    text_out = shape("text_linear.weight")[0]
    values = dict(
        dim=dim, num_layers=_count(shapes, r"^transformer\.layers\.(\d+)\."), text_card=text_rows - 1,
        text_card_out=None if text_out == text_rows - 1 else text_out, n_q=n_q, dep_q=dep_q,
        card=shape("emb.0.weight")[0] - 1, depformer_dim=depformer_dim,
        norm_emb="emb.0.norm.weight" in shapes, bias_proj="text_linear.bias" in shapes,
        extra_heads_num_heads=_count(shapes, r"^extra_heads\.(\d+)\.weight$"),
    )
    if dep_q:
        values["depformer_num_layers"] = _count(shapes, r"^depformer\.layers\.(\d+)\.")
    if values["extra_heads_num_heads"]:
        values["extra_heads_dim"] = shape("extra_heads.0.weight")[0]
    attn = shapes.get("transformer.layers.0.self_attn.in_proj_weight") or shapes.get("transformer.layers.0.self_attn.in_projs.0.weight")
    if attn is not None and attn[0] < 3 * dim and (attn[0] - dim) > 0 and dim % ((attn[0] - dim) // 2) == 0:
        values["kv_repeat"] = dim // ((attn[0] - dim) // 2)  # grouped-query attention: fewer key/value rows
    if gating_hidden(dim, int(base.hidden_scale * dim)) != hidden:
        values["hidden_scale"] = 4.0 if hidden == 21 * dim // 8 else 3 * hidden / (2 * dim)
    if dep_q:
        depth_hidden = shape("depformer.layers.0.gating.0.linear_in.weight")[0] // 2
        if gating_hidden(depformer_dim, base.depformer_feedforward) != depth_hidden:
            values["depformer_dim_feedforward"] = 3 * depth_hidden // 2
    if len(base.delays) != 1 + n_q and not dep_q:  # speech to text: the delays are not in the tensors
        values["delays"] = (0,) * (1 + n_q)
    elif len(base.delays) != 1 + n_q:  # text, then each party's semantic codebook undelayed, acoustic ones 1 frame late
        half = n_q // 2
        values["delays"] = (0,) + ((0,) + (1,) * (half - 1)) * 2
    try:
        config = replace(base, **values)
    except ValueError as e:
        raise CheckpointError(f"{source}: inferred architecture is invalid ({e}); pass its config (--config)") from None
    attn = shapes.get("depformer.layers.0.self_attn.in_proj_weight")
    kv_dim = depformer_dim // config.kv_repeat
    if attn is not None and attn[0] != dep_q * (depformer_dim + 2 * kv_dim):
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
    lora_weight: str | Path | None = None,
    lora_scaling: float | None = None,
    quantize: str | None = None,
    fuse_lora: bool = True,
) -> LMModel:
    """Build the Moshi LM from a released-format (PyTorch) or MLX (bf16, q8, q4) checkpoint.

    ``path_or_hf``: a file, a folder holding ``model.safetensors`` (and optionally ``config.json``),
    ``hf://OWNER/REPO`` or ``hf://OWNER/REPO/FILE``; None uses ``hf_repo`` (default
    ``kyutai/moshiko-pytorch-bf16``). ``config``: an :class:`LMConfig`, a preset name, or a ``config.json`` path;
    default: the repo's or folder's ``config.json``, else what the tensors imply (:func:`infer_lm_config`: the
    7B moshiko architecture, or PersonaPlex's 16 depth steps). ``dtype``: default bfloat16 on CUDA and for MLX
    files (their values are bf16), float32 for PyTorch files on CPU; bf16 and fp32 files both load. Weights are
    converted one tensor at a time into a
    model built on the meta device, so memory never holds two copies. Mismatches name keys and shapes.

    LoRA: a moshi-finetune ``lora.safetensors`` given as ``lora_weight`` (scaling ``lora_scaling``, default 2.0),
    or named by the folder's or repo's ``config.json`` (``"lora": true``), is folded into the weights; with
    ``fuse_lora=False`` it is kept apart (:func:`~fullduplex.checkpoint.lora.attach_lora_file`), which excludes
    ``quantize``.

    The format is read from the keys: MLX files (``audio_embs.*``, ``depformer.slices.*``) are mapped to our
    layout (:mod:`fullduplex.checkpoint.mlx`), their quantized tensors dequantized one at a time to ``dtype``
    exactly as ``mlx.core.dequantize`` does. ``quantize`` ("int8" / "int4", see
    :func:`fullduplex.lm.quantize.quantize`) converts each tensor into quantized layers as it is read (with LoRA:
    after folding it into the float weights, layer by layer); MLX 4-bit codes run as they are under "int4".
    """
    if quantize is not None:
        check_mode(quantize)
    lora = resolve_lora(path_or_hf, hf_repo) if lora_weight is None else (Path(lora_weight), 2.0)
    if lora is not None and not fuse_lora and quantize:
        raise CheckpointError(f"--no_fuse_lora keeps LoRA apart beside float weights, so --quantize {quantize} "
                              "cannot apply; drop one of the two")
    path, repo_config = resolve_lm(path_or_hf, hf_repo)
    if isinstance(config, str) and not config.endswith(".json"):
        from ..lm.config import lm_preset

        try:
            config = lm_preset(config)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    elif isinstance(config, (str, Path)):
        config = read_lm_config(config)
    keys = checkpoint_keys(path)
    mlx = keys is not None and is_mlx_keys(keys)
    if config is None and repo_config is None:
        if mlx:  # the MLX repos are all moshiko 7B; their tensor layout differs from what infer_lm_config reads
            config = LMConfig()
        else:
            shapes = tensor_shapes(path)  # not an LM at all: the checks below say what it is
            config = infer_lm_config(shapes, source=str(path)) if "text_emb.weight" in shapes else LMConfig()
    config = config or repo_config
    device = torch.device(device)
    if dtype is None:  # MLX files hold bf16 values (dequantized in bf16): wider adds nothing but memory
        dtype = torch.bfloat16 if device.type == "cuda" or mlx else torch.float32
    if keys is not None and any(k in keys for k in MIMI_MARKERS):
        raise CheckpointError(f"{path} is a Mimi checkpoint, not the LM; pass the LM file ({MOSHI_NAME})")
    with torch.device("meta"):
        model = LMModel(config)
    # LoRA is folded into float weights: with an adapter the model is loaded in float and quantized after.
    quantize_now = quantize if lora is None else None
    builder = StateBuilder(model, quantize_now, dtype, device)
    if quantize_now:  # before reading: a size that does not fit the groups fails at once
        quantized_skeleton(model, quantize_now, device, dtype)
    if mlx:
        unknown = read_mlx(path, builder)
    else:
        _, unknown = from_released(
            iter_state_dict(path), config.depth_weights, dtype, put=builder.add, conditions=config.conditioners is not None
        )
    state = builder.finish()
    if any(k in state for k in MIMI_MARKERS) or any(k in unknown for k in MIMI_MARKERS):
        raise CheckpointError(f"{path} is a Mimi checkpoint, not the LM; pass the LM file ({MOSHI_NAME})")
    if not any(k.startswith("text_emb.") for k in state):
        sample = ", ".join((list(state) + unknown)[:3]) or "no tensors"
        raise CheckpointError(f"{path} does not look like a Moshi LM checkpoint (keys: {sample}, ...)")
    check_state_dict(
        model, state, unknown, str(path), "LM",
        "is the architecture right? Pass the checkpoint's config.json (--config) or the matching preset",
    )
    model = assign_weights(model, state, device)
    if config.model_type == "hibiki":
        # As the reference loader: an EOS sampled before the source ends reads back as PAD (Hibiki keeps going).
        with torch.no_grad():
            model.text_emb.weight[HIBIKI_EOS_ID] = model.text_emb.weight[config.text_pad_id]
    if lora is not None:
        from .lora import apply_lora_file, attach_lora_file

        scaling = lora[1] if lora_scaling is None else lora_scaling
        (apply_lora_file if fuse_lora else attach_lora_file)(model, lora[0], scaling)
        if quantize:
            quantize_lm(model, quantize)
    return model


def checkpoint_keys(path: Path) -> set[str] | None:
    """The tensor names of a safetensors file, read from its header only; None for other files."""
    if path.suffix not in SAFETENSORS_SUFFIXES:
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())  # noqa: SIM118 - safe_open is not a dict
    except Exception as e:  # safetensors raises many types for corrupt files; say which file
        raise CheckpointError(f"could not read checkpoint {path}: {type(e).__name__}: {e}") from None


def save_lm(model: LMModel, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a released-format safetensors file (atomically); a quantized model is written
    dequantized."""
    from ..lm.quantize import dequantized_state

    state = to_released(dequantized_state(model))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return write_safetensors(state, path, metadata={"format": "pt", "model": "moshi-lm"})
