"""Split residual vector quantizer: one semantic codebook and the acoustic rest, both fed the same latent.

Each half projects the 512-d latent to the codebook dimension (``input_proj``), quantizes it with a residual
loop of nearest-neighbour (L2) lookups, and projects the sum of the chosen entries back (``output_proj``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.derived import cached_derivation
from .config import QuantizerConfig


class ResidualVQ(nn.Module):
    """``n_q`` codebooks stored as one ``codebooks`` buffer [n_q, bins, dim]."""

    def __init__(self, latent_dim: int, cfg: QuantizerConfig, n_q: int) -> None:
        super().__init__()
        self.bins = cfg.bins
        self.input_proj = nn.Conv1d(latent_dim, cfg.dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(cfg.dimension, latent_dim, 1, bias=False)
        self.register_buffer("codebooks", torch.randn(n_q, cfg.bins, cfg.dimension))

    def _squared_norms(self) -> torch.Tensor:
        """|c|^2 of every entry [n_q, bins], cached until the codebooks change (saves a pass per frame)."""
        return cached_derivation(self, "_norms", self.codebooks, lambda books: (books * books).sum(-1))

    @property
    def n_q(self) -> int:
        return self.codebooks.shape[0]

    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """``x`` [B, C, T] → codes [B, n_q, T] (int64)."""
        B, _, T = x.shape
        residual = self.input_proj(x).transpose(1, 2).reshape(B * T, -1)  # [B*T, dim]
        codes = []
        norms = self._squared_norms()
        for q in range(n_q):
            book = self.codebooks[q]  # [bins, dim]
            # argmin |r - c|^2 = argmin (|c|^2 - 2 r.c): |r|^2 is the same for every entry.
            distance = torch.addmm(norms[q], residual, book.t(), alpha=-2.0)
            index = distance.argmin(-1)
            residual = residual - book[index]
            codes.append(index)
        if not codes:
            return x.new_zeros(B, 0, T, dtype=torch.long)
        return torch.stack(codes, dim=-1).view(B, T, n_q).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n, T] → latent [B, C, T]."""
        B, n, T = codes.shape
        offsets = torch.arange(n, device=codes.device).view(1, n, 1) * self.bins
        flat = self.codebooks[:n].reshape(n * self.bins, -1)
        z = F.embedding(codes + offsets, flat).sum(1)  # [B, T, dim]
        return self.output_proj(z.transpose(1, 2))


class SplitResidualVQ(nn.Module):
    """``rvq_first`` (1 semantic codebook) + ``rvq_rest`` (``n_q - 1`` acoustic codebooks)."""

    def __init__(self, latent_dim: int, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rvq_first = ResidualVQ(latent_dim, cfg, 1)
        self.rvq_rest = ResidualVQ(latent_dim, cfg, cfg.n_q - 1)

    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """Latent [B, C, T] → codes [B, n_q, T]."""
        first = self.rvq_first.encode(x, 1)
        if n_q == 1:
            return first
        return torch.cat([first, self.rvq_rest.encode(x, n_q - 1)], dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, n, T] → latent [B, C, T]."""
        z = self.rvq_first.decode(codes[:, :1])
        if codes.shape[1] > 1:
            z = z + self.rvq_rest.decode(codes[:, 1:])
        return z
