"""``fullduplex codec encode|decode``: audio files ⇄ Mimi codes files.

A codes file is a safetensors file with one tensor ``codes`` [K, T] (int16; K codebooks, T frames at 12.5 Hz)
and string metadata: ``sample_rate`` (Hz of the codec), ``frame_rate`` (Hz), ``num_codebooks``, ``num_frames``,
``source_duration`` (seconds), ``source_samples`` (samples of the encoded audio at ``sample_rate``, i.e. after
resampling; decode trims its output to this length), ``source_file``, ``source_sample_rate`` and
``source_channels`` (of the original file), ``codec`` (checkpoint file name) and ``fullduplex_version``.

The helpers :func:`add_mimi_arguments`, :func:`load_mimi_from_args` and :func:`resolve_device` are meant for the
other commands that load Mimi too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint.mimi import load_mimi, resolve_mimi
from ..checkpoint.resolve import DEFAULT_REPO
from ..checkpoint.state import write_safetensors
from ..codec.audio import read_audio_info, write_wav
from ..codec.config import PRESETS, MimiConfig, mimi_preset
from ..codec.mimi import Mimi, check_codes
from ..errors import CheckpointError, FullduplexError

CHUNK_FRAMES = 50  # frames per streaming step: 4 s of audio at 12.5 Hz


class CodesFileError(FullduplexError, ValueError):
    """A codes file is missing, is not safetensors, or does not hold valid ``codes``."""


ENCODE_EPILOG = """\
examples:
  fullduplex codec encode talk.flac talk.codes.safetensors
  fullduplex codec encode talk.wav talk.codes.safetensors --num-codebooks 32 --device cpu
  fullduplex codec encode talk.mp3 out.safetensors --mimi-weight tokenizer-e351c8d8-checkpoint125.safetensors

Any format and rate is read (wav, flac, ogg, mp3, ...): audio is resampled to 24 kHz and mixed down to mono.
The output holds `codes` [K, T] (int16) with T = ceil(samples / 1920) frames at 12.5 Hz, plus metadata.
"""

DECODE_EPILOG = """\
examples:
  fullduplex codec decode talk.codes.safetensors talk.decoded.wav
  fullduplex codec decode talk.codes.safetensors out.wav --hf-repo kyutai/moshika-pytorch-bf16 --quiet

The codes file is what `fullduplex codec encode` writes (a safetensors file with `codes` [K, T]); any K up to
the checkpoint's codebooks decodes. The output is 24 kHz mono 16-bit WAV, trimmed to the source length.
"""


# --- shared options -----------------------------------------------------------------------------------------
def add_mimi_arguments(parser: argparse.ArgumentParser, num_codebooks: bool = False) -> None:
    """Add ``--mimi-weight`` / ``--hf-repo``, ``--mimi-config``, ``--device``, ``--quiet`` (and ``--num-codebooks``)."""
    group = parser.add_argument_group("checkpoint")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--mimi-weight", metavar="FILE",
        help="Mimi checkpoint: a local file or folder, or hf://OWNER/REPO[/FILE] (default: the one in --hf-repo)",
    )
    source.add_argument(
        "--hf-repo", metavar="OWNER/NAME", help=f"Hugging Face repo holding the Mimi checkpoint (default: {DEFAULT_REPO})"
    )
    group.add_argument(
        "--mimi-config", metavar="PRESET_OR_JSON",
        help=f"architecture: a preset ({', '.join(sorted(PRESETS))}) or a JSON file of moshi's mimi_config dict "
        "(default: the released Mimi)",
    )
    if num_codebooks:
        group.add_argument(
            "--num-codebooks", metavar="N", type=positive_int, default=8,
            help="codebooks to keep per frame, 1 .. the checkpoint's (32 for the released Mimi; default: 8, as Moshi)",
        )
    run = parser.add_argument_group("run")
    run.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a torch device (default: ``cuda`` when available, else ``cpu``); clear error if unusable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FullduplexError(f"--device {name!r} is not a torch device (try cpu, cuda or cuda:0)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FullduplexError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FullduplexError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FullduplexError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def mimi_config_from_arg(spec: str | None) -> MimiConfig | None:
    """``--mimi-config``: a preset name or a JSON file of moshi's ``mimi_config`` dict; ``None`` keeps the default."""
    if spec is None:
        return None
    if spec in PRESETS:
        return mimi_preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"--mimi-config {spec!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"--mimi-config {path}: not a readable JSON file ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("mimi_config"), dict):
        data = data["mimi_config"]
    try:
        return MimiConfig.from_moshi_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"--mimi-config {path}: not a moshi mimi_config dict ({type(e).__name__}: {e})") from None


