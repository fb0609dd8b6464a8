"""The MLX checkpoints of ``moshi_mlx`` (``kyutai/moshiko-mlx-q8``, ``-q4``, ``-bf16``): read and write.

MLX names follow ``moshi_mlx.models.lm.Lm``; the Depth Transformer is a list of ``depformer.slices.S``, one per
generated codebook, each with its own copy of every layer (norms included, identical across slices):

=====================================================================  ==================================================
MLX                                                                    ours
=====================================================================  ==================================================
``audio_embs.{k}.weight``                                              ``emb.{k}.weight``
``text_emb.weight``, ``text_linear.weight``                            the same
``out_norm.weight`` [D]                                                ``out_norm.alpha`` [1, 1, D]
``transformer.layers.{i}.norm{1,2}.weight`` [D]                        ``transformer.layers.{i}.norm{1,2}.alpha``
``transformer.layers.{i}.self_attn.{in,out}_proj.weight``              the same
``transformer.layers.{i}.gating.linear_{in,out}.weight``               the same
``depformer.slices.{s}.linear_in.weight``                              ``depformer_in.{s}.weight``
``depformer.slices.{s}.linear_out.weight``                             ``linears.{s}.weight``
``depformer.slices.0.emb.weight``                                      ``depformer_text_emb.weight``
``depformer.slices.{s>0}.emb.weight``                                  ``depformer_emb.{s-1}.weight``
``depformer.slices.{s}.transformer.layers.{l}.self_attn.in_proj.weight``  ``depformer.layers.{l}.self_attn.in_proj[s]``
``depformer.slices.{s}.transformer.layers.{l}.self_attn.out_proj.weight`` ``depformer.layers.{l}.self_attn.out_proj[s]``
``depformer.slices.{s}.transformer.layers.{l}.gating.linear_{x}.weight``  ``depformer.layers.{l}.gating.{s}.linear_{x}.weight``
``depformer.slices.{s}.transformer.layers.{l}.norm{n}.weight``          ``depformer.layers.{l}.norm{n}.alpha`` (shared)
=====================================================================  ==================================================

Quantized files (``nn.quantize``: every Linear and Embedding, 8 bits in groups of 64 or 4 bits in groups of 32)
replace a ``.weight`` with packed ``uint32`` codes and add ``.scales`` and ``.biases`` (affine groups, see
:mod:`fullduplex.nn.quant`). The bit width is not stored: it follows from the packed width and the layer's
input size in the config (``bits = 32 * words / K``). The format is recognised by its keys, never its file name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..lm.config import LMConfig
from ..lm.model import LMModel
from ..lm.quantize import AffineWeight, dequantized_state
from ..nn.quant import pack_codes, quantize_affine, unpack_codes
from ..nn.transformer import gating_hidden
from .builder import StateBuilder
from .state import write_safetensors

MLX_FORMATS = {"mlx-q8": (8, 64), "mlx-q4": (4, 32), "mlx-bf16": None}  # format -> (bits, group) or float
MLX_NAMES = {"mlx-q8": "model.q8.safetensors", "mlx-q4": "model.q4.safetensors", "mlx-bf16": "model.safetensors"}
MLX_MARKERS = ("audio_embs.", "depformer.slices.")
QUANT_SUFFIXES = (".scales", ".biases")

# (MLX name pattern, our name template, kind). Kinds: "same" (copy), "norm" ([D] -> [1, 1, D]), "step" (group 1 is
# the slice: one step of a stacked per-step tensor), "shared_norm" (one copy per slice; all must be equal).
_S = r"depformer\.slices\.(\d+)\.transformer\.layers\.(\d+)\."
RULES: tuple[tuple[str, str, str], ...] = (
    (r"audio_embs\.(\d+)\.weight", r"emb.\1.weight", "same"),
    (r"(text_emb|text_linear)\.weight", r"\1.weight", "same"),
    (r"out_norm\.weight", "out_norm.alpha", "norm"),
    (r"transformer\.layers\.(\d+)\.norm([12])\.weight", r"transformer.layers.\1.norm\2.alpha", "norm"),
    (r"transformer\.layers\.(\d+)\.(self_attn\.(?:in|out)_proj|gating\.linear_(?:in|out))\.weight", r"transformer.layers.\1.\2.weight", "same"),
    (r"depformer\.slices\.(\d+)\.linear_in\.weight", r"depformer_in.\1.weight", "same"),
    (r"depformer\.slices\.(\d+)\.linear_out\.weight", r"linears.\1.weight", "same"),
    (r"depformer\.slices\.0\.emb\.weight", "depformer_text_emb.weight", "same"),
    (r"depformer\.slices\.(\d+)\.emb\.weight", "depformer_emb.{slice_minus_1}.weight", "same"),
    (_S + r"self_attn\.(in|out)_proj\.weight", r"depformer.layers.\2.self_attn.\3_proj", "step"),
    (_S + r"gating\.linear_(in|out)\.weight", r"depformer.layers.\2.gating.\1.linear_\3.weight", "same"),
    (_S + r"norm([12])\.weight", r"depformer.layers.\2.norm\3.alpha", "shared_norm"),
)
_COMPILED = tuple((re.compile(f"^{p}$"), t, k) for p, t, k in RULES)


def is_mlx_keys(keys: Iterable[str]) -> bool:
    """True for the key set of an MLX LM checkpoint (``audio_embs.*`` / ``depformer.slices.*`` / ``out_norm.weight``)."""
    return any(k.startswith(MLX_MARKERS) or k == "out_norm.weight" for k in keys)


def mlx_to_ours(name: str) -> tuple[str, str, int | None] | None:
    """MLX parameter name → (our key, kind, slice or None); None for a name no rule knows."""
    for pattern, template, kind in _COMPILED:
        match = pattern.match(name)
        if match:
            if "{slice_minus_1}" in template:
                return template.format(slice_minus_1=int(match.group(1)) - 1), kind, None
            step = int(match.group(1)) if kind in ("step", "shared_norm") else None
            return match.expand(template), kind, step
    return None


def ours_to_mlx(key: str, value: torch.Tensor, steps: int) -> list[tuple[str, torch.Tensor]]:
    """One tensor of our state dict → its MLX (name, tensor) pairs (per-step tensors and shared norms fan out
    to every slice). Raises KeyError for a key with no MLX counterpart."""
    m = re.match(r"^depformer\.layers\.(\d+)\.(self_attn\.(?:in|out)_proj|norm[12]\.alpha|gating\.(\d+)\.(linear_(?:in|out))\.weight)$", key)
    if m:
        layer, what = m.group(1), m.group(2)
        prefix = "depformer.slices.{s}.transformer.layers." + layer
        if what.startswith("self_attn"):
            return [(f"{prefix.format(s=s)}.{what}.weight", value[s]) for s in range(steps)]
        if what.startswith("norm"):
            return [(f"{prefix.format(s=s)}.{what[:5]}.weight", value.reshape(-1)) for s in range(steps)]
        return [(f"{prefix.format(s=m.group(3))}.gating.{m.group(4)}.weight", value)]
    simple = (
        (r"emb\.(\d+)\.weight", r"audio_embs.\1.weight"),
        (r"(text_emb|text_linear)\.weight", r"\1.weight"),
        (r"transformer\.layers\.(\d+)\.(self_attn\.(?:in|out)_proj|gating\.linear_(?:in|out))\.weight", r"transformer.layers.\1.\2.weight"),
        (r"depformer_in\.(\d+)\.weight", r"depformer.slices.\1.linear_in.weight"),
        (r"linears\.(\d+)\.weight", r"depformer.slices.\1.linear_out.weight"),
        (r"depformer_text_emb\.weight", "depformer.slices.0.emb.weight"),
    )
    for pattern, template in simple:
        m = re.match(f"^{pattern}$", key)
        if m:
            return [(m.expand(template), value)]
    m = re.match(r"^depformer_emb\.(\d+)\.weight$", key)
    if m:
        return [(f"depformer.slices.{int(m.group(1)) + 1}.emb.weight", value)]
    m = re.match(r"^(out_norm|transformer\.layers\.\d+\.norm[12])\.alpha$", key)
    if m:
        return [(f"{m.group(1)}.weight", value.reshape(-1))]
    raise KeyError(f"{key} has no MLX counterpart")


# --- reading ------------------------------------------------------------------------------------------------
def _affine(name: str, words: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, K: int | None, source: str) -> AffineWeight:
    """Packed MLX codes → :class:`AffineWeight`, the bit width found from the input size K of the config."""
    if K is None:
        raise CheckpointError(f"{source}: {name} is quantized but the model has no such layer")
    P = words.shape[-1]
    bits = 32 * P // K if K else 0
    if bits not in (2, 4, 8) or bits * K != 32 * P or scales.shape != biases.shape or K % scales.shape[-1]:
        raise CheckpointError(
            f"{source}: {name} holds {P} packed words and {scales.shape[-1]} groups per row, which does not fit the "
            f"config's input size {K} with 8-bit (groups of 64) or 4-bit (groups of 32) codes -- wrong config "
            "(--config), or sizes that are not multiples of the quantization group"
        )
    return AffineWeight(unpack_codes(words, bits), scales, biases, bits)


def read_mlx(path: Path, builder: StateBuilder, source: str | None = None) -> list[str]:
    """Feed every tensor of an MLX LM file into ``builder`` (our keys), one at a time. Returns the MLX keys no
    rule maps; raises CheckpointError for quantized tensors that do not fit the config or norms that differ
    between slices."""
    from safetensors import safe_open

    source = source or str(path)
    unknown: list[str] = []
    shared: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())  # noqa: SIM118 - safe_open is not a dict
            for name in sorted(keys):
                if name.endswith(QUANT_SUFFIXES) and name.rsplit(".", 1)[0] + ".weight" in keys:
                    continue  # read with its weight
                mapped = mlx_to_ours(name)
                if mapped is None:
                    unknown.append(name)
                    continue
                key, kind, step = mapped
                value: torch.Tensor | AffineWeight = f.get_tensor(name)
                base = name[: -len(".weight")]
                if f"{base}.scales" in keys:
                    shape = builder.expected_shape(key)
                    value = _affine(name, value, f.get_tensor(f"{base}.scales"), f.get_tensor(f"{base}.biases"),
                                    None if shape is None else shape[-1], source)
                if kind in ("norm", "shared_norm"):
                    value = value.reshape(1, 1, -1)
                if kind == "shared_norm":
                    if key in shared:
                        if not torch.equal(shared[key], value):
                            raise CheckpointError(
                                f"{source}: {name} differs from slice 0's; this model shares the Depth Transformer's "
                                "norms across steps and cannot hold per-slice norms"
                            )
                        continue
                    shared[key] = value
                    builder.add(key, value)
                else:
                    builder.add(key, value, step if kind == "step" else None)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises many types for corrupt or truncated files
        raise CheckpointError(f"could not read checkpoint {source}: {type(e).__name__}: {e}") from None
    return unknown


# --- writing ------------------------------------------------------------------------------------------------
def check_mlx_compatible(config: LMConfig) -> None:
    """``moshi_mlx`` derives the feed-forward widths from ``dim`` (``11 * dim / 4``, its ``dim_feedforward`` being
    ``4 * dim``) and from ``depformer_dim_feedforward`` (``2/3`` of it, or ``11 * dim / 4`` when it is 4 x dim).
    Raise ValueError when that differs from this model's, since moshi_mlx could not load the file."""
    ours = gating_hidden(config.dim, config.dim_feedforward)
    theirs = 11 * config.dim // 4
    dep_ours = gating_hidden(config.depformer_dim, config.depformer_feedforward)
    dff = config.depformer_feedforward
    dep_theirs = 11 * config.depformer_dim // 4 if dff == 4 * config.depformer_dim else 2 * dff // 3
    if ours != theirs or dep_ours != dep_theirs:
        raise ValueError(
            f"moshi_mlx would build feed-forward widths {theirs} / {dep_theirs} for this config, not {ours} / "
            f"{dep_ours}: this architecture cannot be written for MLX (use hidden_scale 4.125 and a depformer "
            "feed-forward size other than 4 x depformer_dim)"
        )


