"""Weight-only quantization: affine group codes (MLX's format) and linear layers on PyTorch's own kernels.

Affine group quantization (``mlx.core.quantize``, mode "affine"): the last axis of a weight [N, K] is cut into
groups of G values; each group keeps a ``scale`` and a ``bias`` and each value a ``bits``-bit code q, with
``w ≈ q * scale + bias``. MLX packs the codes into ``uint32`` words, lowest bits first.

Linear layers (weights [N, K], activations [..., K]):

- :class:`Int8Linear`: int8 codes, one symmetric scale per output channel (``w = q * scale``), run by
  ``aten._weight_int8pack_mm`` on CPU (bf16 activations; input sizes a multiple of 16, which every released
  model's are) and by ``F.linear`` on the int8 weight cast on the fly elsewhere (torch has no CUDA kernel for it).
- :class:`Int4Linear`: 4-bit affine codes in groups of 32..256 along K, run by PyTorch's "tinygemm" kernels
  (``aten._weight_int4pack_mm_for_cpu`` / ``aten._weight_int4pack_mm`` on CUDA, bf16 activations). tinygemm
  computes ``(q - 8) * scale + zero``, so MLX's ``q * scale + bias`` maps to ``zero = bias + 8 * scale``: the same
  codes and scales, the zero point rounded once to bf16.

Quantized weights are buffers, not parameters: they are not trained, and the model's first floating parameter
(a norm) still tells streaming code the activation dtype. Quantize a model on the device it will run on: the
int4 kernel layout differs between CPU and CUDA.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from torch import nn

COMPUTE_DTYPE = torch.bfloat16  # what the int8 / int4 kernels take as activations
# torch 2.13's CPU `_weight_int8pack_mm` needs an input size that is a multiple of 16: otherwise it returns wrong
# values for one row and crashes for several (measured). Other sizes take the dequantize-on-the-fly path.
INT8_CPU_K_MULTIPLE = 16
LITTLE_ENDIAN = sys.byteorder == "little"


# --- affine group codes (pure functions) -------------------------------------------------------------------
def quantize_affine(
    weight: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight`` [..., K] → (codes uint8 [..., K], scales [..., K/G], biases [..., K/G]) with
    ``weight ≈ codes * scale + bias``: each group spans its min..max in ``2**bits - 1`` steps. Scales and biases
    are rounded to ``dtype`` (default ``weight``'s) *before* the codes are chosen, so the error stays within
    half a step of the stored scale (one step at most for a group's extremes)."""
    K = weight.shape[-1]
    if K % group_size:
        raise ValueError(f"last dimension {K} is not a multiple of the quantization group size {group_size}")
    dtype = dtype or weight.dtype
    levels = 2**bits - 1
    w = weight.float().unflatten(-1, (K // group_size, group_size))  # [..., K/G, G]
    low, high = w.amin(-1), w.amax(-1)
    scales = ((high - low) / levels).clamp(min=1e-12).to(dtype)
    biases = low.to(dtype)
    codes = torch.round((w - biases.float()[..., None]) / scales.float()[..., None]).clamp_(0, levels)
    return codes.to(torch.uint8).flatten(-2), scales, biases


def dequantize_affine(
    codes: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """codes [..., K] (integers), scales / biases [..., K/G] → ``codes * scale + bias`` [..., K] in ``dtype``
    (default: the scales' dtype). Computed in the scales' dtype, as ``mlx.core.dequantize`` does."""
    groups = scales.shape[-1]
    q = codes.unflatten(-1, (groups, -1)).to(scales.dtype)
    out = (q * scales[..., None] + biases[..., None]).flatten(-2)
    return out if dtype is None else out.to(dtype)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes uint8 [..., K] → MLX words uint32 [..., K * bits / 32], lowest bits first."""
    per = 32 // bits
    if codes.shape[-1] % per:
        raise ValueError(f"last dimension {codes.shape[-1]} is not a multiple of {per} ({bits}-bit codes per word)")
    if LITTLE_ENDIAN and bits in (4, 8):  # a word's lowest bits are its first byte: reinterpret, no arithmetic
        packed = codes if bits == 8 else pack_nibbles(codes)
        return packed.contiguous().view(torch.uint32)
    q = codes.to(torch.int64).unflatten(-1, (-1, per))
    shifts = torch.arange(per, device=codes.device, dtype=torch.int64) * bits
    words = (q << shifts).sum(-1)  # < 2**32: fits int64; int32 wraps to the same bits
    return words.to(torch.int32).view(torch.uint32)


def unpack_codes(words: torch.Tensor, bits: int) -> torch.Tensor:
    """MLX words uint32 [..., P] → codes uint8 [..., P * 32 / bits]."""
    if LITTLE_ENDIAN and bits in (4, 8):
        data = words.contiguous().view(torch.uint8)
        return data if bits == 8 else unpack_nibbles(data)
    per = 32 // bits
    w = words.view(torch.int32)[..., None]
    shifts = torch.arange(per, device=words.device, dtype=torch.int32) * bits
    return ((w >> shifts) & (2**bits - 1)).to(torch.uint8).flatten(-2)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes uint8 [..., K] → bytes [..., K/2], even index in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`."""
    out = torch.empty(*packed.shape[:-1], 2 * packed.shape[-1], dtype=torch.uint8, device=packed.device)
    torch.bitwise_and(packed, 15, out=out[..., 0::2])
    torch.bitwise_right_shift(packed, 4, out=out[..., 1::2])
    return out


# --- int8 ---------------------------------------------------------------------------------------------------
class Int8Linear(nn.Module):
    """Bias-free linear layer with an int8 weight [N, K] and one scale per output channel (bf16)."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=COMPUTE_DTYPE, device=device))

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Linear:
        """Symmetric per-channel codes: ``scale = max |w| / 127`` per row."""
        N, K = weight.shape
        layer = cls(K, N, device=weight.device)
        w = weight.detach().float()
        scales = (w.abs().amax(1) / 127).clamp(min=1e-12).to(COMPUTE_DTYPE)  # codes are rounded on the stored scale
        layer.weight.copy_(torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8))
        layer.scales.copy_(scales)
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.scales.float()[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if x.device.type == "cpu" and self.in_features % INT8_CPU_K_MULTIPLE == 0:
            # .to() is free when the model was not cast after quantization (scales are made in bf16)
            y = torch.ops.aten._weight_int8pack_mm(x2.to(COMPUTE_DTYPE), self.weight, self.scales.to(COMPUTE_DTYPE))
        else:  # CUDA (no int8 kernel in torch), or a CPU size the kernel gets wrong: cast the codes on the fly
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8, per-channel"


# --- int4 ---------------------------------------------------------------------------------------------------
CUDA_INNER_K_TILES = 8


def check_int4_shape(out_features: int, in_features: int, group_size: int, device_type: str, name: str = "") -> None:
    """Raise ValueError unless tinygemm can run a [N, K] weight in groups of ``group_size`` on this device."""
    where = f"{name}: " if name else ""
    if group_size not in (32, 64, 128, 256):
        raise ValueError(f"{where}int4 group size must be 32, 64, 128 or 256, got {group_size}")
    if in_features % group_size:
        raise ValueError(f"{where}input size {in_features} is not a multiple of the int4 group size {group_size}")
    n_mult, k_mult = (8, 16 * CUDA_INNER_K_TILES) if device_type == "cuda" else (16, 2)
    if out_features % n_mult or in_features % k_mult:
        raise ValueError(
            f"{where}int4 on {device_type} needs output size a multiple of {n_mult} and input size a multiple of "
            f"{k_mult}, got [{out_features}, {in_features}]"
        )


@functools.lru_cache(maxsize=16)
def _cpu_layout(out_features: int, in_features: int) -> torch.Tensor:
    """Where the CPU int4 layout puts each code: for nibble slot i of the packed [N, K/2] bytes (low nibble
    first), the flat index n * K + k of the code it holds. Found by packing the position's base-16 digits."""
    total = out_features * in_features
    position = torch.arange(total, dtype=torch.int64)
    found = torch.zeros(total, dtype=torch.int64)
    digit = 0
    while 16**digit < total:
        codes = ((position >> (4 * digit)) & 15).to(torch.int32).view(out_features, in_features)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        found |= unpack_nibbles(packed).flatten().to(torch.int64) << (4 * digit)
        digit += 1
    return found


class Int4Linear(nn.Module):
    """Bias-free linear layer with 4-bit affine codes in groups of ``group_size`` along the input.

    ``weight``: the codes in the kernel's layout for the device it was made on (CPU: uint8 [N, K/2]; CUDA:
    tinygemm's int32 tiles); ``scales_and_zeros`` [K/G, N, 2] bf16 with ``w = (q - 8) * scale + zero``.
    """

    def __init__(
        self, in_features: int, out_features: int, group_size: int = 32, device: torch.device | str | None = None,
        layout: str | None = None,
    ) -> None:
        """``layout``: "cpu" or "cuda" (default: ``device``'s; give it when building on the meta device)."""
        super().__init__()
        device = torch.device(device or "cpu")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.layout = layout or ("cuda" if device.type == "cuda" else "cpu")
        if self.layout == "cuda":
            shape = (out_features // 8, in_features // (CUDA_INNER_K_TILES * 16), 32, CUDA_INNER_K_TILES // 2)
            weight = torch.empty(shape, dtype=torch.int32, device=device)
        else:
            weight = torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device)
        self.register_buffer("weight", weight)
        self.register_buffer(
            "scales_and_zeros", torch.empty(in_features // group_size, out_features, 2, dtype=COMPUTE_DTYPE, device=device)
        )

    @classmethod
    def from_affine(cls, codes: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, name: str = "") -> Int4Linear:
        """From MLX-style codes uint8 [N, K] (0..15), scales and biases [N, K/G]: the same codes and scales."""
        N, K = codes.shape
        group = K // scales.shape[-1]
        check_int4_shape(N, K, group, codes.device.type, name)
        layer = cls(K, N, group, device=codes.device)
        if layer.layout == "cuda":  # tinygemm's CUDA packing takes [N, K/2] bytes, even index in the high nibble
            pairs = (codes[:, 0::2] << 4) | codes[:, 1::2]
            layer.weight = torch.ops.aten._convert_weight_to_int4pack(pairs.contiguous(), CUDA_INNER_K_TILES)
        else:
            layer.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        zeros = biases.float() + 8 * scales.float()
        layer.scales_and_zeros = torch.stack([scales.float(), zeros], dim=-1).transpose(0, 1).contiguous().to(COMPUTE_DTYPE)
        return layer

    @classmethod
    def from_float(cls, weight: torch.Tensor, group_size: int = 32, name: str = "") -> Int4Linear:
        check_int4_shape(weight.shape[0], weight.shape[1], group_size, weight.device.type, name)
        codes, scales, biases = quantize_affine(weight.detach().float(), 4, group_size)
        return cls.from_affine(codes, scales, biases, name)

    def codes(self) -> torch.Tensor:
        """The 4-bit codes as uint8 [N, K] (CPU layout only)."""
        if self.layout != "cpu":
            raise NotImplementedError("reading int4 codes back is only implemented for the CPU layout")
        N, K = self.out_features, self.in_features
        slots = unpack_nibbles(self.weight).flatten()
        out = torch.empty(N * K, dtype=torch.uint8, device=self.weight.device)
        out[_cpu_layout(N, K).to(self.weight.device)] = slots
        return out.view(N, K)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scales, zeros = self.scales_and_zeros.float().transpose(0, 1).unbind(-1)  # [N, K/G] each
        return dequantize_affine(self.codes().to(torch.int16) - 8, scales, zeros, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != self.layout:
            raise RuntimeError(f"int4 weights were packed for {self.layout}; quantize the model on {x.device.type}")
        x2 = x.reshape(-1, self.in_features).to(COMPUTE_DTYPE)
        sz = self.scales_and_zeros.to(COMPUTE_DTYPE)
        if self.layout == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(x2, self.weight, self.group_size, sz)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group_size, sz)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group_size={self.group_size}"
