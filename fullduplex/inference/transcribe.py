"""Speech to text with a Kyutai STT model (``dep_q = 0``): words with times, batched, streaming-exact.

The model hears the audio one 80 ms frame at a time, exactly as live, and writes its text some fixed time after
the speech (``stt_config.audio_delay_seconds``: 0.5 s for ``kyutai/stt-1b-en_fr``, 2.5 s for ``stt-2.6b-en``).
As Kyutai's own scripts do, each input is framed as::

    [silence prefix: audio_silence_prefix_seconds] [the audio] [silence: audio_delay_seconds + 1 s]

so that the last words come out, and the first frame is stepped twice (the generator's first step feeds only
initial tokens, so the model would otherwise never hear it).

Timing rule. The text token sampled at generator step s (s >= 1) has heard frames 0 .. s - 1 of the framed
input; it is placed at frame s - 1. A word (pieces from one starting with ``▁`` to the next, PAD and EPAD
belonging to none; :meth:`~fullduplex.text.TextTokenizer.words_from_stream`) starts at its first piece's frame and
ends after its last piece's frame; both are turned into seconds of the original audio by subtracting the prefix
and the audio delay, then clipped to ``[0, duration]``. Kyutai's scripts use the same offset.

Batches: inputs of one batch run as one streaming session; shorter ones are padded with silence and their
outputs cut to their own length. Every step is causal and greedy decoding draws nothing, so an input's
transcript does not depend on what it is batched with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..codec.mimi import Mimi
from ..errors import CheckpointError
from ..lm.model import LMModel
from ..text.tokenizer import TextTokenizer, Word
from .generator import Generator
from .offline import Sampling

GREEDY = Sampling(temp=0.0, temp_text=0.0, seed=None)
CHUNK = 25  # frames Mimi encodes per call (2 s): streaming Mimi gives the same codes for any chunk length


@dataclass(frozen=True)
class SttConfig:
    """The ``stt_config`` of a model's ``config.json``: how long its text lags the audio, and the silence its
    inputs start with (both in seconds)."""

    audio_delay_seconds: float = 0.0
    audio_silence_prefix_seconds: float = 0.0

    @classmethod
    def from_config(cls, raw: dict[str, Any] | None, source: str = "config.json") -> SttConfig:
        """From a whole moshi-style ``config.json`` dict (its ``stt_config`` key; none: no delay, no prefix)."""
        stt = (raw or {}).get("stt_config") or {}
        if not isinstance(stt, dict):
            raise CheckpointError(f"{source}: stt_config must be an object, got {stt!r}")
        values = {}
        for key in ("audio_delay_seconds", "audio_silence_prefix_seconds"):
            value = stt.get(key, 0.0)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise CheckpointError(f"{source}: stt_config.{key} must be a number of seconds >= 0, got {value!r}")
            values[key] = float(value)
        return cls(**values)

    @property
    def offset_seconds(self) -> float:
        """What to subtract from a frame's time to get a time in the original audio."""
        return self.audio_delay_seconds + self.audio_silence_prefix_seconds


@dataclass
class Transcript:
    """One input's transcript: ``words`` (times in seconds of the input), ``tokens`` [T] the text token placed at
    each frame of the framed input (see the module docstring; T = its frames), ``extra_heads`` [T, H, E] the
    extra heads' probabilities at each frame (H = 0 for a model without them), ``duration`` in seconds."""

    words: list[Word]
    tokens: torch.Tensor
    extra_heads: torch.Tensor
    duration: float

    @property
    def text(self) -> str:
        return " ".join(word.text for word in self.words)


