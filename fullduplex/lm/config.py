"""Architecture config of the Moshi LM: a frozen dataclass, presets by name, moshi's ``config.json`` accepted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# config.json keys that are not LM architecture (CheckpointInfo pops them) or that do not change the model.
_NOT_ARCHITECTURE = {
    "moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "lm_gen_config",
    "tts_config", "stt_config", "model_id", "depformer_causal", "causal", "lora", "lora_rank", "lora_scaling",
    "depformer_context", "gradient_checkpointing",
    "depformer_max_period",  # the Depth Transformer has no positional embedding
    "mimi_config",  # the codec's architecture, beside the LM's (the bundled demo model's config.json)
}
# Options of moshi's LMModel that this implementation does not support: refused unless at their default.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "quantize": False, "layer_scale": None, "depformer_layer_scale": None,
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
    # Hibiki and Kyutai TTS (see lm/conditioners.py and docs/family.md): conditioners and how they are fused
    # (moshi's config.json dicts, kept as they are), cross-attention in the Temporal Transformer, the Depth
    # Transformer's low-rank token embeddings, shared per-step weights (codebook -> weight index) and per-step
    # output norms, and a second text stream multiplexed into the text token.
    conditioners: dict[str, Any] | None = field(default=None, hash=False)
    fuser: dict[str, Any] | None = field(default=None, hash=False)
    cross_attention: bool = False
    depformer_low_rank_embeddings: int | None = None
    depformer_weights_per_step_schedule: tuple[int, ...] | None = None
    depformer_norm: str | None = None
    demux_second_text_stream: bool = False
    # "moshi" (dialogue), "hibiki" (translation: the loader gives EOS the PAD embedding), "tts", "stt".
    model_type: str = "moshi"
    # False: there is no user stream, every audio stream is the model's own (Kyutai TTS, n_q = dep_q = 32).
    user_audio: bool = True

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
        if self.norm_emb and (self.depformer_low_rank_embeddings or self.demux_second_text_stream):
            raise ValueError("norm_emb together with depformer_low_rank_embeddings or demux_second_text_stream is not supported")
        schedule = self.depformer_weights_per_step_schedule
        if schedule is not None and (len(schedule) != self.dep_q or min(schedule) < 0):
            raise ValueError(f"depformer_weights_per_step_schedule needs {self.dep_q} (dep_q) indexes >= 0, got {list(schedule)}")
        if not self.user_audio and self.dep_q != self.n_q:
            raise ValueError(f"a model without user audio generates every stream: dep_q ({self.dep_q}) must equal n_q ({self.n_q})")
        if self.depformer_norm not in (None, "rms_norm_f32", "rms_norm", "layer_norm"):
            raise ValueError(f"depformer_norm={self.depformer_norm!r} is not supported (rms_norm_f32, rms_norm, layer_norm)")
        if self.cross_attention and not (self.fuser or {}).get("cross"):
            raise ValueError("cross_attention needs a fuser with 'cross' conditions")
        if self.conditioners:  # refuse unsupported conditioner types and fuser settings here, by name
            import torch

            from .conditioners import ConditionProvider

            with torch.device("meta"):
                ConditionProvider(self.conditioners, self.fuser, self.dim)

    # --- derived ------------------------------------------------------------------------------------------
    @property
    def num_streams(self) -> int:
        """K: text + all audio streams (17 for Moshi)."""
        return 1 + self.n_q

    @property
    def depth_weights(self) -> int:
        """Sets of per-step weights in the Depth Transformer: ``dep_q``, or fewer when steps share them."""
        schedule = self.depformer_weights_per_step_schedule
        return self.dep_q if schedule is None else max(schedule) + 1

    def depth_weight_index(self, k: int) -> int:
        """The weight set depth step k uses."""
        schedule = self.depformer_weights_per_step_schedule
        return k if schedule is None else schedule[k]

    @property
    def own_q(self) -> int:
        """Audio codebooks of the model's own voice (8 for Moshi and PersonaPlex): ``dep_q``, or ``n_q / 2`` when
        the Depth Transformer also predicts the user's codebooks (PersonaPlex: ``dep_q = n_q = 16``)."""
        if not self.user_audio:
            return self.n_q
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
        known = {f.name for f in fields(cls)}  # user_audio: our own to_dict(); moshi's files imply it (below)
        values: dict[str, Any] = {}
        if "tts_config" in config or config.get("model_type") == "tts":
            values["user_audio"] = False  # TTS: all n_q streams are generated, nothing comes from a user
        for key, value in config.items():
            if key == "demux_second_stream":  # moshi's older name (the released TTS config.json)
                key = "demux_second_text_stream"
            if key in ("conditioners", "fuser") and not value:
                value = None
            if key == "fuser" and value and value.get("prepend"):
                raise ValueError(f"{source}: fuser 'prepend' conditions are not supported (moshi refuses them too)")
            if key in known:
                values[key] = tuple(value) if key in ("delays", "depformer_weights_per_step_schedule") and value is not None else value
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
        out.pop("user_audio")
        out.pop("model_type")
        for key in ("conditioners", "fuser"):
            if out[key] is None:
                out.pop(key)
        if self.depformer_weights_per_step_schedule is not None:
            out["depformer_weights_per_step_schedule"] = list(self.depformer_weights_per_step_schedule)
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
