"""The Moshi LM: a Temporal Transformer over 80 ms frames and a Depth Transformer over each frame's codebooks.

Streams (K = 1 + n_q = 17 for Moshi), in this order: text (the inner monologue), the model's audio codebooks
0 .. own_q - 1, the user's audio codebooks. The Depth Transformer predicts the first dep_q audio streams: the
model's own (Moshi, dep_q = 8), or the model's and then the user's (PersonaPlex, dep_q = 16). The model is trained and run on *delayed* streams (acoustic codebooks
one frame late); :meth:`LMModel.forward` takes and returns undelayed, time-aligned tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn.norm import RMSNorm, make_norm
from ..nn.transformer import StreamingTransformer
from .conditioners import ConditionProvider, Conditions
from .config import LMConfig
from .depth import DepthTransformer

ZERO_TOKEN = -1  # input token whose embedding is exactly zero, and which is never a training target
UNGENERATED_TOKEN = -2  # generator placeholder: this value is to be sampled


class TokenEmbedding(nn.Embedding):
    """``nn.Embedding`` that maps :data:`ZERO_TOKEN` (-1) to an exact zero vector; ``norm``: a LayerNorm (eps 1e-5)
    on the looked-up vectors (``norm_emb``), before the zeroing."""

    def __init__(self, num_embeddings: int, embedding_dim: int, norm: bool = False) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, eps=1e-5) if norm else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = super().forward(tokens.clamp(min=0))
        if self.norm is not None:
            out = self.norm(out)
        return torch.where((tokens == ZERO_TOKEN)[..., None], torch.zeros((), dtype=out.dtype, device=out.device), out)


class FactoredEmbedding(TokenEmbedding):
    """A :class:`TokenEmbedding` of width ``rank`` followed by ``low_rank`` (rank → dim), and/or a second stream
    multiplexed into each token (``demux``: token = (second + 1) * rows + first, second = -1 for none; the two
    go through ``out1`` / ``out2`` and add up, then no ``low_rank``: moshi's layout, key names included)."""

    def __init__(self, rows: int, dim: int, rank: int | None = None, demux: bool = False) -> None:
        super().__init__(rows, rank or dim)
        self.low_rank = nn.Linear(rank, dim, bias=False) if rank else None
        self.demux = demux
        if demux:
            self.out1 = nn.Linear(rank or dim, dim, bias=False)
            self.out2 = nn.Linear(rank or dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        zero = (tokens == ZERO_TOKEN)[..., None]
        if not self.demux:
            out = super().forward(tokens)
            return out if self.low_rank is None else self.low_rank(out)
        tokens = tokens.clamp(min=0)
        first, second = tokens % self.num_embeddings, tokens // self.num_embeddings - 1
        out = self.out1(nn.Embedding.forward(self, first))
        other = self.out2(nn.Embedding.forward(self, second.clamp(min=0)))
        out = out + torch.where((second < 0)[..., None], torch.zeros((), dtype=out.dtype, device=out.device), other)
        return torch.where(zero, torch.zeros((), dtype=out.dtype, device=out.device), out)


def make_embedding(rows: int, dim: int, rank: int | None = None, demux: bool = False, norm: bool = False) -> TokenEmbedding:
    """A plain :class:`TokenEmbedding` (``norm``: ``norm_emb``), or a :class:`FactoredEmbedding` for low-rank or
    demuxed tokens (LMConfig refuses ``norm_emb`` with those)."""
    return FactoredEmbedding(rows, dim, rank, demux) if rank or demux else TokenEmbedding(rows, dim, norm)


@dataclass
class LMOutput:
    """Teacher-forced outputs, aligned with the input codes (undelayed).

    ``text_logits`` [B, 1, T, Vt], ``audio_logits`` [B, dep_q, T, card]; positions that the delays leave without
    a prediction hold NaN and are False in ``text_mask`` [B, 1, T] / ``audio_mask`` [B, dep_q, T], as are
    positions whose target is :data:`ZERO_TOKEN`.
    """

    text_logits: torch.Tensor
    audio_logits: torch.Tensor
    text_mask: torch.Tensor
    audio_mask: torch.Tensor


def delay_streams(codes: torch.Tensor, delays: tuple[int, ...], initial: torch.Tensor) -> torch.Tensor:
    """Shift stream k of ``codes`` [B, K, T] right by ``delays[k]``, filling with ``initial`` [K]."""
    out = codes.clone()
    for k, delay in enumerate(delays):
        if delay:
            out[:, k, delay:] = codes[:, k, :-delay]
            out[:, k, :delay] = initial[k]
    return out


def undelay_streams(values: torch.Tensor, delays: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`delay_streams` on [B, K, T, ...]: (shifted left with NaN tail, validity mask [B, K, T])."""
    B, K, T = values.shape[:3]
    out = torch.full_like(values, float("nan"))
    mask = torch.zeros(B, K, T, dtype=torch.bool, device=values.device)
    for k, delay in enumerate(delays):
        out[:, k, : T - delay] = values[:, k, delay:]
        mask[:, k, : T - delay] = True
    return out, mask


class LMModel(nn.Module):
    """Module names follow the released checkpoints (``emb.{k}``, ``text_emb``, ``transformer.layers.{i}``, ...)."""

    def __init__(self, config: LMConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or LMConfig()
        norm = cfg.norm_emb
        self.emb = nn.ModuleList(TokenEmbedding(cfg.card + 1, cfg.dim, norm) for _ in range(cfg.n_q))
        self.text_emb = make_embedding(cfg.text_card + 1, cfg.dim, demux=cfg.demux_second_text_stream, norm=norm)
        self.transformer = StreamingTransformer(
            cfg.dim, cfg.num_heads, cfg.num_layers, cfg.dim_feedforward, cfg.context, cfg.max_period,
            layer_scale=None, norm="rms_norm_f32", ffn="silu_gating", kv_repeat=cfg.kv_repeat,
            cross_attention=cfg.cross_attention,
        )
        self.transformer.configure_kv("paged")  # a session holds KV pages only for the frames it has had
        self.out_norm = RMSNorm(cfg.dim)
        self.text_linear = nn.Linear(cfg.dim, cfg.text_vocab_out, bias=cfg.bias_proj)
        rank = cfg.depformer_low_rank_embeddings
        self.depformer_in = nn.ModuleList(nn.Linear(cfg.dim, cfg.depformer_dim, bias=False) for _ in range(cfg.depth_weights))
        self.depformer_emb = nn.ModuleList(
            make_embedding(cfg.card + 1, cfg.depformer_dim, rank, norm=norm) for _ in range(cfg.dep_q - 1)
        )
        # dep_q = 0 (speech-to-text): no Depth Transformer at all, as in the released STT checkpoints.
        self.depformer_text_emb = make_embedding(
            cfg.text_card + 1, cfg.depformer_dim, rank, cfg.demux_second_text_stream, norm
        ) if cfg.dep_q else None
        self.depformer = DepthTransformer(
            cfg.depformer_dim, cfg.depformer_num_heads, cfg.depformer_num_layers, cfg.depformer_feedforward, cfg.dep_q,
            cfg.kv_repeat, cfg.depformer_weights_per_step_schedule,
        ) if cfg.dep_q else None
        self.depformer_norms = None if cfg.depformer_norm is None else nn.ModuleList(
            make_norm(cfg.depformer_norm, cfg.depformer_dim) for _ in range(cfg.dep_q)
        )
        self.linears = nn.ModuleList(
            nn.Linear(cfg.depformer_dim, cfg.card, bias=cfg.bias_proj) for _ in range(cfg.dep_q)
        )
        self.extra_heads = nn.ModuleList(
            nn.Linear(cfg.dim, cfg.extra_heads_dim, bias=False) for _ in range(cfg.extra_heads_num_heads)
        )
        # Hibiki / TTS conditions (module name as in the released checkpoints).
        self.condition_provider = ConditionProvider(cfg.conditioners, cfg.fuser, cfg.dim) if cfg.conditioners else None

    # --- pieces shared by training and generation ---------------------------------------------------------
    def initial_tokens(self, device: torch.device | None = None) -> torch.Tensor:
        """[K] tokens fed before the first frame: text ``text_card``, audio ``card``."""
        cfg = self.config
        initial = torch.full((cfg.num_streams,), cfg.audio_initial_id, dtype=torch.long, device=device)
        initial[0] = cfg.text_initial_id
        return initial

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sum of the K streams' embeddings: [B, K, T] → [B, T, dim]."""
        # Audio first, text last: the reference's order, which matters for rounding in bf16.
        x = self.emb[0](tokens[:, 1])
        for k in range(1, len(self.emb)):
            x = x + self.emb[k](tokens[:, 1 + k])
        return x + self.text_emb(tokens[:, 0])

    def temporal(
        self, tokens: torch.Tensor, condition_sum: torch.Tensor | None = None, cross_kv: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal Transformer on delayed input tokens [B, K, T] → (hidden [B, T, dim] after ``out_norm``,
        text logits [B, T, Vt]). Conditions (see :meth:`fuse_conditions`): ``condition_sum`` [B, 1, dim] added to
        every frame's input, ``cross_kv`` the cross-attention keys and values of :meth:`cross_keys_values`."""
        return self.temporal_embedded(self.embed(tokens), condition_sum, cross_kv)

    def temporal_embedded(
        self, x: torch.Tensor, condition_sum: torch.Tensor | None = None, cross_kv: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`temporal` from the summed input embeddings ``x`` [B, T, dim] (as :meth:`embed` gives them)."""
        if condition_sum is not None:
            x = x + condition_sum.to(x.dtype)
        hidden = self.out_norm(self.transformer(x, cross_kv))
        return hidden, self.text_linear(hidden)

    def extra_head_probs(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Softmax of each extra head on the Temporal output ``hidden`` [B, T, dim] (after ``out_norm``):
        ``extra_heads_num_heads`` tensors [B, T, extra_heads_dim] (the STT 1B's voice-activity head)."""
        return [torch.softmax(head(hidden), dim=-1) for head in self.extra_heads]
    # --- conditions (Hibiki, Kyutai TTS) --------------------------------------------------------------------
    def fuse_conditions(self, items: list[Conditions]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """N items' conditions (name → value, see :mod:`~fullduplex.lm.conditioners`) → (sum [N, 1, dim] or None,
        cross-attention keys and values [N, L, 2, H, Tc, d] or None)."""
        if self.condition_provider is None:
            raise ValueError("this model takes no conditions")
        total, cross = self.condition_provider.fuse(items)
        dtype = self.text_linear.weight.dtype
        total = None if total is None else total.to(dtype)
        kv = None if cross is None else self.transformer.cross_keys_values(cross.to(dtype))
        return total, kv

    def depth_input(self, k: int, hidden: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Input of depth step k: ``depformer_in[k](hidden)`` plus the embedding of the previous token of the
        frame (the text token for k = 0, else audio codebook k - 1). hidden [..., dim], previous [...]."""
        token_emb = self.depformer_text_emb(previous) if k == 0 else self.depformer_emb[k - 1](previous)
        return self.depformer_in[self.config.depth_weight_index(k)](hidden) + token_emb

    def depth_logits(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Audio logits of depth step k from the Depth Transformer's output ``x`` [..., depformer_dim]."""
        if self.depformer_norms is not None:
            x = self.depformer_norms[k](x)
        return self.linears[k](x)

    # --- teacher forcing ----------------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, conditions: list[Conditions] | None = None) -> LMOutput:
        """Teacher-forced logits for undelayed ``codes`` [B, K, T] (K = 1 + n_q; -1 = no token). Models with
        conditioners take one ``conditions`` dict per item (see :mod:`~fullduplex.lm.conditioners`)."""
        cfg = self.config
        B, K, T = codes.shape
        if K != cfg.num_streams:
            raise ValueError(f"codes have {K} streams; this model takes 1 text + {cfg.n_q} audio = {cfg.num_streams}")
        initial = self.initial_tokens(codes.device)
        delayed = delay_streams(codes, cfg.delays, initial)
        delayed = torch.cat([initial.view(1, K, 1).expand(B, K, 1), delayed], dim=2)  # [B, K, T + 1]
        condition_sum = cross_kv = None
        if self.condition_provider is not None:
            if conditions is None or len(conditions) != B:
                raise ValueError(f"this model takes conditions {self.condition_provider.names}: give one dict per item ({B})")
            condition_sum, cross_kv = self.fuse_conditions(conditions)
        elif conditions is not None:
            raise ValueError("this model takes no conditions")
        hidden, text_logits = self.temporal(delayed[..., :-1], condition_sum, cross_kv)  # predicts delayed[..., 1:]
        targets = delayed[..., 1:]
        if cfg.dep_q:
            steps = [self.depth_input(k, hidden, targets[:, k]) for k in range(cfg.dep_q)]  # previous: text, cb0, ...
            depth = self.depformer(torch.stack(steps, dim=2).view(B * T, cfg.dep_q, -1)).view(B, T, cfg.dep_q, -1)
            audio_logits = torch.stack([self.depth_logits(k, depth[:, :, k]) for k in range(cfg.dep_q)], dim=1)
        else:  # speech-to-text: text logits only
            audio_logits = hidden.new_zeros(B, 0, T, cfg.card)
        audio_logits, audio_mask = undelay_streams(audio_logits, cfg.delays[1 : 1 + cfg.dep_q])
        text_logits, text_mask = undelay_streams(text_logits[:, None], cfg.delays[:1])
        audio_mask &= codes[:, 1 : 1 + cfg.dep_q] != ZERO_TOKEN
        text_mask &= codes[:, :1] != ZERO_TOKEN
        return LMOutput(text_logits, audio_logits, text_mask, audio_mask)
