"""Architecture config of the Moshi LM: a frozen dataclass, presets by name, moshi's ``config.json`` accepted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# config.json keys that are not LM architecture (CheckpointInfo pops them) or that do not change the model.
_NOT_ARCHITECTURE = {
    "moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type", "lm_gen_config",
    "tts_config", "stt_config", "model_id", "depformer_causal", "causal", "lora", "lora_rank", "lora_scaling",
    "depformer_context", "gradient_checkpointing",
    "depformer_max_period",  # the Depth Transformer has no positional embedding
    "mimi_config",  # the codec's architecture, beside the LM's (the bundled demo model's config.json)
}
# Options of moshi's LMModel that this implementation does not support: refused unless at their default.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "conditioners": {}, "fuser": {}, "cross_attention": False, "quantize": False,
    "demux_second_stream": False, "demux_second_text_stream": False, "depformer_low_rank_embeddings": None,
    "depformer_weights_per_step_schedule": None, "depformer_norm": None,
    "layer_scale": None, "depformer_layer_scale": None,
    "gating": "silu", "depformer_gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
    "depformer_pos_emb": "none", "depformer_multi_linear": True, "depformer_weights_per_step": True,
}


@dataclass(frozen=True)
class LMConfig:
    """The Temporal (``dim``...) and Depth (``depformer_*``) transformers, vocabularies and stream delays."""

    dim: int = 4096
    num_heads: int = 32
    num_layers: int = 32
    hidden_scale: float = 4.125
    context: int = 3000
    max_period: float = 10000.0
    text_card: int = 32000
    text_card_out: int | None = None  # text head size; None: text_card
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0
    n_q: int = 16  # audio streams: the model's own (own_q) + the user's
    dep_q: int = 8  # audio codebooks the Depth Transformer generates (16 for PersonaPlex: its own, then the user's)
    card: int = 2048
    depformer_dim: int = 1024
    depformer_dim_feedforward: int | None = 4224  # None: int(hidden_scale * depformer_dim)
    depformer_num_heads: int = 16
    depformer_num_layers: int = 6
    delays: tuple[int, ...] = (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
    # Options of the newer models (Kyutai STT, TTS, Hibiki). dep_q = 0 (STT): no Depth Transformer, text out only.
    kv_repeat: int = 1  # grouped-query attention: keys/values have num_heads // kv_repeat heads (both transformers)
    norm_emb: bool = False  # a LayerNorm after every token embedding (``emb.{k}.norm``, ...)
    bias_proj: bool = False  # biases on the output heads (``text_linear``, ``linears.{k}``)
    extra_heads_num_heads: int = 0  # small heads on the Temporal output (STT 1B: a voice-activity head)
    extra_heads_dim: int = 6

    def __post_init__(self) -> None:
        if len(self.delays) != 1 + self.n_q:
            raise ValueError(f"delays has {len(self.delays)} entries; expected 1 + n_q = {1 + self.n_q}")
        if self.dep_q > self.n_q:
            raise ValueError(f"dep_q ({self.dep_q}) cannot exceed n_q ({self.n_q})")
        if self.dep_q > self.n_q // 2 and self.n_q % 2:
            raise ValueError(f"dep_q ({self.dep_q}) > n_q / 2 needs an even n_q (half the model's, half the user's), got {self.n_q}")
        if self.dim % self.num_heads or self.depformer_dim % self.depformer_num_heads:
            raise ValueError("dim and depformer_dim must be divisible by their number of heads")
        if self.kv_repeat < 1 or self.num_heads % self.kv_repeat or (self.dep_q and self.depformer_num_heads % self.kv_repeat):
            raise ValueError(f"kv_repeat ({self.kv_repeat}) must divide num_heads ({self.num_heads}) and "
                             f"depformer_num_heads ({self.depformer_num_heads})")
        if self.dep_q < 0 or self.extra_heads_num_heads < 0:
            raise ValueError("dep_q and extra_heads_num_heads cannot be negative")

    # --- derived ------------------------------------------------------------------------------------------
    @property
    def num_streams(self) -> int:
        """K: text + all audio streams (17 for Moshi)."""
        return 1 + self.n_q

    @property
    def own_q(self) -> int:
        """Audio codebooks of the model's own voice (8 for Moshi and PersonaPlex): ``dep_q``, or ``n_q / 2`` when
        the Depth Transformer also predicts the user's codebooks (PersonaPlex: ``dep_q = n_q = 16``)."""
        return self.dep_q if self.dep_q <= self.n_q // 2 else self.n_q // 2

    @property
    def user_q(self) -> int:
        """Audio codebooks of the user (streams ``1 + own_q`` .. ``n_q``)."""
        return self.n_q - self.own_q

    @property
    def text_vocab_out(self) -> int:
        return self.text_card_out or self.text_card

    @property
    def dim_feedforward(self) -> int:
        return int(self.hidden_scale * self.dim)

    @property
    def depformer_feedforward(self) -> int:
        return self.depformer_dim_feedforward or int(self.hidden_scale * self.depformer_dim)

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def text_initial_id(self) -> int:
        """Text token fed before the first frame (the extra embedding row): ``text_card``."""
        return self.text_card

    @property
    def audio_initial_id(self) -> int:
        """Audio token fed before the first frame (the extra embedding row): ``card``."""
        return self.card

    @property
    def text_pad_id(self) -> int:
        return self.existing_text_padding_id

    @property
    def text_epad_id(self) -> int:
        return self.existing_text_end_padding_id

    # --- moshi's format -----------------------------------------------------------------------------------
    @classmethod
    def from_moshi_dict(cls, config: dict[str, Any], source: str = "config.json") -> LMConfig:
        """Read a moshi-style ``config.json`` (LM keyword fields next to file names and other settings).

        Missing fields take the moshiko (7B) values. Options this implementation does not support are refused.
        """
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key in known:
                values[key] = tuple(value) if key == "delays" else value
            elif key in _UNSUPPORTED_DEFAULTS:
                default = _UNSUPPORTED_DEFAULTS[key]
                empty = value in (None, {}, []) and default in (None, {}, False, 0)
                if value != default and not empty:
                    raise ValueError(f"{source}: {key}={value!r} is not supported (only {default!r})")
            elif key not in _NOT_ARCHITECTURE:
                raise ValueError(f"{source}: unknown LM setting {key!r}")
        return cls(**values)

    def to_moshi_dict(self) -> dict[str, Any]:
        """moshi's ``LMModel`` keyword arguments for this architecture (used to build the reference in tests)."""
        out = {k: v for k, v in asdict(self).items()}
        out["delays"] = list(self.delays)
        out.update(
            causal=True, layer_scale=None, gating="silu", norm="rms_norm_f32", positional_embedding="rope",
            depformer_max_period=self.max_period, depformer_gating="silu", depformer_pos_emb="none",
            depformer_weights_per_step=True, depformer_multi_linear=True, depformer_layer_scale=None,
            depformer_context=self.dep_q,
        )
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_text_vocabulary(self, text_card: int) -> LMConfig:
        return replace(self, text_card=text_card, text_card_out=None)