def load_mimi_from_args(args: argparse.Namespace, num_codebooks: int = 1) -> tuple[Mimi, Path]:
    """Load Mimi as the options of :func:`add_mimi_arguments` say; returns the model and its checkpoint file."""
    config = mimi_config_from_arg(args.mimi_config)
    path = resolve_mimi(args.mimi_weight, args.hf_repo)
    mimi = load_mimi(path, device=resolve_device(args.device), num_codebooks=num_codebooks, config=config)
    return mimi, path


def check_output_path(path: Path) -> None:
    """Fail early (before any model loads) when ``path`` cannot be written: missing folder, or a folder itself."""
    if path.is_dir():
        raise FullduplexError(f"output {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise FullduplexError(f"output folder {path.parent} does not exist")


def progress(total: int, desc: str, quiet: bool) -> tqdm:
    """A tqdm bar counting frames on stderr; off with ``--quiet`` or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, disable=True if quiet else None, leave=False)


# --- codes files --------------------------------------------------------------------------------------------
def read_codes(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """``codes`` [K, T] (int64) and the string metadata of a codes file; :class:`CodesFileError` otherwise."""
    from safetensors import safe_open

    if not path.is_file():
        raise CodesFileError(f"codes file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            metadata = dict(f.metadata() or {})
            codes = f.get_tensor("codes") if "codes" in keys else None
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError for foreign files
        raise CodesFileError(f"{path} is not a safetensors codes file ({' '.join(str(e).split())})") from None
    if codes is None:
        shown = ", ".join(keys[:5]) or "no tensors"
        raise CodesFileError(f"{path} has no tensor 'codes' (it holds {shown}); is it a codes file from `codec encode`?")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise CodesFileError(f"{path}: codes must be integers, got {codes.dtype}")
    if codes.dim() != 2:
        raise CodesFileError(f"{path}: codes must be shaped [codebooks, frames], got {list(codes.shape)}")
    return codes.long(), metadata


def codes_dtype(cardinality: int) -> torch.dtype:
    """The smallest stored dtype that keeps codes ``0 .. cardinality - 1`` exact (int16 for Mimi's 2048)."""
    return torch.int16 if cardinality <= 2**15 else torch.int32


# --- commands -----------------------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """Add ``codec`` with its ``encode`` and ``decode`` actions."""
    codec = subparsers.add_parser(
        "codec", help="encode audio to Mimi codes, decode codes to audio",
        description="Mimi codec: audio files to codes files (12.5 frames/s) and back.",
        epilog="examples:\n  fullduplex codec encode talk.flac talk.codes.safetensors\n"
        "  fullduplex codec decode talk.codes.safetensors talk.decoded.wav",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = codec.add_subparsers(dest="action", metavar="ACTION", required=True)
    enc = actions.add_parser(
        "encode", help="audio file -> codes file (safetensors)", epilog=ENCODE_EPILOG,
        description="Encode an audio file into Mimi codes, streaming in 4 s chunks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enc.add_argument("input", metavar="IN", help="audio file (wav, flac, ogg, mp3, ...; any rate and channel count)")
    enc.add_argument("output", metavar="OUT", help="codes file to write, e.g. talk.codes.safetensors")
    add_mimi_arguments(enc, num_codebooks=True)
    enc.set_defaults(func=encode_command)
    dec = actions.add_parser(
        "decode", help="codes file -> 24 kHz WAV", epilog=DECODE_EPILOG,
        description="Decode a codes file (from `fullduplex codec encode`) into a WAV file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dec.add_argument("input", metavar="IN", help="codes file (safetensors with `codes` [K, T])")
    dec.add_argument("output", metavar="OUT.wav", help="WAV file to write")
    add_mimi_arguments(dec)
    dec.set_defaults(func=decode_command)


def encode_command(args: argparse.Namespace) -> int:
    """Read, resample, stream-encode, and write the codes file atomically."""
    from .. import __version__

    out = Path(args.output)
    check_output_path(out)
    config = mimi_config_from_arg(args.mimi_config) or MimiConfig()
    wav, source_rate, source_channels = read_audio_info(args.input, config.sample_rate)  # [1, S]
    mimi, weight = load_mimi_from_args(args, num_codebooks=args.num_codebooks)
    if mimi.sample_rate != config.sample_rate:  # pragma: no cover - the config is the checkpoint's
        raise CheckpointError(f"{weight} runs at {mimi.sample_rate} Hz, expected {config.sample_rate}")
    device = next(mimi.parameters()).device
    samples, frame = wav.shape[-1], mimi.frame_size
    frames = math.ceil(samples / frame)
    wav = torch.nn.functional.pad(wav, (0, frames * frame - samples))  # batch encode pads the last frame the same
    pieces = []
    # The model loads outside inference mode (its weights stay normal tensors); only the compute runs inside.
    with torch.inference_mode(), mimi.streaming(1), progress(frames, "encode", args.quiet) as bar:
        for start in range(0, wav.shape[-1], CHUNK_FRAMES * frame):
            chunk = wav[None, :, start : start + CHUNK_FRAMES * frame].to(device)  # [1, 1, n]
            codes = mimi.encode(chunk)  # [1, K, n / frame]
            pieces.append(codes[0].cpu())
            bar.update(codes.shape[-1])
    codes = torch.cat(pieces, dim=-1)  # [K, T]
    assert codes.shape[-1] == frames, (codes.shape, frames)
    metadata = {
        "sample_rate": str(mimi.sample_rate),
        "frame_rate": f"{mimi.frame_rate:g}",
        "num_codebooks": str(codes.shape[0]),
        "num_frames": str(frames),
        "source_duration": repr(samples / mimi.sample_rate),
        "source_samples": str(samples),
        "source_file": str(args.input),
        "source_sample_rate": str(source_rate),
        "source_channels": str(source_channels),
        "codec": weight.name,
        "fullduplex_version": __version__,
    }
    write_safetensors({"codes": codes.to(codes_dtype(mimi.cardinality))}, out, metadata=metadata)
    print(
        f"wrote codes [{codes.shape[0]}, {frames}] ({samples / mimi.sample_rate:.2f} s at {mimi.frame_rate:g} Hz) "
        f"to {out}"
    )
    return 0


def decode_command(args: argparse.Namespace) -> int:
    """Read and check the codes, stream-decode, trim to the source length, and write the WAV atomically."""
    out = Path(args.output)
    if out.suffix.lower() != ".wav":
        raise FullduplexError(f"output {out} must end in .wav (decode writes 16-bit PCM WAV)")
    check_output_path(out)
    src = Path(args.input)
    codes, metadata = read_codes(src)  # [K, T]
    num_q, frames = codes.shape
    if frames == 0 or num_q == 0:
        raise CodesFileError(f"{src} holds no codes (shape {list(codes.shape)})")
    mimi, weight = load_mimi_from_args(args)
    if num_q > mimi.config.quantizer.n_q:
        raise CodesFileError(f"{src} has {num_q} codebooks but {weight} holds {mimi.config.quantizer.n_q}")
    try:
        check_codes(codes[None], mimi.cardinality)
    except ValueError as e:
        raise CodesFileError(f"{src}: {e}") from None
    if metadata.get("sample_rate", str(mimi.sample_rate)) != str(mimi.sample_rate):
        warnings.warn(f"{src} was made at {metadata['sample_rate']} Hz; this Mimi runs at {mimi.sample_rate} Hz", stacklevel=2)
    if metadata.get("codec", weight.name) != weight.name:
        warnings.warn(f"{src} was encoded with {metadata['codec']}; decoding with {weight.name}", stacklevel=2)
    mimi.num_codebooks = num_q
    device = next(mimi.parameters()).device
    pieces = []
    with torch.inference_mode(), mimi.streaming(1), progress(frames, "decode", args.quiet) as bar:
        for start in range(0, frames, CHUNK_FRAMES):
            chunk = codes[None, :, start : start + CHUNK_FRAMES].to(device)  # [1, K, t]
            pieces.append(mimi.decode(chunk)[0].float().cpu())  # [1, t * frame]
            bar.update(chunk.shape[-1])
    wav = torch.cat(pieces, dim=-1)  # [1, T * frame]
    length = _source_samples(metadata, src)
    if length is not None:
        if length > wav.shape[-1]:
            warnings.warn(f"{src}: source_samples={length} exceeds the {wav.shape[-1]} decoded samples", stacklevel=2)
        wav = wav[..., :length]
    write_wav(out, wav, mimi.sample_rate)
    print(f"wrote {wav.shape[-1] / mimi.sample_rate:.2f} s of {mimi.sample_rate} Hz audio to {out}")
    return 0


def _source_samples(metadata: dict[str, str], src: Path) -> int | None:
    """``source_samples`` from the metadata, ``None`` when absent or unusable (with a warning)."""
    text = metadata.get("source_samples")
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        warnings.warn(f"{src}: ignoring source_samples={text!r} (not a sample count)", stacklevel=2)
        return None
    return value
