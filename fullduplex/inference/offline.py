"""Offline generation: run the model on audio files exactly as a live conversation would run it.

Per 80 ms frame (1920 samples at 24 kHz) of the user's audio: streaming Mimi encode → one generator step →
streaming Mimi decode of the model's audio codes. The model's audio returned by step t is placed at frame t of
the output timeline, where it would be played live, so the first frame is silence::

    wavs = read_inputs([Path("talk.wav")], mimi.sample_rate)              # [1, S] each, checked
    check_models(mimi, lm, tokenizer, "model.safetensors")
    results = generate(wavs, mimi, lm, tokenizer, Sampling(seed=4242))
    results[0].audio                                                     # [2, S]: model (left), user (right)
    results[0].tokens                                                    # [1 + dep_q, T], -2 where none
    results[0].words                                                     # [Word(text, start, end), ...]

Several inputs run together in one streaming session (a batch): shorter ones are padded with zeros and their
outputs trimmed to their own length. Batch items are independent, so greedy results do not depend on the batch;
with sampling, each batch starts from the same seed and the draws depend on the batch's composition.
"""

from __future__ import annotations

import math
import os
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_output
from ..codec.audio import read_audio_info
from ..codec.mimi import Mimi
from ..errors import AudioError, CheckpointError
from ..lm.model import UNGENERATED_TOKEN, LMModel
from ..text.tokenizer import TextTokenizer, Word
from .generator import Generator
from .prompt import Schedule, run_prompt

__all__ = ["GenerationResult", "Sampling", "check_models", "generate", "generate_files", "read_inputs", "write_stereo_wav"]


@dataclass(frozen=True)
class Sampling:
    """Generator settings (:class:`~fullduplex.inference.Generator`); temperature 0 is greedy, top-k 0 keeps all."""

    temp: float = 0.8
    temp_text: float = 0.7
    top_k: int = 250
    top_k_text: int = 25
    seed: int | None = 4242

    def __post_init__(self) -> None:
        if self.temp < 0 or self.temp_text < 0:
            raise ValueError(f"temperatures must be >= 0 (0 is greedy), got {self.temp} and {self.temp_text}")
        if self.top_k < 0 or self.top_k_text < 0:
            raise ValueError(f"top-k must be >= 0 (0 keeps every token), got {self.top_k} and {self.top_k_text}")


@dataclass
class GenerationResult:
    """One input's output: ``audio`` [2, S] float32 (row 0 the model, row 1 the user's input, both S samples at
    ``sample_rate``), ``tokens`` [1 + dep_q, T] int64 (column t: what step t returned, text then audio codes;
    -2 where nothing was generated yet) and the model's ``words`` with times in seconds on the output timeline."""

    audio: torch.Tensor
    tokens: torch.Tensor
    words: list[Word]
    sample_rate: int
    frame_rate: float

    @property
    def duration(self) -> float:
        """Length of the input (and of the output) in seconds."""
        return self.audio.shape[-1] / self.sample_rate


def read_inputs(paths: Sequence[str | os.PathLike[str]], sample_rate: int) -> list[torch.Tensor]:
    """Read each file as mono float32 [1, S] at ``sample_rate``; :class:`AudioError` for a missing, unreadable,
    empty or silent file (checked for every file before any model work starts)."""
    wavs = []
    for path in paths:
        wav, _, _ = read_audio_info(path, sample_rate)  # [1, S]
        if wav.shape[-1] == 0:
            raise AudioError(f"audio file {path} holds no samples")
        if float(wav.abs().max()) == 0.0:
            raise AudioError(
                f"audio file {path} is silent (every sample is 0): the model would only hear silence; "
                "check the recording or the channel it was exported from"
            )
        wavs.append(wav)
    return wavs


def user_codebooks(lm: LMModel) -> int:
    """Codebooks Mimi must encode and decode for ``lm``: its ``own_q`` (8 for Moshi), or more if the model
    hears more user codebooks than it speaks."""
    return max(lm.config.own_q, lm.config.user_q)


