"""``fullduplex translate``: speech-to-speech translation with Hibiki, one 80 ms frame at a time as it runs live.

Per input ``NAME`` (the input's stem), in ``--output DIR`` (created if needed):

``NAME.wav``: the translated speech, mono 16-bit 24 kHz, from the first step to the model's end of sequence
(or to the end of ``--tail`` seconds after the source); ``NAME.json``: ``{"input", "text", "finished",
"duration", "frame_rate", "words": [{"text", "start", "end"}]}`` with times in seconds on the translation's
timeline (``finished`` false: the model had not ended within the tail).

Files are written under temporary names once every translation has succeeded, then renamed into place.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_outputs, check_file_targets
from ..codec.audio import write_wav
from ..codec.config import MimiConfig
from ..errors import FullduplexError
from ..inference.offline import read_inputs
from ..inference.translate import check_hibiki, translate
from .codec import mimi_config_from_arg, positive_int, progress
from .models import add_model_arguments, load_models, sampling_from_args, wants_demo

HIBIKI_REPO = "kyutai/hibiki-2b-pytorch-bf16"

EPILOG = f"""\
examples:
  fullduplex translate talk_fr.wav --output out/ --hf-repo {HIBIKI_REPO}
  fullduplex translate a.wav b.mp3 --output out/ --hf-repo {HIBIKI_REPO} --cfg-coef 3 --batch-size 2
  fullduplex translate talk.wav --output out/ --moshi-weight hibiki/ --mimi-weight mimi.safetensors \\
      --tokenizer tokenizer_spm_48k_multi6_2.model

Inputs are read in any format and rate, mixed down to mono and resampled to 24 kHz. The model hears the source
frame by frame, then an end mark, then silence until it ends its translation (at most --tail seconds). Outputs:
DIR/<stem>.wav (translated speech) and DIR/<stem>.json (text and word times). --cfg-coef above 1 steers the
model towards its "very_good" description (classifier-free guidance; twice the compute).
"""


def register(subparsers: Any) -> None:
    """Add ``translate``."""
    parser = subparsers.add_parser(
        "translate", help="speech-to-speech translation with Hibiki (translated speech and text)",
        description="Translate each recording with a Hibiki model (model_type \"hibiki\" in its config.json): "
        "speech in, translated speech and text with word times out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="+", metavar="AUDIO", help="source speech: audio files")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for <stem>.wav and <stem>.json")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs of the same names in DIR")
    parser.add_argument("--tail", type=float, default=10.0, metavar="SECONDS",
                        help="after the source, wait at most this long for the end of the translation (default 10)")
    run = add_model_arguments(
        parser, seed_help="random seed, per batch (default: 4242)",
        cfg_help="classifier-free guidance towards the \"very_good\" description: 1 is none (default); above 1 "
        "steers harder at twice the compute",
    )
    run.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="inputs run together (default: 8)")
    parser.set_defaults(func=translate_command)


def translate_command(args: argparse.Namespace) -> int:
    """Check inputs and outputs, load Hibiki, translate, write every output."""
    if args.cfg_coef <= 0:
        raise FullduplexError(f"--cfg-coef must be > 0 (1 = no guidance), got {args.cfg_coef}")
    if args.tail < 0:
        raise FullduplexError(f"--tail must be >= 0 seconds, got {args.tail}")
    if wants_demo(args):
        raise FullduplexError(f"translate needs a Hibiki checkpoint: pass --hf-repo {HIBIKI_REPO} (or --moshi-weight ...)")
    inputs = [Path(p) for p in args.input]
    names = [p.stem for p in inputs]
    if len(set(names)) < len(names):
        raise FullduplexError(f"several inputs are named {sorted(n for n in names if names.count(n) > 1)[0]!r}; rename them")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise FullduplexError(f"--output {out} is a file; give a folder")
    targets = [out / f"{n}{ext}" for n in names for ext in (".wav", ".json")]
    check_file_targets(targets, args.overwrite, "translate output")
    sampling_from_args(args)  # refuse bad sampling settings before reading anything
    mimi_config = mimi_config_from_arg(args.mimi_config)
    wavs = read_inputs(args.input, (mimi_config or MimiConfig()).sample_rate)
    models = load_models(args)
    check_hibiki(models.lm, str(models.lm_path))
    mimi = models.mimi
    total = sum(-(-w.shape[-1] // mimi.frame_size) for w in wavs)
    with progress(total, "translate", getattr(args, "quiet", False)) as bar:
        results = translate(wavs, mimi, models.lm, models.tokenizer, models.sampling, args.cfg_coef, args.batch_size,
                            args.tail, bar.update)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_outputs() as stage:
        for path, name, result in zip(args.input, names, results, strict=True):
            write_wav(stage(out / f"{name}.wav"), result.audio, result.sample_rate)
            words = [{"text": w.text, "start": w.start, "end": w.end} for w in result.words]
            stage(out / f"{name}.json").write_text(json.dumps({
                "input": path, "text": result.text, "finished": result.finished,
                "duration": result.audio.shape[-1] / result.sample_rate, "frame_rate": mimi.frame_rate, "words": words,
            }, ensure_ascii=False, indent=1) + "\n")
    for name, result in zip(names, results, strict=True):
        state = "" if result.finished else " (no end of sequence within --tail)"
        print(f"{out / name}.wav: {result.audio.shape[-1] / result.sample_rate:.2f} s, {len(result.words)} words{state}")
    return 0
