"""SEANet: the causal convolutional encoder (24 kHz → 25 Hz, 512 channels) and decoder of Mimi.

Module indices follow the released checkpoint (``encoder.model.{i}``), so weights map by name.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.conv import StreamingConv1d, StreamingConvTranspose1d
from ..nn.streaming import StreamingModule
from .config import SEANetConfig


class ResidualBlock(nn.Module):
    """``x + conv1x1(elu(conv_k(elu(x))))`` with a ``compress``-times narrower hidden layer."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList(
            [nn.ELU(), StreamingConv1d(dim, hidden, kernel_size, dilation=dilation), nn.ELU(inplace=True), StreamingConv1d(hidden, dim, 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.block:
            y = layer(y)
        return x + y


def _residuals(cfg: SEANetConfig, dim: int) -> list[nn.Module]:
    return [
        ResidualBlock(dim, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress) for j in range(cfg.n_residual_layers)
    ]


class SEANetEncoder(StreamingModule):
    """[B, channels, S] → [B, dimension, S / hop_length]."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        nf = cfg.n_filters
        layers: list[nn.Module] = [StreamingConv1d(cfg.channels, nf, cfg.kernel_size)]
        mult = 1
        for ratio in reversed(cfg.ratios):
            layers += _residuals(cfg, mult * nf)
            layers += [nn.ELU(inplace=True), StreamingConv1d(mult * nf, 2 * mult * nf, 2 * ratio, stride=ratio)]
            mult *= 2
        layers += [nn.ELU(inplace=True), StreamingConv1d(mult * nf, cfg.dimension, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model:
            x = layer(x)
        return x


class SEANetDecoder(StreamingModule):
    """[B, dimension, T] → [B, channels, T * hop_length]."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        nf = cfg.n_filters
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [StreamingConv1d(cfg.dimension, mult * nf, cfg.kernel_size)]
        for ratio in cfg.ratios:
            layers += [nn.ELU(inplace=True), StreamingConvTranspose1d(mult * nf, mult * nf // 2, 2 * ratio, stride=ratio)]
            layers += _residuals(cfg, mult * nf // 2)
            mult //= 2
        layers += [nn.ELU(inplace=True), StreamingConv1d(nf, cfg.channels, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model:
            x = layer(x)
        return x
