"""Weight-only int8 / int4 quantization of the Moshi LM (both transformers, their heads and all embeddings).

>>> lm = fd.quantize(fd.load_lm("model.safetensors"), "int8")

=========  =====================================================  ==========================================
mode       linear layers (temporal, depth per step, heads)        embeddings (audio, text, depth inputs)
=========  =====================================================  ==========================================
``int8``   int8, one scale per output channel (``Int8Linear``)     8-bit affine codes, groups of 64 (or 32)
``int4``   4-bit affine codes, groups of 32 (``Int4Linear``)       4-bit affine codes, groups of 32
=========  =====================================================  ==========================================

Norms stay in the model's dtype. Embedding lookups dequantize only the rows they read. The same conversions
serve :func:`quantize` (a loaded float model, one layer at a time) and the loaders (one checkpoint tensor at a
time, into modules built on the meta device by :func:`quantized_skeleton`), so a quantized 7B model never exists
in float. MLX's affine codes (:class:`AffineWeight`) are kept as they are where our layout is the same (int4
linears and embeddings with the same bit width); MLX's 8-bit linear groups are requantized per channel, the
layout of PyTorch's int8 kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn.quant import (
    Int4Linear,
    Int8Linear,
    check_int4_shape,
    dequantize_affine,
    pack_nibbles,
    quantize_affine,
    unpack_nibbles,
)
from .depth import StepProjections
from .model import ZERO_TOKEN, LMModel, TokenEmbedding

MODES = ("int8", "int4")
EMBEDDING_BITS = {"int8": (8, 64), "int4": (4, 32)}  # mode -> (bits, group size) of the embeddings
INT4_GROUP = 32


def embedding_group(mode: str, width: int, name: str) -> tuple[int, int]:
    """(bits, group size) of an embedding of ``width``: the mode's group, or 32 for widths it does not divide."""
    bits, group = EMBEDDING_BITS[mode]
    for g in (group, 32):
        if width % g == 0:
            return bits, g
    raise ValueError(f"{name}: width {width} is not a multiple of the {mode} embedding group size {group} (or 32)")


@dataclass
class AffineWeight:
    """A weight as MLX stores it quantized: codes uint8 [..., K], scales and biases [..., K/G]."""

    codes: torch.Tensor
    scales: torch.Tensor
    biases: torch.Tensor
    bits: int

    @property
    def group_size(self) -> int:
        return self.codes.shape[-1] // self.scales.shape[-1]

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``codes * scale + bias`` computed in the scales' dtype (as ``mlx.core.dequantize``), then cast."""
        return dequantize_affine(self.codes, self.scales, self.biases, dtype)

    def to(self, device: torch.device | str) -> AffineWeight:
        return AffineWeight(self.codes.to(device), self.scales.to(device), self.biases.to(device), self.bits)


def as_float(value: torch.Tensor | AffineWeight, dtype: torch.dtype | None) -> torch.Tensor:
    if isinstance(value, AffineWeight):
        return value.dequantize(dtype)
    return value if dtype is None or not value.is_floating_point() else value.to(dtype)


