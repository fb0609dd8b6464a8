"""Causal 1-d convolutions that stream: the layer owns the tail of its input (or output) between calls.

Batch mode and streaming mode run the same arithmetic, so feeding a signal in pieces gives the same result as
feeding it whole (up to float summation order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .derived import cached_derivation
from .streaming import StreamingModule, StreamingState, masked_zero_


def _init_like_torch(weight: nn.Parameter, bias: nn.Parameter | None) -> None:
    """torch.nn.Conv1d's default initialisation (fan-in from dims 1 and 2, as torch computes it)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(weight.shape[1] * weight.shape[2])
        nn.init.uniform_(bias, -bound, bound)


@dataclass
class ConvState(StreamingState):
    previous: torch.Tensor  # [B, C_in, P] the last P inputs
    fresh: torch.Tensor  # [B] bool: no input seen yet (replicate padding fills `previous` on first use)
    item_tensors = ("previous", "fresh")

    def reset(self, mask: torch.Tensor) -> None:
        masked_zero_(self.previous, mask)
        self.fresh.logical_or_(mask)


class StreamingConv1d(StreamingModule):
    """Causal ``Conv1d``: left-padded by ``(k - 1) * dilation + 1 - stride`` so that T inputs give T / stride
    outputs. ``pad_mode`` is "constant" (zeros) or "replicate" (copies of the first sample).

    Input [B, C_in, T] with T a multiple of ``stride``; output [B, C_out, T / stride].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")
        self.stride, self.dilation, self.groups, self.pad_mode = stride, dilation, groups, pad_mode
        self.padding = (kernel_size - 1) * dilation + 1 - stride
        if self.padding < 0:
            raise ValueError(f"kernel {kernel_size} (dilation {dilation}) shorter than stride {stride}")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        # True: always torch's own convolution, rounding as moshi's layer does (see `Mimi.match_moshi`).
        self.reference_arithmetic = False

    def reset_parameters(self) -> None:
        _init_like_torch(self.weight, self.bias)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> ConvState:
        previous = torch.zeros(batch_size, self.weight.shape[1] * self.groups, self.padding, device=device, dtype=dtype)
        fresh = torch.ones(batch_size, dtype=torch.bool, device=device)
        return ConvState(batch_size, previous, fresh)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Unpadded convolution of ``x`` [B, C_in, L] → [B, C_out, (L - span) / stride + 1]."""
        k = self.weight.shape[-1]
        if not self._use_gemm(x):
            return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        # On CPU, 1x1 convs, and strided convs on short or wide inputs (streaming), run faster as one GEMM over
        # explicit windows (im2col) than through oneDNN; the weight [C_out, C_in, k] is the [C_out, C_in * k] matrix.
        # Small-T GEMMs run at memory speed only with the weight as the row-major right operand (x @ W^T).
        B, C, _ = x.shape
        cols = x.unfold(-1, k, self.stride)  # [B, C, T, k]
        cols = cols.transpose(1, 2).reshape(B, cols.shape[2], C * k)  # [B, T, C * k]
        y = F.linear(cols, self.weight.view(self.weight.shape[0], C * k), self.bias)  # [B, T, C_out]
        return y.transpose(1, 2)

    def _use_gemm(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or self.groups != 1 or self.dilation != 1 or self.reference_arithmetic:
            return False
        # Measured on 2 cores: GEMM wins for 1x1 and strided convs over streaming-sized inputs, and for any conv
        # over a few steps (weight-bound); oneDNN wins over long (batch) inputs, where it also avoids im2col.
        length = x.shape[-1]
        return length <= 4096 and (self.weight.shape[-1] == 1 or self.stride > 1 or length <= 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._streaming_state
        if state is None:
            if self.padding:
                mode = "replicate" if self.pad_mode == "replicate" else "constant"
                x = F.pad(x, (self.padding, 0), mode=mode)
            return self._conv(x)
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.weight.shape[0], 0)
        if self.padding == 0:
            return self._conv(x)
        # State is updated in place (copy_), never re-bound, so a step can be captured in a CUDA graph.
        previous = state.previous
        if self.pad_mode == "replicate":
            previous = torch.where(state.fresh.view(-1, 1, 1), x[..., :1].expand_as(previous), previous)
            state.fresh.zero_()
        x = torch.cat([previous, x], dim=-1)
        state.previous.copy_(x[..., -self.padding :])
        return self._conv(x)


@dataclass
class ConvTransposeState(StreamingState):
    partial: torch.Tensor  # [B, C_out, K - S] overlap not yet emitted, without bias
    item_tensors = ("partial",)

    def reset(self, mask: torch.Tensor) -> None:
        masked_zero_(self.partial, mask)


class StreamingConvTranspose1d(StreamingModule):
    """Causal ``ConvTranspose1d``: T inputs give exactly T * stride outputs; the K - stride overlapping tail is
    kept and added to the head of the next call (streaming) or dropped (batch).

    Weight [C_in, C_out / groups, K] as in ``nn.ConvTranspose1d``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel {kernel_size} shorter than stride {stride}")
        self.stride, self.groups = stride, groups
        self.overlap = kernel_size - stride
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        # True: compute and round as moshi's layer does (see `_forward_as_reference`, `Mimi.match_moshi`).
        self.reference_arithmetic = False

    def reset_parameters(self) -> None:
        _init_like_torch(self.weight, self.bias)

    def _output_major_weight(self) -> torch.Tensor:
        """The weight as a contiguous [C_out * K, C_in] matrix, cached while the weight is unchanged.

        ``x @ W`` with W [C_in, C_out * K] runs at half memory speed for small T; the transposed copy runs at
        full speed.
        """
        return cached_derivation(self, "_output_major", self.weight, lambda w: w.view(w.shape[0], -1).t().contiguous())

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> ConvTransposeState:
        return ConvTransposeState(batch_size, torch.zeros(batch_size, self.out_channels, self.overlap, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C_in, T] → [B, C_out, T * stride]."""
        B, _, T = x.shape
        S, K = self.stride, self.weight.shape[-1]
        if T == 0:
            return x.new_zeros(B, self.out_channels, 0)
        state = self._streaming_state
        if self.reference_arithmetic:
            return self._forward_as_reference(x, state)
        # Measured on 2 cores: oneDNN wins only for narrow layers over long inputs (and on GPU).
        native = x.device.type != "cpu" or (self.groups == 1 and self.out_channels < 128 and T > 512)
        if native or K != 2 * S or self.groups not in (1, self.out_channels):
            y = F.conv_transpose1d(x, self.weight, None, S, groups=self.groups)  # [B, C, (T-1)S + K]
            if state is not None and self.overlap:
                y[..., : self.overlap] += state.partial
                state.partial.copy_(y[..., T * S :])
            y = y[..., : T * S]
        else:
            # K = 2S (every Mimi upsampler): each input step writes two S-long halves; output block t is
            # head[t] + tail[t - 1]. One GEMM (or a broadcast product for channel-wise weights) does it all.
            if self.groups == 1:
                parts = F.linear(x.transpose(1, 2).contiguous(), self._output_major_weight())  # [B, T, C_out * K]
                parts = parts.view(B, T, -1, K).transpose(1, 2)  # [B, C_out, T, K]
            else:
                parts = x[..., None] * self.weight.view(1, -1, 1, K)  # [B, C, T, K]
            head, tail = parts[..., :S], parts[..., S:]
            out = head.clone() if self.bias is None else head + self.bias.view(-1, 1, 1)
            out[:, :, 1:] += tail[:, :, :-1]
            if state is not None:
                out[:, :, 0] += state.partial
                state.partial.copy_(tail[:, :, -1])
            return out.reshape(B, -1, T * S)
        if self.bias is not None:
            y = y + self.bias.view(-1, 1)
        return y

    def _forward_as_reference(self, x: torch.Tensor, state: ConvTransposeState | None) -> torch.Tensor:
        """moshi's order of operations: torch's transposed convolution with its bias, the kept overlap added to
        the head, and the new overlap kept as ``(tail + bias) - bias`` (which rounds)."""
        T, S = x.shape[-1], self.stride
        y = F.conv_transpose1d(x, self.weight, self.bias, S, groups=self.groups)  # [B, C, (T-1)S + K]
        if state is not None and self.overlap:
            y[..., : self.overlap] += state.partial
            tail = y[..., T * S :]
            state.partial.copy_(tail if self.bias is None else tail - self.bias[:, None])
        return y[..., : T * S]