def check_models(mimi: Mimi, lm: LMModel, tokenizer: TextTokenizer, source: str) -> None:
    """Raise :class:`CheckpointError` unless Mimi, the LM (loaded from ``source``) and the tokenizer fit together;
    on success, set ``mimi.num_codebooks`` to what the LM uses."""
    cfg, needed = lm.config, user_codebooks(lm)
    held = mimi.config.quantizer.n_q
    if held < needed:
        raise CheckpointError(
            f"Mimi holds {held} codebooks but the LM {source} uses {needed} (dep_q={cfg.dep_q}, n_q={cfg.n_q}); "
            "pass the Mimi checkpoint that came with the model (--mimi-weight) or its --mimi-config"
        )
    if mimi.cardinality != cfg.card:
        raise CheckpointError(
            f"Mimi codebooks have {mimi.cardinality} entries but the LM {source} expects card={cfg.card}; "
            "pass the Mimi checkpoint that came with the model (--mimi-weight) or its --mimi-config"
        )
    tokenizer.check_vocabulary(cfg.text_card, source)
    mimi.num_codebooks = needed


def generate(
    wavs: Sequence[torch.Tensor],
    mimi: Mimi,
    lm: LMModel,
    tokenizer: TextTokenizer,
    sampling: Sampling | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    prompt: Schedule | None = None,
) -> list[GenerationResult]:
    """Generate the model's side of each conversation ``wavs`` (mono [1, S] at ``mimi.sample_rate``), in batches
    of ``batch_size`` in the given order. ``prompt``: a persona's forced frames
    (:func:`~fullduplex.inference.prompt.build_schedule`), stepped before each batch's first frame; the output
    timeline still starts with the user's first frame, whose step already gives the model's audio. ``progress(n)`` is called after each step with the number of input frames
    it completed (padding past an input's end does not count; the total is the sum of ceil(S / 1920)).
    Call :func:`check_models` first. Returns one result per input, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if lm.config.dep_q == 0:
        raise CheckpointError("this is a speech-to-text model (dep_q 0): it writes text and does not speak; "
                              "use `fullduplex transcribe`")
    sampling = sampling or Sampling()
    gen = Generator(lm, sampling.temp, sampling.temp_text, sampling.top_k, sampling.top_k_text, sampling.seed)
    results: list[GenerationResult] = []
    for start in range(0, len(wavs), batch_size):
        results.extend(_generate_batch(list(wavs[start : start + batch_size]), mimi, gen, tokenizer, progress, prompt))
    return results


def generate_files(
    paths: Sequence[str | os.PathLike[str]],
    mimi: Mimi,
    lm: LMModel,
    tokenizer: TextTokenizer,
    sampling: Sampling | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    source: str = "the LM",
) -> list[GenerationResult]:
    """:func:`read_inputs`, :func:`check_models` and :func:`generate` in one call, for audio files ``paths``
    (any format and rate; see :func:`~fullduplex.codec.audio.read_audio`)."""
    wavs = read_inputs(paths, mimi.sample_rate)
    check_models(mimi, lm, tokenizer, source)
    return generate(wavs, mimi, lm, tokenizer, sampling, batch_size, progress)


def _generate_batch(
    wavs: list[torch.Tensor], mimi: Mimi, gen: Generator, tokenizer: TextTokenizer,
    progress: Callable[[int], None] | None, prompt: Schedule | None = None,
) -> list[GenerationResult]:
    """One streaming session of Mimi and the generator over ``len(wavs)`` items."""
    frame, own_q = mimi.frame_size, gen.config.own_q
    weight = next(mimi.parameters())
    lengths = [w.shape[-1] for w in wavs]
    frames = math.ceil(max(lengths) / frame)
    user = torch.zeros(len(wavs), 1, frames * frame)  # [B, 1, T * frame]: zero-padded to whole frames
    for b, wav in enumerate(wavs):
        user[b, :, : wav.shape[-1]] = wav
    silence = torch.zeros(len(wavs), 1, frame, device=weight.device)
    missing = torch.full((len(wavs), 1 + own_q, 1), UNGENERATED_TOKEN, dtype=torch.long, device=weight.device)
    pcm, steps = [], []  # per step: model audio [B, 1, frame], tokens [B, 1 + own_q, 1]
    with torch.inference_mode(), mimi.streaming(len(wavs)), gen.streaming(len(wavs)):
        if prompt is not None:
            run_prompt(gen, prompt)
        for t in range(frames):
            chunk = user[..., t * frame : (t + 1) * frame].to(weight.device, weight.dtype)  # [B, 1, frame]
            codes = mimi.encode(chunk)  # [B, K, 1]
            out = gen.step(codes)
            if out is None:  # the acoustic delay has not passed: nothing to play yet
                steps.append(missing)
                pcm.append(silence)
            else:
                audio = out[:, 1:]  # [B, own_q, 1]
                ready = (audio >= 0).all(dim=1, keepdim=True)  # [B, 1, 1]: items with a whole frame of codes
                decoded = mimi.decode(audio.clamp(min=0))  # [B, 1, frame]
                steps.append(out)
                pcm.append(torch.where(ready, decoded.float(), silence))
            if progress is not None:  # frames of the items still inside their own input
                progress(sum(t < math.ceil(length / frame) for length in lengths))
        tokens = torch.cat(steps, dim=-1).cpu()  # [B, 1 + own_q, T]
        model = torch.cat(pcm, dim=-1).float().cpu()  # [B, 1, T * frame]
    results = []
    for b, length in enumerate(lengths):
        own = math.ceil(length / frame)
        item_tokens = tokens[b, :, :own].clone()
        duration = length / mimi.sample_rate
        words = [
            Word(w.text, w.start, min(w.end, duration))  # the last frame may run past the end of the file
            for w in tokenizer.words_from_stream(item_tokens[0], frame_rate=mimi.frame_rate)
        ]
        audio = torch.cat([model[b, :, :length], user[b, :, :length]], dim=0)  # [2, S]
        results.append(GenerationResult(audio, item_tokens, words, mimi.sample_rate, mimi.frame_rate))
    return results


def write_stereo_wav(path: str | os.PathLike[str], audio: torch.Tensor, sample_rate: int) -> Path:
    """Write ``audio`` [2, S] (float, nominally in [-1, 1]; row 0 left, row 1 right) as a 16-bit PCM stereo WAV.

    Samples are clipped to [-1, 1] (NaN becomes 0). The file is written under a temporary name in the same folder
    and renamed into place, so a failure never leaves a half-written ``path``.
    """
    path = Path(path)
    if audio.dim() != 2 or audio.shape[0] != 2:
        raise AudioError(f"write_stereo_wav expects audio shaped [2, S], got {list(audio.shape)} for {path}")
    if not path.parent.is_dir():
        raise AudioError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise AudioError(f"cannot write {path}: it is a folder")
    data = np.nan_to_num(audio.detach().to("cpu", torch.float32).numpy(), nan=0.0)
    # x 32768, as 16-bit readers divide by it: a 16-bit input read and written back is unchanged.
    pcm = np.clip(np.round(np.clip(data, -1.0, 1.0) * 32768.0), -32768, 32767).astype("<i2")  # [2, S]
    try:
        with atomic_output(path) as tmp, wave.open(str(tmp), "wb") as f:
            f.setnchannels(2)
            f.setsampwidth(2)
            f.setframerate(int(sample_rate))
            f.writeframes(np.ascontiguousarray(pcm.T).tobytes())  # interleaved: L R L R ...
    except OSError as e:
        raise AudioError(f"could not write {path}: {e.strerror or e}") from None
    return path
