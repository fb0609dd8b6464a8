"""The training loss: weighted cross-entropy on the model's own streams (text + its dep_q codebooks).

For one optimiser step over a global batch (every rank, every micro-batch)::

    text_loss  = sum(w_text  * CE(text_logits,  text))  / sum(w_text)
    audio_loss = sum(w_audio * CE(audio_logits, audio)) / sum(w_audio)
    loss       = text_weight * text_loss + audio_weight * audio_loss

Sums run over valid positions only (the model's masks: not delay-invalid, target not ZERO_TOKEN). ``w_text`` is
``pad_weight`` on PAD targets, ``epad_weight`` on EPAD targets, 1 elsewhere; ``w_audio`` is ``semantic_weight``
on codebook 0 and 1 on codebooks 1..dep_q-1. The other speaker's codebooks are inputs only. Normalising by the
weight sums of the *global* batch (computed from the codes before the forward pass and all-reduced) makes the
loss, and its gradient, independent of how the batch is split across ranks and micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..lm.config import LMConfig
from ..lm.model import ZERO_TOKEN, LMOutput
from .config import LossConfig


@dataclass
class Weights:
    text: torch.Tensor  # [B, T] float
    audio: torch.Tensor  # [B, dep_q, T] float


def target_weights(codes: torch.Tensor, config: LMConfig, loss: LossConfig) -> Weights:
    """Per-target weights of undelayed ``codes`` [B, K, T]; zero where the model makes no prediction."""
    B, K, T = codes.shape
    text = codes[:, 0]
    w_text = torch.ones(B, T, dtype=torch.float32, device=codes.device)
    w_text = torch.where(text == config.text_pad_id, loss.pad_weight, w_text)
    w_text = torch.where(text == config.text_epad_id, loss.epad_weight, w_text)
    w_text = w_text * (text != ZERO_TOKEN)
    if config.delays[0]:
        w_text[:, T - config.delays[0] :] = 0
    audio = codes[:, 1 : 1 + config.dep_q]
    w_audio = torch.ones(B, config.dep_q, T, dtype=torch.float32, device=codes.device)
    w_audio[:, 0] = loss.semantic_weight
    w_audio = w_audio * (audio != ZERO_TOKEN)
    for k, delay in enumerate(config.delays[1 : 1 + config.dep_q]):
        if delay:
            w_audio[:, k, T - delay :] = 0
    return Weights(w_text, w_audio)


@dataclass
class LossParts:
    """Weighted CE sums of one micro-batch, not yet normalised."""

    text: torch.Tensor  # sum w_text * CE
    audio: torch.Tensor  # sum w_audio * CE


def loss_parts(out: LMOutput, codes: torch.Tensor, weights: Weights, config: LMConfig) -> LossParts:
    """Weighted sums of cross-entropies of one micro-batch (float32)."""
    text_target = codes[:, 0].clamp(min=0)
    text_logits = out.text_logits[:, 0].float().nan_to_num()  # [B, T, Vt]; NaN where no prediction (weight 0)
    ce_text = F.cross_entropy(text_logits.transpose(1, 2), text_target, reduction="none")  # [B, T]
    w_text = weights.text * out.text_mask[:, 0]
    audio_target = codes[:, 1 : 1 + config.dep_q].clamp(min=0)
    audio_logits = out.audio_logits.float().nan_to_num()  # [B, dep_q, T, card]
    ce_audio = F.cross_entropy(audio_logits.permute(0, 3, 1, 2), audio_target, reduction="none")  # [B, dep_q, T]
    w_audio = weights.audio * out.audio_mask
    return LossParts((w_text * ce_text).sum(), (w_audio * ce_audio).sum())


def combine(parts: LossParts, text_total: torch.Tensor, audio_total: torch.Tensor, loss: LossConfig) -> torch.Tensor:
    """This micro-batch's share of the global loss (its sums over the global weight totals)."""
    return (loss.text_weight * parts.text / text_total.clamp(min=1e-12)
            + loss.audio_weight * parts.audio / audio_total.clamp(min=1e-12))
