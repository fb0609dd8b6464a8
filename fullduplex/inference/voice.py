"""Voice prompts from files: audio (loudness-normalised to -24 LUFS, encoded by Mimi), our voice files (Mimi codes,
safetensors), and the released PersonaPlex ``.pt`` voices (NATF0 ... VARM4).

Our voice file (``fullduplex voice make IN.wav OUT.safetensors``): one int32 tensor ``codes`` [Q, N] (the Mimi
codes of the normalised voice, N = ceil(samples / 1920) frames), string metadata ``format`` =
``fullduplex-voice``, ``sample_rate``, ``frame_rate``, ``loudness`` (LUFS before normalising) and ``source``.
It does not depend on the LM. A released ``.pt`` voice is a dict: ``embeddings`` [N - 1, 1, 1, dim] (the LM's
summed input embeddings of the voice steps, model-specific) and ``cache`` [1, K, 4] (the reference generator's
token ring after the voice phase). ``fullduplex voice make IN.wav OUT.pt`` writes that format too (it needs the LM).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..atomic import atomic_output
from ..codec.audio import read_audio
from ..codec.loudness import normalize_loudness
from ..codec.mimi import Mimi
from ..errors import AudioError, FullduplexError
from ..lm.config import LMConfig
from ..lm.model import UNGENERATED_TOKEN, LMModel
from .prompt import RELEASED_FILLER, FillerCodes, Voice

VOICE_FORMAT = "fullduplex-voice"
VOICE_LOUDNESS = -24.0  # LUFS, as the reference
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
VOICE_SUFFIXES = (".pt", ".safetensors", *AUDIO_SUFFIXES)
RELEASED_RING = 4  # columns of the reference generator's token ring (max_delay + 3)


def detached_mimi(mimi: Mimi) -> Mimi:
    """A copy of ``mimi`` outside any streaming block (to encode a voice while the engine streams)."""
    clone = copy.deepcopy(mimi)
    clone.drop_streaming()
    return clone


@torch.no_grad()
def encode_voice(wav: torch.Tensor, mimi: Mimi, source: str = "voice") -> tuple[torch.Tensor, float]:
    """Mono ``wav`` [1, S] at ``mimi.sample_rate`` → (codes [Q, N], its loudness in LUFS before normalising). The
    audio is normalised to -24 LUFS and zero-padded to whole frames, then encoded (``mimi`` must not be streaming)."""
    from ..codec.loudness import integrated_loudness

    if mimi.is_streaming:
        raise FullduplexError("encode_voice needs a Mimi outside its streaming block (see detached_mimi)")
    loudness = integrated_loudness(wav, mimi.sample_rate)
    wav = normalize_loudness(wav, mimi.sample_rate, VOICE_LOUDNESS, source)
    frame = mimi.frame_size
    padded = torch.nn.functional.pad(wav, (0, -wav.shape[-1] % frame))
    weight = next(mimi.parameters())
    codes = mimi.encode(padded[None].to(weight.device, weight.dtype))[0]  # [Q, N]
    return codes.cpu(), loudness


def filler_codes(mimi: Mimi) -> FillerCodes:
    """The silence and 440 Hz sine codes of ``mimi``: the released constants for the released Mimi (2048 entries),
    else one frame of each encoded by ``mimi`` (for other codecs, e.g. the tiny test preset)."""
    if mimi.cardinality == 2048:
        return RELEASED_FILLER
    mimi = detached_mimi(mimi) if mimi.is_streaming else mimi
    t = torch.arange(mimi.frame_size) / mimi.sample_rate
    frames = torch.stack([torch.zeros_like(t), 0.5 * torch.sin(2 * torch.pi * 440 * t)])[:, None]  # [2, 1, S]
    weight = next(mimi.parameters())
    with torch.no_grad():
        codes = mimi.encode(frames.to(weight.device, weight.dtype))[..., 0].cpu()  # [2, Q]
    return FillerCodes(tuple(codes[0].tolist()), tuple(codes[1].tolist()))


def load_voice(path: str | os.PathLike[str], mimi: Mimi, config: LMConfig) -> Voice:
    """A voice from an audio file, our voice file or a released ``.pt``; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FullduplexError(f"voice {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        codes, _ = encode_voice(read_audio(path, mimi.sample_rate), detached_mimi(mimi) if mimi.is_streaming else mimi, str(path))
        return Voice(path.name, codes=codes)
    if suffix == ".safetensors":
        return _read_codes(path, config)
    if suffix == ".pt":
        return _read_released(path, config)
    raise FullduplexError(f"voice {path}: unknown kind; expected one of {', '.join(VOICE_SUFFIXES)}")


def _read_codes(path: Path, config: LMConfig) -> Voice:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            codes = f.get_tensor("codes") if "codes" in f.keys() else None  # noqa: SIM118
    except Exception as e:
        raise FullduplexError(f"voice {path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") != VOICE_FORMAT or codes is None or codes.dim() != 2:
        raise FullduplexError(f"voice {path}: not a fullduplex voice file (format {VOICE_FORMAT!r}, tensor 'codes' [Q, N])")
    if codes.shape[0] < config.own_q or codes.shape[1] == 0 or int(codes.max()) >= config.card or int(codes.min()) < 0:
        raise FullduplexError(f"voice {path}: codes {list(codes.shape)} do not fit the LM ({config.own_q} codebooks of {config.card})")
    return Voice(path.name, codes=codes[: config.own_q].long())


def _read_released(path: Path, config: LMConfig) -> Voice:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FullduplexError(f"voice {path}: not a readable PersonaPlex voice ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not {"embeddings", "cache"} <= set(data):
        raise FullduplexError(f"voice {path}: expected a dict with 'embeddings' and 'cache' (a PersonaPlex voice)")
    emb, cache = data["embeddings"], data["cache"]
    K = config.num_streams
    if emb.dim() != 4 or emb.shape[1:3] != (1, 1) or emb.shape[3] != config.dim or emb.shape[0] < 1:
        raise FullduplexError(f"voice {path}: embeddings {list(emb.shape)}, expected [N - 1, 1, 1, {config.dim}] for this LM")
    if cache.dim() != 3 or cache.shape[:2] != (1, K):
        raise FullduplexError(f"voice {path}: cache {list(cache.shape)}, expected [1, {K}, columns]")
    frames = emb.shape[0] + 1
    columns = cache.shape[2]
    # The ring holds stream k of frame f at column (f + delays[k]) % columns (after N steps): frames N-2, N-1.
    tail = torch.empty(K, 2, dtype=torch.long)
    for j, frame in enumerate((frames - 2, frames - 1)):
        for k, delay in enumerate(config.delays):
            tail[k, j] = cache[0, k, (frame + delay) % columns]
    if frames < 2 or int(tail.min()) < 0:
        raise FullduplexError(f"voice {path}: its token cache lacks the last voice frames (too short a voice?)")
    return Voice(path.name, embeddings=emb[:, 0, 0].float(), tail=tail)


def save_voice(codes: torch.Tensor, path: str | os.PathLike[str], sample_rate: int, frame_rate: float,
               loudness: float, source: str) -> Path:
    """Write our voice file (see the module docstring), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": VOICE_FORMAT, "sample_rate": str(sample_rate), "frame_rate": f"{frame_rate:g}",
            "loudness": f"{loudness:.2f}", "source": source}
    with atomic_output(path) as tmp:
        save_file({"codes": codes.to(torch.int32).contiguous()}, str(tmp), metadata=meta)
    return path


@torch.no_grad()
def released_voice(lm: LMModel, codes: torch.Tensor, filler: FillerCodes = RELEASED_FILLER) -> dict[str, torch.Tensor]:
    """The PersonaPlex ``.pt`` content for voice ``codes`` [own_q, N]: the input embeddings of steps 0 .. N - 2
    (what the generator feeds the Temporal Transformer in the voice phase) and the token ring after N steps."""
    cfg = lm.config
    N, K = codes.shape[-1], cfg.num_streams
    if N < 2:
        raise AudioError("a released-format voice needs at least 2 frames (160 ms) of audio")
    frames = torch.empty(K, N, dtype=torch.long)  # the voice phase: pad text, the voice, the sine for the user
    frames[0] = cfg.text_pad_id
    frames[1 : 1 + cfg.own_q] = codes[: cfg.own_q]
    frames[1 + cfg.own_q :] = torch.tensor(filler.sine[: cfg.user_q])[:, None]
    initial = lm.initial_tokens()
    inputs = torch.empty(K, N - 1, dtype=torch.long)  # column t as step t reads it
    for k, delay in enumerate(cfg.delays):
        for t in range(N - 1):
            inputs[k, t] = frames[k, t - delay] if t > delay else initial[k]
    weight = lm.text_emb.weight
    embeddings = lm.embed(inputs[None].to(weight.device))[0]  # [N - 1, dim]
    cache = torch.full((1, K, RELEASED_RING), UNGENERATED_TOKEN, dtype=torch.long)
    for frame in range(max(0, N - RELEASED_RING), N):  # later frames overwrite earlier ones, as in the ring
        for k, delay in enumerate(cfg.delays):
            cache[0, k, (frame + delay) % RELEASED_RING] = frames[k, frame]
    return {"embeddings": embeddings[:, None, None].to(weight.dtype).cpu(), "cache": cache}


def save_released_voice(content: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(content, str(tmp))
    return path
