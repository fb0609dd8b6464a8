"""``fullduplex voice make``: a voice prompt file from a recording (see ``docs/personas.md``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import FullduplexError

EPILOG = """\
examples:
  fullduplex voice make me.wav voices/me.safetensors          # Mimi codes: works with any Moshi-family LM
  fullduplex voice make me.wav voices/ME.pt --hf-repo nvidia/personaplex-7b-v1   # the PersonaPlex .pt layout
  fullduplex serve --hf-repo nvidia/personaplex-7b-v1 --voice-dir voices --voice me.safetensors

The recording (any format and rate, mixed to mono, resampled to 24 kHz) is normalised to -24 LUFS (ITU-R
BS.1770, as PersonaPlex does), zero-padded to whole 80 ms frames and encoded by Mimi. OUT.safetensors holds the
codes (int32 [8, frames]); OUT.pt holds what PersonaPlex's own voice files hold (the LM's input embeddings of the
voice steps and its token ring), for the LM given. A few seconds of clean speech make a good voice; the released
voices are about 4 s.
"""


def register(subparsers: Any) -> None:
    """Add ``voice`` (with ``make``)."""
    parser = subparsers.add_parser(
        "voice", help="voice prompts for persona models (PersonaPlex)",
        description="Voice prompts: the speaker a persona model imitates.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="voice_command", metavar="COMMAND", required=True)
    make = sub.add_parser(
        "make", help="a voice file from a recording", description="Build a voice prompt file from a recording.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    make.add_argument("input", metavar="IN", help="recording of the voice (wav, flac, mp3, ogg, ...)")
    make.add_argument("output", metavar="OUT", help="OUT.safetensors (Mimi codes) or OUT.pt (PersonaPlex layout)")
    make.add_argument("--hf-repo", metavar="OWNER/NAME", help="Hugging Face repo of the checkpoints")
    make.add_argument("--mimi-weight", metavar="FILE", help="Mimi checkpoint: file, folder or hf://OWNER/REPO[/FILE]")
    make.add_argument("--mimi-config", metavar="PRESET_OR_JSON", help="Mimi architecture (default: the released Mimi)")
    make.add_argument("--moshi-weight", metavar="FILE", help="LM checkpoint (OUT.pt only)")
    make.add_argument("--config", metavar="PRESET_OR_JSON", help="LM architecture (OUT.pt only; default: inferred)")
    make.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    make.set_defaults(func=make_command)


def make_command(args: argparse.Namespace) -> int:
    from ..checkpoint.lm import load_lm, resolve_lm
    from ..checkpoint.mimi import load_mimi, resolve_mimi
    from ..codec.audio import read_audio
    from ..inference.voice import encode_voice, filler_codes, released_voice, save_released_voice, save_voice
    from .codec import mimi_config_from_arg, resolve_device

    source, out = Path(args.input), Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in (".safetensors", ".pt"):
        raise FullduplexError(f"{out}: the output must end in .safetensors (Mimi codes) or .pt (PersonaPlex layout)")
    if not out.parent.is_dir():
        raise FullduplexError(f"{out}: folder {out.parent} does not exist")
    if out.exists() and out.resolve() == source.resolve():
        raise FullduplexError(f"{out} is also the input; choose another name")
    device = resolve_device(args.device)
    mimi_config = mimi_config_from_arg(args.mimi_config)
    wav = read_audio(source, (mimi_config.sample_rate if mimi_config else 24000))  # [1, S], checked first
    mimi = load_mimi(resolve_mimi(args.mimi_weight, args.hf_repo), device=device, config=mimi_config)
    codes, loudness = encode_voice(wav, mimi, str(source))
    if suffix == ".safetensors":
        save_voice(codes, out, mimi.sample_rate, mimi.frame_rate, loudness, source.name)
    else:
        lm_path, repo_config = resolve_lm(args.moshi_weight, args.hf_repo)
        lm = load_lm(lm_path, config=args.config or repo_config, device=device)
        if codes.shape[0] < lm.config.own_q:
            raise FullduplexError(f"Mimi gave {codes.shape[0]} codebooks; the LM {lm_path} speaks {lm.config.own_q}")
        save_released_voice(released_voice(lm, codes, filler_codes(mimi)), out)
    print(f"wrote voice of {codes.shape[-1]} frames ({codes.shape[-1] / mimi.frame_rate:.2f} s, "
          f"{loudness:.1f} LUFS before normalising to -24) to {out}")
    return 0