PRESETS: dict[str, LMConfig] = {
    # Moshiko / Moshika / J-Moshi / Human-1 (configs/moshi_7b_202409.json).
    "moshiko": LMConfig(),
    # The benchmark size of benchmarks/lm_step.py.
    "small": LMConfig(
        dim=512, num_heads=8, num_layers=8, depformer_dim=256, depformer_num_heads=8, depformer_num_layers=2,
        depformer_dim_feedforward=1024,
    ),
    # The benchmark size of benchmarks/quant.py: 444M parameters, the 7B's vocabularies and streams.
    "medium": LMConfig(
        dim=1024, num_heads=16, num_layers=16, depformer_dim=512, depformer_num_heads=8, depformer_num_layers=4,
        depformer_dim_feedforward=2112,
    ),
    # NVIDIA PersonaPlex 7B (nvidia/personaplex-7b-v1): moshiko with 16 depth steps (the user's codebooks too).
    "personaplex": LMConfig(dep_q=16),
    # The demo model shipped in fullduplex/assets/demo (scripts/make_demo_model.sh trains it on CPU from
    # synthetic dialogues): 6M parameters; its audio vocabulary (256) is the demo Mimi's, its text vocabulary
    # that of the demo tokenizer.
    "demo": LMConfig(
        dim=256, num_heads=4, num_layers=4, hidden_scale=2.0, context=250, text_card=1000, card=256,
        depformer_dim=128, depformer_num_heads=4, depformer_num_layers=1, depformer_dim_feedforward=256,
    ),
    # For tests: a few hundred thousand parameters, short context so the ring cache wraps quickly; its audio
    # vocabulary (32) is that of the tiny Mimi preset, so the two run together.
    "tiny": LMConfig(
        dim=64, num_heads=4, num_layers=2, context=12, text_card=96, card=32, depformer_dim=32,
        depformer_num_heads=2, depformer_num_layers=2, depformer_dim_feedforward=64,
    ),
}


def lm_preset(name: str) -> LMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown LM preset {name!r}; choose one of {sorted(PRESETS)}") from None
