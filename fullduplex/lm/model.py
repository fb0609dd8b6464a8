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

from ..nn.norm import RMSNorm
from ..nn.transformer import StreamingTransformer
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
        self.text_emb = TokenEmbedding(cfg.text_card + 1, cfg.dim, norm)
        self.transformer = StreamingTransformer(
            cfg.dim, cfg.num_heads, cfg.num_layers, cfg.dim_feedforward, cfg.context, cfg.max_period,
            layer_scale=None, norm="rms_norm_f32", ffn="silu_gating", kv_repeat=cfg.kv_repeat,
        )
        self.transformer.configure_kv("paged")  # a session holds KV pages only for the frames it has had
        self.out_norm = RMSNorm(cfg.dim)
        self.text_linear = nn.Linear(cfg.dim, cfg.text_vocab_out, bias=cfg.bias_proj)
        self.depformer_in = nn.ModuleList(nn.Linear(cfg.dim, cfg.depformer_dim, bias=False) for _ in range(cfg.dep_q))
        self.depformer_emb = nn.ModuleList(
            TokenEmbedding(cfg.card + 1, cfg.depformer_dim, norm) for _ in range(cfg.dep_q - 1)
        )
        # dep_q = 0 (speech-to-text): no Depth Transformer at all, as in the released STT checkpoints.
        self.depformer_text_emb = TokenEmbedding(cfg.text_card + 1, cfg.depformer_dim, norm) if cfg.dep_q else None
        self.depformer = DepthTransformer(
            cfg.depformer_dim, cfg.depformer_num_heads, cfg.depformer_num_layers, cfg.depformer_feedforward, cfg.dep_q,
            cfg.kv_repeat,
        ) if cfg.dep_q else None
        self.linears = nn.ModuleList(
            nn.Linear(cfg.depformer_dim, cfg.card, bias=cfg.bias_proj) for _ in range(cfg.dep_q)
        )
        self.extra_heads = nn.ModuleList(
            nn.Linear(cfg.dim, cfg.extra_heads_dim, bias=False) for _ in range(cfg.extra_heads_num_heads)
        )

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

    def temporal(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal Transformer on delayed input tokens [B, K, T] → (hidden [B, T, dim] after ``out_norm``,
        text logits [B, T, Vt])."""
        return self.temporal_embedded(self.embed(tokens))

    def temporal_embedded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`temporal` from the summed input embeddings ``x`` [B, T, dim] (as :meth:`embed` gives them)."""
        hidden = self.out_norm(self.transformer(x))
        return hidden, self.text_linear(hidden)

    def extra_head_probs(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Softmax of each extra head on the Temporal output ``hidden`` [B, T, dim] (after ``out_norm``):
        ``extra_heads_num_heads`` tensors [B, T, extra_heads_dim] (the STT 1B's voice-activity head)."""
        return [torch.softmax(head(hidden), dim=-1) for head in self.extra_heads]

    def depth_input(self, k: int, hidden: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Input of depth step k: ``depformer_in[k](hidden)`` plus the embedding of the previous token of the
        frame (the text token for k = 0, else audio codebook k - 1). hidden [..., dim], previous [...]."""
        token_emb = self.depformer_text_emb(previous) if k == 0 else self.depformer_emb[k - 1](previous)
        return self.depformer_in[k](hidden) + token_emb

    # --- teacher forcing ----------------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor) -> LMOutput:
        """Teacher-forced logits for undelayed ``codes`` [B, K, T] (K = 1 + n_q; -1 = no token)."""
        cfg = self.config
        B, K, T = codes.shape
        if K != cfg.num_streams:
            raise ValueError(f"codes have {K} streams; this model takes 1 text + {cfg.n_q} audio = {cfg.num_streams}")
        initial = self.initial_tokens(codes.device)
        delayed = delay_streams(codes, cfg.delays, initial)
        delayed = torch.cat([initial.view(1, K, 1).expand(B, K, 1), delayed], dim=2)  # [B, K, T + 1]
        hidden, text_logits = self.temporal(delayed[..., :-1])  # predicts delayed[..., 1:]
        targets = delayed[..., 1:]
        if cfg.dep_q:
            steps = [self.depth_input(k, hidden, targets[:, k]) for k in range(cfg.dep_q)]  # previous: text, cb0, ...
            depth = self.depformer(torch.stack(steps, dim=2).view(B * T, cfg.dep_q, -1)).view(B, T, cfg.dep_q, -1)
            audio_logits = torch.stack([self.linears[k](depth[:, :, k]) for k in range(cfg.dep_q)], dim=1)
        else:  # speech-to-text: text logits only
            audio_logits = hidden.new_zeros(B, 0, T, cfg.card)
        audio_logits, audio_mask = undelay_streams(audio_logits, cfg.delays[1 : 1 + cfg.dep_q])
        text_logits, text_mask = undelay_streams(text_logits[:, None], cfg.delays[:1])
        audio_mask &= codes[:, 1 : 1 + cfg.dep_q] != ZERO_TOKEN
        text_mask &= codes[:, :1] != ZERO_TOKEN
        return LMOutput(text_logits, audio_logits, text_mask, audio_mask)
