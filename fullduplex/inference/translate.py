"""Offline speech translation with Hibiki (``model_type "hibiki"``): source speech in, translated speech and text
out, one 80 ms frame at a time as the live model runs::

    results = translate(wavs, mimi, lm, tokenizer, Sampling(), cfg_coef=3.0)
    results[0].audio    # [1, S'] the translation at 24 kHz (S' >= the source: Hibiki lags the speaker)
    results[0].words    # [Word(text, start, end), ...] on the translation's timeline

The protocol is the reference's (``moshi.run_inference``): the description condition "very_good" (with
classifier-free guidance, contrasted with "very_bad"); the source's first frame is stepped twice, so that the
model hears it (the first step of a stream only primes the delays); after the source, one frame of end marks
(every codebook ``card``), then silence until the model writes its end of sequence (EOS, id 2) or ``tail``
seconds have passed. Items of a batch are independent; each ends at its own EOS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..checkpoint.lm import HIBIKI_EOS_ID
from ..codec.mimi import Mimi
from ..errors import CheckpointError
from ..lm.model import LMModel
from ..text.tokenizer import TextTokenizer, Word
from .generator import Generator
from .offline import Sampling

GOOD, BAD = "very_good", "very_bad"  # Hibiki's description condition and its CFG contrast


@dataclass
class Translation:
    """One source's translation: ``audio`` [1, S] float32 at ``sample_rate``, ``tokens`` [1 + dep_q, T] (what
    each step returned), the translated ``words`` with times in seconds, and ``finished`` (the model wrote its
    EOS before the tail ran out)."""

    audio: torch.Tensor
    tokens: torch.Tensor
    words: list[Word]
    finished: bool
    sample_rate: int

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


def check_hibiki(lm: LMModel, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``lm`` is a Hibiki model (its config.json says ``model_type
    "hibiki"`` and it has the ``description`` conditioner)."""
    provider = lm.condition_provider
    if lm.config.model_type != "hibiki" or provider is None or "description" not in provider.names:
        raise CheckpointError(
            f"{source} is a {lm.config.model_type!r} model, not Hibiki (config.json model_type \"hibiki\" with a "
            "description conditioner); try --hf-repo kyutai/hibiki-2b-pytorch-bf16"
        )


def hibiki_conditions(cfg_coef: float = 1.0) -> tuple[dict, dict | None]:
    """(conditions, null conditions) of a Hibiki item: "very_good", and "very_bad" under guidance."""
    return {"description": GOOD}, ({"description": BAD} if cfg_coef != 1.0 else None)


def translate(
    wavs: Sequence[torch.Tensor], mimi: Mimi, lm: LMModel, tokenizer: TextTokenizer, sampling: Sampling | None = None,
    cfg_coef: float = 1.0, batch_size: int = 8, tail: float = 10.0, progress: Callable[[int], None] | None = None,
) -> list[Translation]:
    """Translate each source ``wavs`` (mono [1, S] at ``mimi.sample_rate``) in batches of ``batch_size``.
    ``progress(n)`` gets the number of source frames each step consumed. Call :func:`check_hibiki` and
    :func:`~fullduplex.inference.offline.check_models` first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if tail < 0:
        raise ValueError(f"tail must be >= 0 seconds, got {tail}")
    sampling = sampling or Sampling()
    gen = Generator(lm, sampling.temp, sampling.temp_text, sampling.top_k, sampling.top_k_text, sampling.seed, cfg_coef=cfg_coef)
    out: list[Translation] = []
    for start in range(0, len(wavs), batch_size):
        out.extend(_translate_batch(list(wavs[start : start + batch_size]), mimi, gen, tokenizer, tail, progress))
    return out


def _translate_batch(
    wavs: list[torch.Tensor], mimi: Mimi, gen: Generator, tokenizer: TextTokenizer, tail: float,
    progress: Callable[[int], None] | None,
) -> list[Translation]:
    B, frame, cfg = len(wavs), mimi.frame_size, gen.config
    weight = next(mimi.parameters())
    device = weight.device
    source_frames = [math.ceil(w.shape[-1] / frame) for w in wavs]
    limits = [n + 1 + math.ceil(tail * mimi.frame_rate) for n in source_frames]  # per item: its own tail
    budget = max(limits)
    source = torch.zeros(B, 1, budget * frame)
    for b, wav in enumerate(wavs):
        source[b, :, : wav.shape[-1]] = wav
    ends = torch.tensor(source_frames, device=device)  # [B] the step that feeds each item's end marks
    source_over, tail_over = torch.tensor(source_frames), torch.tensor(limits) - 1  # [B] on the host
    done = torch.zeros(B, dtype=torch.bool)  # no more output for the item (its EOS, or the end of its tail)
    finished = torch.zeros(B, dtype=torch.bool)  # its EOS
    steps: list[torch.Tensor] = []  # [B, 1 + own_q, 1] per output step
    pcm: list[torch.Tensor] = []
    alive: list[torch.Tensor] = []  # [B] bool per output step: the item had not finished before it
    with torch.inference_mode(), mimi.streaming(B), gen.streaming(B):
        for b in range(B):
            gen.set_conditions(b, *hibiki_conditions(gen.cfg_coef))
        for t in range(budget):
            chunk = source[..., t * frame : (t + 1) * frame].to(device, weight.dtype)
            codes = mimi.encode(chunk)  # [B, K, 1]
            marks = (ends == t).view(B, 1, 1)
            codes = torch.where(marks, torch.full_like(codes, cfg.card), codes)
            if t == 0:
                gen.step(codes)  # primes the delays: the next step hears the first frame
            tokens = gen.step(codes)
            if progress is not None:
                progress(sum(t < n for n in source_frames))
            if tokens is None:
                continue
            decoded = mimi.decode(tokens[:, 1:].clamp(min=0)).float()  # [B, 1, frame], kept on the device
            ready = (tokens[:, 1:] >= 0).all(dim=1).view(B, 1, 1)
            pcm.append(torch.where(ready, decoded, torch.zeros_like(decoded)))
            host = tokens.cpu()  # the step's one copy to the host: whether each item has ended is decided here
            steps.append(host)
            alive.append(~done)
            # EOS counts only once the source is over (before, Hibiki's loader makes it read as PAD).
            done |= (host[:, 0, 0] == HIBIKI_EOS_ID) & (source_over <= t)
            finished |= done
            done |= tail_over <= t  # out of tail
            if bool(done.all()):
                break
    results = []
    tokens_all = torch.cat(steps, dim=-1)  # [B, 1 + own_q, T]
    audio_all = torch.cat(pcm, dim=-1).cpu()  # [B, 1, T * frame]
    alive_all = torch.stack(alive, dim=-1)  # [B, T]
    for b in range(B):
        length = int(alive_all[b].sum())  # steps up to and including the EOS
        item = tokens_all[b, :, :length].clone()
        words = tokenizer.words_from_stream(torch.where(item[0] == HIBIKI_EOS_ID, tokenizer.pad_id, item[0]), frame_rate=mimi.frame_rate)
        results.append(Translation(audio_all[b, :, : length * frame].clone(), item, words, bool(finished[b]), mimi.sample_rate))
    return results
