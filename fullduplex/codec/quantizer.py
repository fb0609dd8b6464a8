"""Split residual vector quantizer: one semantic codebook and the acoustic rest, both fed the same latent.

Each half projects the 512-d latent to the codebook dimension (``input_proj``), quantizes it with a residual
loop of nearest-neighbour (L2) lookups, and projects the sum of the chosen entries back (``output_proj``).

Training (:meth:`SplitResidualVQ.quantize`) makes the same choices as ``encode`` and adds what learning needs: the
straight-through estimator (the decoder's gradient reaches the encoder as if quantization were the identity), a
commitment loss (mean squared distance of each residual to its entry, pulling the encoder toward the codebooks),
and, with ``update=True``, exponential-moving-average codebook updates (each entry moves to the mean of the
residuals assigned to it), codebooks initialised from the first batch's residuals, and dead-code replacement
(an entry used less than ``dead_ratio`` times the average is reset to a random residual of the batch). The EMA
statistics live outside the state dict, so checkpoints keep the released format; ``encode``/``decode`` are
untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.derived import cached_derivation
from .config import QuantizerConfig


@dataclass
class Quantized:
    """What the training path returns: the quantized latent (straight-through), codes and commitment loss."""

    z: torch.Tensor  # [B, C, T]
    codes: torch.Tensor  # [B, n_q, T] int64
    commitment: torch.Tensor  # scalar: sum over codebooks of the mean squared residual-to-entry distance


@dataclass
class EmaSettings:
    decay: float = 0.99
    dead_ratio: float = 0.1  # an entry whose EMA usage is below this share of the mean usage is replaced
    epsilon: float = 1e-5


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

    # --- training -------------------------------------------------------------------------------------------
    def ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA statistics (empty before the first update): usage [n_q, bins], sums [n_q, bins, dim], ready [n_q]."""
        return dict(self.__dict__.get("_ema_stats", {}))

    def load_ema_state(self, state: dict[str, torch.Tensor]) -> None:
        self.__dict__["_ema_stats"] = {k: v.clone() for k, v in state.items()}

    def _ema(self) -> dict[str, torch.Tensor]:
        ema = self.__dict__.get("_ema_stats")
        if not ema:
            books = self.codebooks
            ema = self.__dict__["_ema_stats"] = {
                "usage": torch.zeros(books.shape[:2], device=books.device),
                "sums": torch.zeros_like(books, dtype=torch.float32),
                "ready": torch.zeros(books.shape[0], device=books.device),
            }
        return ema

    @torch.no_grad()
    def _update(self, q: int, residual: torch.Tensor, index: torch.Tensor, settings: EmaSettings,
                generator: torch.Generator | None) -> None:
        """EMA step of codebook ``q`` from this batch's ``residual`` [N, dim] and their entries ``index`` [N]."""
        ema, bins = self._ema(), self.bins
        counts = torch.bincount(index, minlength=bins).float()
        sums = torch.zeros(bins, residual.shape[1], device=residual.device).index_add_(0, index, residual.float())
        ema["usage"][q].mul_(settings.decay).add_(counts, alpha=1 - settings.decay)
        ema["sums"][q].mul_(settings.decay).add_(sums, alpha=1 - settings.decay)
        usage = ema["usage"][q]
        total = usage.sum()
        smoothed = (usage + settings.epsilon) / (total + bins * settings.epsilon) * total  # Laplace smoothing
        book = ema["sums"][q] / smoothed.clamp(min=settings.epsilon)[:, None]
        dead = usage < settings.dead_ratio * usage.mean()
        if bool(dead.any()):
            pick = torch.randint(0, residual.shape[0], (int(dead.sum()),), generator=generator, device=residual.device)
            book[dead] = residual[pick].float()
            ema["usage"][q][dead] = usage.mean()
            ema["sums"][q][dead] = book[dead] * usage.mean()
        self.codebooks[q].copy_(book.to(self.codebooks.dtype))

    @torch.no_grad()
    def _initialise(self, q: int, residual: torch.Tensor, generator: torch.Generator | None) -> None:
        """Codebook ``q`` := random residuals of the first batch (with repetition when it is smaller than ``bins``)."""
        ema = self._ema()
        pick = torch.randint(0, residual.shape[0], (self.bins,), generator=generator, device=residual.device)
        self.codebooks[q].copy_(residual[pick].to(self.codebooks.dtype))
        ema["usage"][q].fill_(1.0)
        ema["sums"][q].copy_(self.codebooks[q].float())
        ema["ready"][q] = 1.0

    def quantize(self, x: torch.Tensor, n_q: int, update: bool = False, settings: EmaSettings | None = None,
                 generator: torch.Generator | None = None) -> Quantized:
        """Training path: ``x`` [B, C, T] → :class:`Quantized`. The codes are those ``encode`` gives for the
        codebooks as they are when each is looked up (with ``update``, codebooks first initialised or updated)."""
        settings = settings or EmaSettings()
        B, _, T = x.shape
        h = self.input_proj(x).transpose(1, 2).reshape(B * T, -1)  # [B*T, dim]
        residual = h.detach()
        total = torch.zeros_like(residual)
        commitment = h.new_zeros(())
        codes = []
        for q in range(n_q):
            if update and not bool(self._ema()["ready"][q]):
                self._initialise(q, residual, generator)
            book = self.codebooks[q]
            distance = torch.addmm((book * book).sum(-1), residual, book.t(), alpha=-2.0)
            index = distance.argmin(-1)
            chosen = book[index]
            # The encoder's pull toward the entry: h minus what the earlier codebooks took, against this entry.
            commitment = commitment + F.mse_loss(h - total, chosen)
            if update:
                self._update(q, residual, index, settings, generator)
            total = total + chosen
            residual = residual - chosen
            codes.append(index)
        out = h + (total - h).detach()  # straight-through: forward the entries, backward the identity
        z = self.output_proj(out.view(B, T, -1).transpose(1, 2))
        stacked = torch.stack(codes, dim=-1).view(B, T, n_q).transpose(1, 2) if codes else x.new_zeros(B, 0, T, dtype=torch.long)
        return Quantized(z, stacked, commitment)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n, T] → latent [B, C, T]."""
        # Summed one codebook after the other, as the reference does: the same float rounding, bit for bit.
        z = F.embedding(codes[:, 0], self.codebooks[0])  # [B, T, dim]
        for k in range(1, codes.shape[1]):
            z = z + F.embedding(codes[:, k], self.codebooks[k])
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

    def quantize(self, x: torch.Tensor, n_q: int, update: bool = False, settings: EmaSettings | None = None,
                 generator: torch.Generator | None = None) -> Quantized:
        """Training path (see the module docstring): latent [B, C, T] → :class:`Quantized` with ``n_q`` codebooks."""
        first = self.rvq_first.quantize(x, 1, update, settings, generator)
        if n_q == 1:
            return first
        rest = self.rvq_rest.quantize(x, n_q - 1, update, settings, generator)
        return Quantized(first.z + rest.z, torch.cat([first.codes, rest.codes], dim=1), first.commitment + rest.commitment)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, n, T] → latent [B, C, T]."""
        z = self.rvq_first.decode(codes[:, :1])
        if codes.shape[1] > 1:
            z = z + self.rvq_rest.decode(codes[:, 1:])
        return z
