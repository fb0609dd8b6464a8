"""``fullduplex transcribe``: speech to text with a Kyutai STT model, words with times, many files batched.

Per input ``NAME.ext`` it writes ``NAME.json``::

    {"input": "talk.wav", "duration": 2.507, "frame_rate": 12.5, "text": "hello there",
     "words": [{"text": "hello", "start": 0.32, "end": 0.56}, {"text": "there", "start": 0.56, "end": 0.8}]}

(times in seconds of the input; the rule is in :mod:`fullduplex.inference.transcribe`) and ``NAME.txt`` (the
text and a newline) in the ``--output`` folder. Every file is written under a temporary name once all inputs are
transcribed, then renamed into place: a failure leaves no output behind.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..atomic import atomic_outputs, check_file_targets
from ..errors import FullduplexError
from ..inference.offline import read_inputs
from ..inference.transcribe import SttConfig, check_stt_model, framed_frames, transcribe
from .codec import positive_int, progress
from .models import add_model_arguments, load_models, model_config_json, wants_demo

EPILOG = """\
examples:
  fullduplex transcribe talk.wav --output out/ --hf-repo kyutai/stt-1b-en_fr
  fullduplex transcribe a.wav b.flac c.mp3 --output out/ --model kyutai/stt-2.6b-en --batch-size 16
  fullduplex transcribe calls/*.wav --output words/ --model ~/models/stt-1b-en_fr --device cuda

Inputs are read in any format and rate, mixed down to mono and resampled to 24 kHz. The model hears them one
80 ms frame at a time, as live, after the silence prefix its config.json names (stt_config); silence is added at
the end so that the last words come out. Decoding is greedy (--temp-text 0): a file's transcript does not depend
on the files batched with it.
"""

DEMO_REFUSAL = ("transcribe needs a speech-to-text model (the bundled demo model speaks): give --model "
                "kyutai/stt-1b-en_fr, a model folder, or --hf-repo / --moshi-weight")


def register(subparsers: Any) -> None:
    """Add ``transcribe``."""
    parser = subparsers.add_parser(
        "transcribe", help="speech to text with word times (Kyutai STT models)",
        description="Transcribe audio files with a Kyutai speech-to-text model (kyutai/stt-1b-en_fr, "
        "kyutai/stt-2.6b-en, or any Moshi-format model with dep_q 0): NAME.json (words with start/end seconds) "
        "and NAME.txt per input.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (wav, flac, mp3, ogg; any rate)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for NAME.json and NAME.txt")
    parser.add_argument("--overwrite", action="store_true", help="replace NAME.json / NAME.txt already in DIR")
    parser.add_argument(
        "--model", metavar="FOLDER_OR_REPO",
        help="the STT model: a folder holding config.json and the files it names, or a Hugging Face repo "
        "(OWNER/NAME or hf://OWNER/NAME, e.g. kyutai/stt-1b-en_fr); the same as --moshi-weight/--mimi-weight/"
        "--tokenizer of a folder, or --hf-repo",
    )
    run = add_model_arguments(parser)
    run.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="files run together (default: 8)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=transcribe_command)


def apply_model_option(args: argparse.Namespace) -> None:
    """Turn ``--model`` into the checkpoint options (a folder's files by its config.json names, or a repo)."""
    spec = args.model
    if spec is None:
        return
    given = [name for name in ("hf_repo", "moshi_weight", "mimi_weight", "tokenizer") if getattr(args, name)]
    if given:
        raise FullduplexError(f"--model and --{given[0].replace('_', '-')} both name the model; give one of them")
    if str(spec) == "demo" and not Path(spec).is_dir():
        raise FullduplexError(DEMO_REFUSAL)
    from ..checkpoint.resolve import MIMI_NAME, model_file, named_model
    from ..text.tokenizer import TOKENIZER_NAME

    folder, repo, raw = named_model(spec)
    if folder is None:
        args.hf_repo = repo
        return
    args.moshi_weight = str(folder)
    args.mimi_weight = str(model_file(folder, raw, "mimi_name", MIMI_NAME))
    args.tokenizer = str(model_file(folder, raw, "tokenizer_name", TOKENIZER_NAME))


def transcribe_command(args: argparse.Namespace) -> int:
    apply_model_option(args)
    inputs = [Path(p) for p in args.audio]
    names = [p.stem for p in inputs]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise FullduplexError(f"several inputs are named {twice[0]!r}; their outputs would collide, rename them")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise FullduplexError(f"--output {output} is a file; give a folder")
    targets = [output / f"{n}{ext}" for n in names for ext in (".json", ".txt")]
    if output.is_dir():
        check_file_targets(targets, args.overwrite, "transcript")
    if args.temp_text is None:  # greedy unless asked: batching must not change a transcript
        args.temp_text = 0.0
    if wants_demo(args):
        raise FullduplexError(DEMO_REFUSAL)
    models = load_models(args)
    raw, source = model_config_json(args)
    check_stt_model(models.lm, str(models.lm_path))
    stt = SttConfig.from_config(raw, source)
    wavs = read_inputs(inputs, models.mimi.sample_rate)
    sampling = replace(models.sampling, temp=0.0)
    frame = models.mimi.frame_size
    total = sum(framed_frames(w.shape[-1], stt, models.mimi.sample_rate, frame) for w in wavs)
    with progress(total, "transcribe", args.quiet) as bar:
        results = transcribe(wavs, models.mimi, models.lm, models.tokenizer, stt, args.batch_size, sampling, bar.update)
    output.mkdir(parents=True, exist_ok=True)
    with atomic_outputs() as stage:
        for path, name, result in zip(inputs, names, results, strict=True):
            record = {
                "input": str(path), "duration": round(result.duration, 4), "frame_rate": models.mimi.frame_rate,
                "text": result.text,
                "words": [{"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in result.words],
            }
            for target, content in ((output / f"{name}.json", json.dumps(record, ensure_ascii=False, indent=1) + "\n"),
                                    (output / f"{name}.txt", result.text + "\n")):
                stage(target).write_text(content, encoding="utf-8")
    for name in names:
        print(output / f"{name}.json")
    return 0