def check_stt_model(lm: LMModel, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``lm`` is a speech-to-text model (``dep_q = 0``)."""
    if lm.config.dep_q != 0:
        raise CheckpointError(
            f"{source} is not a speech-to-text model (dep_q={lm.config.dep_q}: it speaks); pass a Kyutai STT model, "
            "e.g. --hf-repo kyutai/stt-1b-en_fr, or a folder holding one"
        )


def transcribe(
    wavs: Sequence[torch.Tensor],
    mimi: Mimi,
    lm: LMModel,
    tokenizer: TextTokenizer,
    stt: SttConfig,
    batch_size: int = 8,
    sampling: Sampling = GREEDY,
    progress: Callable[[int], None] | None = None,
) -> list[Transcript]:
    """Transcripts of ``wavs`` (mono [1, S] or [S] at ``mimi.sample_rate``), ``batch_size`` at a time, in order.
    Check the models first (:func:`~fullduplex.inference.offline.check_models`, :func:`check_stt_model`).
    ``progress(n)`` is called after each step with the number of framed-input frames it completed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_stt_model(lm, "the LM")
    gen = Generator(lm, sampling.temp, sampling.temp_text, sampling.top_k, sampling.top_k_text, sampling.seed)
    out: list[Transcript] = []
    for start in range(0, len(wavs), batch_size):
        out.extend(_transcribe_batch([w.reshape(-1) for w in wavs[start : start + batch_size]], mimi, gen, tokenizer,
                                     stt, progress))
    return out


def framed_frames(samples: int, stt: SttConfig, sample_rate: int, frame_size: int) -> int:
    """Frames of an input of ``samples`` once framed (silence prefix and tail; the last frame zero-padded)."""
    prefix = round(stt.audio_silence_prefix_seconds * sample_rate)
    tail = round((stt.audio_delay_seconds + 1.0) * sample_rate)
    return math.ceil((prefix + samples + tail) / frame_size)


def _transcribe_batch(
    wavs: list[torch.Tensor], mimi: Mimi, gen: Generator, tokenizer: TextTokenizer, stt: SttConfig,
    progress: Callable[[int], None] | None,
) -> list[Transcript]:
    """One streaming session of Mimi and the generator over ``len(wavs)`` inputs ([S] each)."""
    cfg, frame, rate = gen.config, mimi.frame_size, mimi.sample_rate
    weight = next(mimi.parameters())
    prefix = round(stt.audio_silence_prefix_seconds * rate)
    own = [framed_frames(w.shape[0], stt, rate, frame) for w in wavs]
    frames, B = max(own), len(wavs)
    # The token returned at step s was sampled `lag` steps earlier; step until every frame's token is out.
    lag = cfg.max_delay - cfg.delays[0]
    # [B, 1, (T + lag) * frame]: prefix, audio, silence, and what the last `lag` steps hear
    user = torch.zeros(B, 1, (frames + lag) * frame)
    for b, wav in enumerate(wavs):
        user[b, 0, prefix : prefix + wav.shape[0]] = wav
    # Kept on the device while stepping (no host sync per frame), brought back once at the end.
    tokens = torch.full((B, frames), cfg.text_pad_id, dtype=torch.long, device=weight.device)
    heads = torch.zeros(B, frames, cfg.extra_heads_num_heads, cfg.extra_heads_dim, device=weight.device)
    with torch.inference_mode(), mimi.streaming(B), gen.streaming(B):
        codes, first = None, 0  # the codes of frames first .. first + CHUNK - 1
        for s in range(frames + lag + 1):
            f = max(s - 1, 0)  # the frame this step hears; step 0 hears frame 0 too (it feeds initial tokens only)
            if codes is None or f >= first + codes.shape[-1]:  # streaming Mimi, CHUNK frames per call: the same
                first = f  # codes as frame by frame
                codes = mimi.encode(user[..., f * frame : (f + CHUNK) * frame].to(weight.device, weight.dtype))
            out = gen.step(codes[..., f - first : f - first + 1])
            if out is not None and 0 <= s - lag - 1 < frames:  # the token sampled `lag` steps ago
                tokens[:, s - lag - 1] = out[:, 0, 0]
            if 1 <= s <= frames:
                if cfg.extra_heads_num_heads:
                    probs = gen.lm.extra_head_probs(gen.state.hidden)  # this step's, [B, 1, E] each
                    heads[:, f] = torch.stack([p[:, 0] for p in probs], dim=1).float()
                if progress is not None:
                    progress(sum(f < n for n in own))
    tokens, heads = tokens.cpu(), heads.cpu()
    results = []
    for b, wav in enumerate(wavs):
        duration = wav.shape[0] / rate
        item = tokens[b, : own[b]].clone()
        words = []
        for w in tokenizer.words_from_stream(item, frame_rate=mimi.frame_rate):
            start = min(max(w.start - stt.offset_seconds, 0.0), duration)
            words.append(Word(w.text, start, min(max(w.end - stt.offset_seconds, start), duration)))
        results.append(Transcript(words, item, heads[b, : own[b]].clone(), duration))
    return results