def to_mlx_state(lm: LMModel, fmt: str, progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """The MLX state dict of ``lm`` (float or quantized) in ``fmt``: floats in bf16; for q8 / q4 every Linear and
    Embedding weight as packed codes + ``scales`` + ``biases`` (bf16), as ``nn.quantize`` lays them out."""
    if fmt not in MLX_FORMATS:
        raise ValueError(f"unknown MLX format {fmt!r}; choose one of {', '.join(MLX_FORMATS)}")
    quant = MLX_FORMATS[fmt]
    out: dict[str, torch.Tensor] = {}
    state = dequantized_state(lm)
    for key, value in state.items():
        for name, tensor in ours_to_mlx(key, value, lm.config.dep_q):
            tensor = tensor.detach().to("cpu", torch.float32)
            if quant is None or not name.endswith(".weight") or tensor.dim() != 2:
                out[name] = tensor.to(torch.bfloat16).contiguous()
                continue
            bits, group = quant
            if tensor.shape[-1] % group:
                raise ValueError(f"{name}: input size {tensor.shape[-1]} is not a multiple of the {fmt} group size {group}")
            # Round the weight to bf16 first (moshi_mlx's set_dtype), then quantize it as nn.quantize would.
            codes, scales, biases = quantize_affine(tensor.to(torch.bfloat16), bits, group, torch.bfloat16)
            base = name[: -len(".weight")]
            out[name] = pack_codes(codes, bits)
            out[f"{base}.scales"] = scales
            out[f"{base}.biases"] = biases
        if progress is not None:
            progress(1)
    return out


def save_mlx(
    lm: LMModel,
    folder: str | Path,
    fmt: str = "mlx-q8",
    tokenizer: str | Path | None = None,
    mimi: str | Path | None = None,
    progress: bool = False,
) -> Path:
    """Write ``lm`` (float or quantized) for ``moshi_mlx``: ``folder/model.q8.safetensors`` (``mlx-q8``),
    ``model.q4.safetensors`` (``mlx-q4``) or ``model.safetensors`` (``mlx-bf16``), a ``config.json`` naming the
    files, and copies of the ``tokenizer`` (.model) and ``mimi`` files when given; each file atomically.
    Returns the model path. moshi_mlx loads it with ``nn.quantize(model, bits, group_size)`` then
    ``load_weights(path, strict=True)``."""
    check_mlx_compatible(lm.config)
    if fmt not in MLX_FORMATS:
        raise ValueError(f"unknown MLX format {fmt!r}; choose one of {', '.join(MLX_FORMATS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(lm.state_dict()), desc=f"converting to {fmt}", unit="tensor", leave=False)
    try:
        state = to_mlx_state(lm, fmt, bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    path = write_safetensors(state, folder / MLX_NAMES[fmt], metadata={"format": "mlx"})
    del state
    from .convert import write_companions  # convert builds on this module

    write_companions(folder, lm, path.name, tokenizer, mimi)
    return path
