"""Mimi: 24 kHz mono audio ⇄ K codebooks at 12.5 Hz (one frame = 1920 samples = 80 ms).

Encode: SEANet encoder (25 Hz) → bottleneck transformer → strided conv (12.5 Hz) → split RVQ.
Decode: split RVQ lookup → channel-wise transposed conv (25 Hz) → bottleneck transformer → SEANet decoder.

Batch use::

    codes = mimi.encode(wav)        # [B, 1, S] -> [B, K, ceil(S / 1920)]
    wav = mimi.decode(codes)        # [B, K, T] -> [B, 1, T * 1920]

Streaming use (identical results, any chunk length)::

    with mimi.streaming(batch_size=B):
        codes = mimi.encode(chunk)  # [B, 1, n] -> [B, K, frames completed so far]
        audio = mimi.decode(codes)  # each frame -> 1920 samples
        mimi.reset(mask)            # restart the items where mask [B] is True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..nn.attention import StreamingSelfAttention
from ..nn.conv import StreamingConv1d, StreamingConvTranspose1d
from ..nn.cuda_graph import GraphedStep
from ..nn.streaming import StreamingModule, StreamingState, masked_zero_
from ..nn.transformer import StreamingTransformer
from .config import MimiConfig
from .quantizer import SplitResidualVQ
from .seanet import SEANetDecoder, SEANetEncoder


@dataclass
class PendingAudio(StreamingState):
    samples: torch.Tensor  # [B, C, P] received but not yet a whole frame, P < frame_size
    graphs: dict = field(default_factory=dict)  # CUDA graphs of whole-frame steps, by shape
    item_tensors = ("samples",)

    def reset(self, mask: torch.Tensor) -> None:
        masked_zero_(self.samples, mask)

    def absorb(self, view: StreamingState) -> None:
        if view.samples.shape[-1] != self.samples.shape[-1]:
            self.samples = self.samples[..., :0]  # the leading rows' view kept a partial frame
            raise ValueError("Mimi.rows(n) takes whole frames (1920 samples per item); the partial frame was dropped")


class Mimi(StreamingModule):
    """The Mimi codec; see the module docstring. ``num_codebooks`` (K, default 8) may be changed at any time."""

    def __init__(self, config: MimiConfig | None = None, num_codebooks: int | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MimiConfig()
        dim, stride, tr = cfg.seanet.dimension, cfg.resample_stride, cfg.transformer

        def bottleneck() -> StreamingTransformer:
            return StreamingTransformer(
                dim, tr.num_heads, tr.num_layers, tr.dim_feedforward, tr.context, tr.max_period, tr.layer_scale,
                conv_layout=True,
            )

        self.encoder = SEANetEncoder(cfg.seanet)
        self.encoder_transformer = bottleneck()
        self.downsample = StreamingConv1d(dim, dim, 2 * stride, stride=stride, bias=False, pad_mode="replicate")
        self.quantizer = SplitResidualVQ(dim, cfg.quantizer)
        self.upsample = StreamingConvTranspose1d(dim, dim, 2 * stride, stride=stride, groups=dim, bias=False)
        self.decoder_transformer = bottleneck()
        self.decoder = SEANetDecoder(cfg.seanet)
        self.num_codebooks = min(8, cfg.quantizer.n_q) if num_codebooks is None else num_codebooks
        # On CUDA, streaming steps of a given shape replay from a CUDA graph (as the reference does).
        self.cuda_graphs = True

    # --- properties ---------------------------------------------------------------------------------------
    @property
    def num_codebooks(self) -> int:
        return self._num_codebooks

    @num_codebooks.setter
    def num_codebooks(self, value: int) -> None:
        if not 1 <= value <= self.config.quantizer.n_q:
            raise ValueError(f"num_codebooks must be in 1..{self.config.quantizer.n_q}, got {value}")
        self._num_codebooks = value

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @property
    def cardinality(self) -> int:
        """Entries per codebook (valid codes are ``0 .. cardinality - 1``)."""
        return self.config.quantizer.bins

    # --- streaming ----------------------------------------------------------------------------------------
    def match_moshi(self, enabled: bool = True) -> None:
        """Compute as moshi's Mimi (0.2.13) does, bit for bit on the same device (off by default; the drop-in
        ``python -m fullduplex.run_inference`` turns it on). Call it before ``streaming()``.

        - moshi's transformer window: a ring of exactly ``context`` slots, all attended to (masked). A call of
          T steps overwrites, for its first T - 1 queries, keys the mask still allows, so past the context
          streaming no longer equals batch mode (which the default keeps).
        - torch's own convolutions everywhere (not the CPU im2col GEMM, which rounds differently) and moshi's
          order of additions in the transposed convolutions.

        Costs on CPU: the GEMM path's speed on small streaming steps, and attending to the whole ring from the
        first step.
        """
        for module in self.modules():
            if isinstance(module, StreamingTransformer):
                module.moshi_window = enabled
            elif isinstance(module, (StreamingConv1d, StreamingConvTranspose1d)):
                module.reference_arithmetic = enabled

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> PendingAudio:
        return PendingAudio(batch_size, torch.zeros(batch_size, self.config.seanet.channels, 0, device=device, dtype=dtype))

    # --- encode -------------------------------------------------------------------------------------------
    def encode_latent(self, wav: torch.Tensor) -> torch.Tensor:
        """Unquantized latent [B, D, T] of whole frames of ``wav`` [B, 1, T * frame_size]."""
        z = self.encoder(wav)
        z = self.encoder_transformer(z)
        return self.downsample(z)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav`` [B, 1, S] float in [-1, 1] → codes [B, K, T] (int64).

        Batch mode zero-pads to a whole number of frames (T = ceil(S / 1920)). Streaming mode returns the
        frames completed by this chunk and keeps the remainder for the next call.
        """
        if wav.dim() != 3 or wav.shape[1] != self.config.seanet.channels:
            raise ValueError(f"Mimi.encode expects audio shaped [B, {self.config.seanet.channels}, S], got {tuple(wav.shape)}")
        state = self._streaming_state
        frame = self.frame_size
        if state is None:
            extra = -wav.shape[-1] % frame
            if extra:
                wav = F.pad(wav, (0, extra))
        else:
            if wav.shape[0] != state.batch_size:
                raise ValueError(f"streaming batch size is {state.batch_size}, got audio for {wav.shape[0]} items")
            if state.samples.shape[-1]:
                wav = torch.cat([state.samples, wav.to(state.samples.dtype)], dim=-1)
            whole = wav.shape[-1] - wav.shape[-1] % frame
            state.samples = wav[..., whole:]
            wav = wav[..., :whole]
            if whole == 0:
                return torch.zeros(wav.shape[0], self.num_codebooks, 0, dtype=torch.long, device=wav.device)
            return self._graphed(("encode", tuple(wav.shape), self.num_codebooks), self._encode_frames)(wav)
        return self._encode_frames(wav)

    def _encode_frames(self, wav: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.encode_latent(wav), self.num_codebooks)

    def _graphed(self, key: tuple, fn):
        """``fn`` itself, or on CUDA its :class:`GraphedStep` for this streaming session and shape."""
        state = self._streaming_state
        if state is None or not self.cuda_graphs or not self.encoder.model[0].weight.is_cuda:
            return fn
        # A graph holds the addresses of the state buffers it was captured with; a KV ring that grew (a longer
        # call than any before) has new buffers, so every graph is dropped and re-captured.
        if not hasattr(self, "_attentions"):  # walked once, not every frame
            self._attentions = [m for m in self.modules() if isinstance(m, StreamingSelfAttention)]
        layout = tuple(m.cache_address() for m in self._attentions)
        if state.graphs.get("layout") != layout:
            state.graphs.clear()  # in place: a `rows(n)` view shares this dict with the whole batch's state
            state.graphs["layout"] = layout
        if key not in state.graphs:
            state.graphs[key] = GraphedStep(fn)
        return state.graphs[key]

    # --- decode -------------------------------------------------------------------------------------------
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Quantized latent [B, D, T] → audio [B, 1, T * frame_size]."""
        z = self.upsample(z)
        z = self.decoder_transformer(z)
        return self.decoder(z)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] (any K up to the checkpoint's codebooks) → audio [B, 1, T * 1920].

        Codes outside ``0 .. cardinality - 1`` raise ``ValueError``, except in CUDA streaming, where the check
        would cost a host sync per frame.
        """
        if codes.dim() != 3:
            raise ValueError(f"Mimi.decode expects codes shaped [B, K, T], got {tuple(codes.shape)}")
        if not 1 <= codes.shape[1] <= self.config.quantizer.n_q:
            raise ValueError(f"codes have {codes.shape[1]} codebooks; this Mimi has 1..{self.config.quantizer.n_q}")
        if codes.shape[-1] == 0:  # e.g. a streaming encode call that completed no frame
            return torch.zeros(codes.shape[0], self.config.seanet.channels, 0, device=codes.device)
        if self._streaming_state is None or not codes.is_cuda:  # on CUDA, checking every frame would sync
            check_codes(codes, self.cardinality)
        return self._graphed(("decode", tuple(codes.shape)), self._decode_codes)(codes.long())

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_latent(self.quantizer.decode(codes))


def check_codes(codes: torch.Tensor, cardinality: int) -> None:
    """Raise ``ValueError`` naming the first code outside ``0 .. cardinality - 1`` (reads values: not for hot paths)."""
    bad = (codes < 0) | (codes >= cardinality)
    if bool(bad.any()):
        b, k, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"code {int(codes[b, k, t])} at item {b}, codebook {k}, frame {t} is outside the codebook "
            f"(valid: 0..{cardinality - 1})"
        )
