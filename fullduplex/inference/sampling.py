"""Token sampling: temperature, top-k, greedy at temperature 0. No host sync."""

from __future__ import annotations

import torch


def sample_token(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits`` [..., V] → [...] (int64).

    Temperature 0 is greedy (argmax). Otherwise softmax(logits / temperature), restricted to the ``top_k`` most
    likely tokens (0: all), sampled by the exponential race ``argmax(p / E)``, E ~ Exp(1): one draw per candidate,
    as the reference generator does, so that the same seed gives the same tokens. As there, any ``top_k`` > 0
    ranks the candidates (a ``top_k`` of the vocabulary size or more keeps all of them, sorted): the draws then
    go to the candidates in order of probability, not of token id.
    """
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    indices = None
    if top_k > 0:
        probs, indices = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    race = torch.empty_like(flat).exponential_(1, generator=generator)
    choice = (flat / race).argmax(dim=-1).view(probs.shape[:-1])
    if indices is not None:
        choice = indices.gather(-1, choice[..., None])[..., 0]
    return choice