class QuantEmbedding(nn.Module):
    """:class:`~fullduplex.lm.model.TokenEmbedding` with affine group codes: ``weight`` uint8 [V, D] (8 bits) or
    [V, D/2] (4 bits, two codes a byte), ``scales`` / ``biases`` [V, D/G] in the model's dtype. -1 gives zeros."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, bits: int, group_size: int, dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if embedding_dim % group_size:
            raise ValueError(f"embedding width {embedding_dim} is not a multiple of the quantization group size {group_size}")
        self.num_embeddings, self.embedding_dim, self.bits, self.group_size = num_embeddings, embedding_dim, bits, group_size
        width = embedding_dim if bits == 8 else embedding_dim // 2
        groups = embedding_dim // group_size
        self.register_buffer("weight", torch.empty(num_embeddings, width, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(num_embeddings, groups, dtype=dtype, device=device))
        self.register_buffer("biases", torch.empty(num_embeddings, groups, dtype=dtype, device=device))

    @classmethod
    def from_affine(cls, value: AffineWeight, dtype: torch.dtype) -> QuantEmbedding:
        V, D = value.codes.shape
        layer = cls(V, D, value.bits, value.group_size, dtype, device="meta")
        layer.weight = value.codes if value.bits == 8 else pack_nibbles(value.codes)
        layer.scales, layer.biases = value.scales.to(dtype), value.biases.to(dtype)
        return layer

    def codes(self, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        codes = self.weight[rows]
        return codes if self.bits == 8 else unpack_nibbles(codes)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_affine(self.codes(), self.scales, self.biases, dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = tokens.clamp(min=0)
        out = dequantize_affine(self.codes(rows), self.scales[rows], self.biases[rows])  # [..., D]
        return torch.where((tokens == ZERO_TOKEN)[..., None], torch.zeros((), dtype=out.dtype, device=out.device), out)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group_size={self.group_size}"


class QuantStepProjections(nn.Module):
    """:class:`~fullduplex.lm.depth.StepProjections` with one quantized linear layer per step
    (``in_projs.{s}``, ``out_projs.{s}``)."""

    def __init__(self, in_projs: list[nn.Module], out_projs: list[nn.Module]) -> None:
        super().__init__()
        self.in_projs, self.out_projs = nn.ModuleList(in_projs), nn.ModuleList(out_projs)

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.in_projs[s](x[:, s]) for s in range(x.shape[1])], dim=1)

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.out_projs[s](x[:, s]) for s in range(x.shape[1])], dim=1)

    def step_in(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.in_projs[k](x)

    def step_out(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.out_projs[k](x)


# --- one weight → one quantized module ------------------------------------------------------------------
def quantized_linear(value: torch.Tensor | AffineWeight, mode: str, name: str, device: torch.device) -> nn.Module:
    """The quantized layer for a linear weight [N, K] (float, or MLX codes) on ``device``."""
    if isinstance(value, AffineWeight):
        value = value.to(device)
        if mode == "int4" and value.bits == 4 and value.group_size == INT4_GROUP:
            return Int4Linear.from_affine(value.codes, value.scales, value.biases, name)
        value = value.dequantize(torch.float32)  # another grid: requantize from the exact values
    value = value.to(device)
    if mode == "int8":
        return Int8Linear.from_float(value)
    return Int4Linear.from_float(value, INT4_GROUP, name)


def quantized_embedding(value: torch.Tensor | AffineWeight, mode: str, dtype: torch.dtype, device: torch.device, name: str) -> QuantEmbedding:
    bits, group = embedding_group(mode, value.shape[-1], name)
    if isinstance(value, AffineWeight) and (value.bits, value.group_size) == (bits, group):
        return QuantEmbedding.from_affine(value.to(device), dtype)
    w = as_float(value, torch.float32).to(device)
    return QuantEmbedding.from_affine(AffineWeight(*quantize_affine(w, bits, group, dtype), bits), dtype)


# --- the model ------------------------------------------------------------------------------------------
def targets(lm: LMModel) -> dict[str, str]:
    """Module name → "linear" | "embedding" | "steps" for every module that quantization replaces. ValueError for
    the Hibiki / Kyutai TTS options, whose layers it does not handle yet."""
    cfg = lm.config
    options = {"conditioners": cfg.conditioners, "cross_attention": cfg.cross_attention,
               "depformer_low_rank_embeddings": cfg.depformer_low_rank_embeddings,
               "depformer_weights_per_step_schedule": cfg.depformer_weights_per_step_schedule,
               "demux_second_text_stream": cfg.demux_second_text_stream}
    used = [name for name, value in options.items() if value]
    if used:
        raise ValueError(f"quantization does not handle models with {', '.join(used)} (Hibiki, Kyutai TTS) yet; "
                         "load them without --quantize")
    found = {}
    for name, module in lm.named_modules():
        # Output heads with a bias (bias_proj), normed embeddings (norm_emb) and the small extra heads stay float.
        if isinstance(module, nn.Linear):
            if module.bias is None and not name.startswith("extra_heads."):
                found[name] = "linear"
        elif isinstance(module, TokenEmbedding):
            if module.norm is None:
                found[name] = "embedding"
        elif isinstance(module, StepProjections):
            found[name] = "steps"
    return found


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")


@torch.no_grad()
def quantize(lm: LMModel, mode: str) -> LMModel:
    """Quantize ``lm`` in place, one layer at a time, on the device its weights are on (see module docstring).
    Norms and activations keep the model's dtype; linear layers compute in bf16 inside the int8 / int4
    kernels. Returns ``lm``. Raises ValueError naming the layer when a size does not fit the group size."""
    check_mode(mode)
    dtype = lm.out_norm.alpha.dtype
    for name, kind in targets(lm).items():
        module = lm.get_submodule(name)
        device = next(module.parameters()).device
        if kind == "linear":
            new = quantized_linear(module.weight, mode, name, device)
        elif kind == "embedding":
            new = quantized_embedding(module.weight, mode, dtype, device, name)
        else:
            new = QuantStepProjections(
                [quantized_linear(w, mode, f"{name}.in_projs.{s}", device) for s, w in enumerate(module.in_proj)],
                [quantized_linear(w, mode, f"{name}.out_projs.{s}", device) for s, w in enumerate(module.out_proj)],
            )
        _replace(lm, name, new)
    lm.quantization = mode
    return lm


def quantized_skeleton(lm: LMModel, mode: str, device: torch.device, dtype: torch.dtype) -> LMModel:
    """Replace, in ``lm`` built on the meta device, every target with an empty quantized module of the layout
    ``mode`` gives on ``device`` (for loaders that fill it tensor by tensor). Checks sizes against the groups."""
    check_mode(mode)

    def linear(module: nn.Module | None, K: int, N: int, name: str) -> nn.Module:
        if mode == "int8":
            return Int8Linear(K, N, device="meta")
        check_int4_shape(N, K, INT4_GROUP, device.type, name)
        return Int4Linear(K, N, INT4_GROUP, device="meta", layout="cuda" if device.type == "cuda" else "cpu")

    for name, kind in targets(lm).items():
        module = lm.get_submodule(name)
        if kind == "linear":
            new = linear(module, module.in_features, module.out_features, name)
        elif kind == "embedding":
            bits, group = embedding_group(mode, module.embedding_dim, name)
            new = QuantEmbedding(module.num_embeddings, module.embedding_dim, bits, group, dtype, device="meta")
        else:
            S, three_d, D = module.in_proj.shape
            new = QuantStepProjections(
                [linear(None, D, three_d, f"{name}.in_projs.{s}") for s in range(S)],
                [linear(None, D, D, f"{name}.out_projs.{s}") for s in range(S)],
            )
        _replace(lm, name, new)
    lm.quantization = mode
    return lm


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the weights a module holds (parameters and persistent buffers)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def dequantized_state(lm: LMModel) -> dict[str, torch.Tensor]:
    """The float state dict (our layout) of a float or quantized LM, in fp32 for quantized layers."""
    state: dict[str, torch.Tensor] = {}
    skip: list[str] = []
    for name, module in lm.named_modules():
        if (name + ".").startswith(tuple(skip)):
            continue  # inside a QuantStepProjections, handled whole
        if isinstance(module, (Int8Linear, Int4Linear, QuantEmbedding)):
            state[f"{name}.weight"] = module.dequantize(torch.float32)
            skip.append(name + ".")
        elif isinstance(module, QuantStepProjections):
            state[f"{name}.in_proj"] = torch.stack([m.dequantize(torch.float32) for m in module.in_projs])
            state[f"{name}.out_proj"] = torch.stack([m.dequantize(torch.float32) for m in module.out_projs])
            skip.append(name + ".")
    for key, value in lm.state_dict().items():
        if not key.startswith(tuple(skip)):
            state[key] = value
    return state
