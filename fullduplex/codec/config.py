"""Mimi architecture config: a frozen dataclass, presets by name, and moshi's ``mimi_config`` dict accepted."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class SEANetConfig:
    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)  # decoder order; the encoder runs them reversed
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    dilation_base: int = 2
    compress: int = 2

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclass(frozen=True)
class BottleneckConfig:
    """The transformers between SEANet and the quantizer (one in the encoder, one in the decoder)."""

    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250  # steps at the encoder frame rate (25 Hz: 10 s)
    max_period: float = 10000.0
    layer_scale: float = 0.01


@dataclass(frozen=True)
class QuantizerConfig:
    dimension: int = 256
    n_q: int = 32  # 1 semantic + n_q - 1 acoustic codebooks stored in the checkpoint
    bins: int = 2048


@dataclass(frozen=True)
class MimiConfig:
    sample_rate: int = 24000
    frame_rate: float = 12.5
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    transformer: BottleneckConfig = field(default_factory=BottleneckConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        if self.encoder_frame_rate % self.frame_rate:
            raise ValueError(
                f"frame_rate {self.frame_rate} must divide the SEANet rate {self.encoder_frame_rate} "
                f"(sample_rate {self.sample_rate} / hop {self.seanet.hop_length})"
            )

    @property
    def frame_size(self) -> int:
        """Samples per codec frame (1920 = 80 ms for Mimi)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.seanet.hop_length

    @property
    def resample_stride(self) -> int:
        return int(self.encoder_frame_rate / self.frame_rate)

    def with_codebooks(self, n_q: int) -> MimiConfig:
        return replace(self, quantizer=replace(self.quantizer, n_q=n_q))

    # --- moshi's dict format ------------------------------------------------------------------------------
    @classmethod
    def from_moshi_dict(cls, config: dict[str, Any]) -> MimiConfig:
        """Read moshi's ``mimi_config`` dict (keys ``seanet``, ``transformer``, ``quantizer``, ...).

        Options that the released Mimi does not use raise ``ValueError`` rather than being ignored.
        """
        seanet, tr, qz = dict(config["seanet"]), dict(config["transformer"]), dict(config["quantizer"])
        expect = {
            "seanet": (seanet, {"causal": True, "activation": "ELU", "norm": "none", "pad_mode": "constant",
                                "true_skip": True, "disable_norm_outer_blocks": 0}),
            "transformer": (tr, {"causal": True, "gating": "none", "norm": "layer_norm",
                                 "positional_embedding": "rope", "conv_layout": True}),
        }
        for name, (section, values) in expect.items():
            for key, value in values.items():
                if key in section and section[key] != value:
                    raise ValueError(f"mimi_config.{name}.{key}={section[key]!r} is not supported (only {value!r})")
        if tr.get("d_model", seanet["dimension"]) != seanet["dimension"]:
            raise ValueError("mimi_config.transformer.d_model must equal seanet.dimension")
        if qz.get("n_q_semantic", 1) != 1 or qz.get("input_dimension", seanet["dimension"]) != seanet["dimension"]:
            raise ValueError("only one semantic codebook and quantizer input_dimension == seanet.dimension are supported")
        if "channels" in config and config["channels"] != 1:
            raise ValueError("only mono Mimi (channels=1) is supported")
        return cls(
            sample_rate=int(config.get("sample_rate", 24000)),
            frame_rate=float(config.get("frame_rate", 12.5)),
            seanet=SEANetConfig(
                channels=seanet.get("channels", 1),
                dimension=seanet["dimension"],
                n_filters=seanet["n_filters"],
                ratios=tuple(seanet["ratios"]),
                kernel_size=seanet["kernel_size"],
                last_kernel_size=seanet["last_kernel_size"],
                residual_kernel_size=seanet["residual_kernel_size"],
                n_residual_layers=seanet["n_residual_layers"],
                dilation_base=seanet["dilation_base"],
                compress=seanet["compress"],
            ),
            transformer=BottleneckConfig(
                num_heads=tr["num_heads"],
                num_layers=tr["num_layers"],
                dim_feedforward=tr["dim_feedforward"],
                context=tr["context"],
                max_period=float(tr.get("max_period", 10000)),
                layer_scale=tr["layer_scale"],
            ),
            quantizer=QuantizerConfig(dimension=qz["dimension"], n_q=qz["n_q"], bins=qz["bins"]),
        )

    def to_moshi_dict(self) -> dict[str, Any]:
        """The same architecture as moshi's ``mimi_config`` dict (what ``moshi.models.loaders.get_mimi`` takes)."""
        s, t, q = self.seanet, self.transformer, self.quantizer
        return {
            "sample_rate": self.sample_rate,
            "channels": s.channels,
            "frame_rate": self.frame_rate,
            "seanet": {
                "channels": s.channels, "dimension": s.dimension, "causal": True, "n_filters": s.n_filters,
                "n_residual_layers": s.n_residual_layers, "activation": "ELU", "compress": s.compress,
                "dilation_base": s.dilation_base, "disable_norm_outer_blocks": 0, "kernel_size": s.kernel_size,
                "residual_kernel_size": s.residual_kernel_size, "last_kernel_size": s.last_kernel_size,
                "norm": "none", "pad_mode": "constant", "ratios": list(s.ratios), "true_skip": True,
            },
            "quantizer": {"dimension": q.dimension, "n_q": q.n_q, "bins": q.bins,
                          "input_dimension": s.dimension, "output_dimension": s.dimension},
            "transformer": {
                "d_model": s.dimension, "num_heads": t.num_heads, "num_layers": t.num_layers, "causal": True,
                "layer_scale": t.layer_scale, "context": t.context, "conv_layout": True,
                "max_period": t.max_period, "gating": "none", "norm": "layer_norm",
                "positional_embedding": "rope", "dim_feedforward": t.dim_feedforward,
                "input_dimension": s.dimension, "output_dimensions": [s.dimension],
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, MimiConfig] = {
    # The released codec of Moshi, J-Moshi and Human-1 (tokenizer-e351c8d8-checkpoint125.safetensors).
    "mimi": MimiConfig(),
    # A few-thousand-parameter Mimi with the same frame (1920 samples) and a short context, for tests.
    "tiny": MimiConfig(
        seanet=SEANetConfig(dimension=32, n_filters=4),
        transformer=BottleneckConfig(num_heads=2, num_layers=2, dim_feedforward=64, context=10),
        quantizer=QuantizerConfig(dimension=8, n_q=10, bins=32),
    ),
    # The demo codec shipped in fullduplex/assets/demo (scripts/make_demo_model.sh trains it on CPU): Mimi's
    # frame (24 kHz, 12.5 Hz) with 16 SEANet filters, a 128-d latent, 2-layer bottleneck transformers and
    # 8 codebooks of 256 entries (800 bit/s).
    "demo": MimiConfig(
        seanet=SEANetConfig(dimension=128, n_filters=16),
        transformer=BottleneckConfig(num_heads=4, num_layers=2, dim_feedforward=256, context=250),
        quantizer=QuantizerConfig(dimension=64, n_q=8, bins=256),
    ),
}


def mimi_preset(name: str) -> MimiConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown Mimi preset {name!r}; choose one of {sorted(PRESETS)}") from None
