"""``fullduplex data annotate|prepare|merge|synth``: stereo conversations → word alignments → training shards
(in one process, or in parts joined by ``merge``), and synthetic conversations spoken by espeak-ng.

See docs/data-preparation.md for the formats and the alignment rules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import FullduplexError
from .codec import add_mimi_arguments, load_mimi_from_args, positive_int, resolve_device

ANNOTATE_EPILOG = """\
examples:
  fullduplex data annotate calls/ --model ~/models/faster-whisper-medium --language en --output calls/
  fullduplex data annotate train.jsonl --model ./whisper-large-v3-ct2 --language ja --output alignments/ --device cuda

Input: a folder (every .wav .flac .ogg .mp3 under it) or a jsonl manifest ({"path", "duration"} per line).
Each stereo file's channels are transcribed separately (left: SPEAKER_MAIN, the speaker the model learns to be;
right: SPEAKER_OTHER) and written to OUTPUT/<same relative path>.json as
  {"alignments": [[word, [start_s, end_s], speaker], ...]}   (sorted by start)
Files whose alignments already exist are skipped, so an interrupted run resumes where it stopped.
Many processes: --num-shards N --shard-index I (e.g. a Slurm array), or under torchrun RANK/WORLD_SIZE, each
annotate a share of the files (dealt by the manifest's durations, longest first; a folder: by sorted name).
Needs faster-whisper (pip install faster-whisper) and a local CTranslate2 Whisper model folder.
"""

PREPARE_EPILOG = """\
examples:
  fullduplex data prepare train.jsonl --tokenizer tokenizer_spm_32k_3.model --output shards/train
  fullduplex data prepare train.jsonl --hf-repo kyutai/moshiko-pytorch-bf16 --tokenizer hi.model \\
      --output shards/hi --both-sides --policy shift --shard-size 128
  fullduplex data prepare ja.jsonl --tokenizer ja.model --no-spaces --alignments alignments/ --output shards/ja

Each manifest line's stereo audio is encoded with Mimi (8 codebooks per channel, 12.5 frames/s) and the left
speaker's words become the text stream (word pieces from each word's start frame, pad 3, end-of-padding 0).
Items are [17, T]: text, the left speaker's codebooks, the right speaker's. --both-sides adds each conversation
seen from the right speaker. Conversations that cannot be used are skipped and listed with their manifest line.
OUTPUT (a new folder) gets shard-NNNNN.safetensors, index.json (totals) and report.json (hours, speakers, pad
ratio, collisions, skipped files); the summary is printed. Shard NNNNN holds the conversations of manifest
lines [NNNNN * S, (NNNNN + 1) * S) of the usable ones (S = --shard-size, halved with --both-sides).

In parts (many processes or machines): --num-shards N --shard-index I, or under torchrun its RANK and
WORLD_SIZE (one GPU per process: cuda:LOCAL_RANK), prepares part I into OUTPUT/part-IIIII-of-NNNNN/. A killed
part, run again, redoes only its unfinished shards. Then `fullduplex data merge OUTPUT --output DIR` gives the
folder one process would have written, byte for byte:
  fullduplex data prepare train.jsonl --tokenizer tok.model --output parts/ --num-shards 8 --shard-index 3
  torchrun --nproc-per-node 8 -m fullduplex data prepare train.jsonl --tokenizer tok.model --output parts/
  fullduplex data merge parts/ --output shards/train
"""

MERGE_EPILOG = """\
examples:
  fullduplex data merge parts/ --output shards/train
  fullduplex data merge parts/part-00000-of-00002 parts/part-00001-of-00002 --output shards/train

Checks that the parts belong to one run (same manifest path and content, options, Mimi weights, tokenizer and
--num-shards; each part once, all finished), copies their shards and writes index.json and report.json:
the same files, byte for byte, as `data prepare` without parts. Nothing is written when a check fails.
"""

SYNTH_EPILOG = """\
examples:
  fullduplex data synth --lang en --dialogues 200 --output synth/en
  fullduplex data synth --lang hi --dialogues 50 --output synth/hi --seed 7 --voices hi+m1,hi+f2
  fullduplex data synth --lang ja --dialogues 100 --output synth/ja --sample-rate 16000

Two espeak-ng voices talk (left channel: the speaker a model learns to be; right: the other) from scripted
exchanges: greetings, questions and answers, a pause inside a turn, overlapping turns, backchannels. Words are
synthesised one by one and placed at chosen gaps, so their timestamps are exact to the millisecond.
OUTPUT (a new folder) gets LANG-NNNNN.wav (stereo) + LANG-NNNNN.json (alignments), manifest.jsonl (for
`fullduplex data prepare`; Japanese: prepare with --no-spaces), transcripts.txt (one turn a line, e.g. to
train a tokenizer) and synth.json (settings and totals). The same seed gives byte-identical files.
Needs espeak-ng (apt-get install espeak-ng).
"""


def register(subparsers: Any) -> None:
    """Add ``data`` with its ``annotate``, ``prepare``, ``merge`` and ``synth`` actions."""
    data = subparsers.add_parser(
        "data", help="annotate, prepare or synthesise stereo conversations for training",
        description="Training data in moshi-finetune's format: stereo WAV (left: the speaker the model learns to "
        "be), alignments JSON, jsonl manifest.",
        epilog="examples:\n  fullduplex data annotate calls/ --model faster-whisper-medium/ --output calls/\n"
        "  fullduplex data prepare calls/train.jsonl --tokenizer tok.model --output shards/\n"
        "  fullduplex data synth --lang en --dialogues 200 --output synth/en",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = data.add_subparsers(dest="action", metavar="ACTION", required=True)

    ann = actions.add_parser(
        "annotate", help="word timestamps of both channels (faster-whisper) -> alignments JSON",
        description="Transcribe each channel of stereo conversations with word timestamps.",
        epilog=ANNOTATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ann.add_argument("input", metavar="AUDIO_DIR_OR_MANIFEST", help="folder of stereo audio files, or a .jsonl manifest")
    ann.add_argument("--model", required=True, metavar="PATH",
                     help="faster-whisper: a local CTranslate2 model folder; kyutai-stt: a model folder or repo")
    ann.add_argument("--engine", choices=("faster-whisper", "kyutai-stt"), default="faster-whisper",
                     help="speech recognizer: faster-whisper, or a Kyutai STT model (kyutai/stt-1b-en_fr: English "
                     "and French, language detected; fullduplex.data.stt_engine) (default: faster-whisper)")
    ann.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the alignments JSON files")
    ann.add_argument("--language", default="auto", metavar="CODE",
                     help="spoken language: hi, ja, en, ... or auto to detect it per channel (default: auto)")
    ann.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ann.add_argument("--compute-type", default="default", metavar="TYPE",
                     help="CTranslate2 compute type: default, float16, int8_float16, int8, ... (default: default)")
    ann.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                     help="30 s ASR windows per faster-whisper call, N > 1 with its BatchedInferencePipeline (which "
                     "first cuts the audio at pauses with its VAD); 1: window after window (default: 1)")
    add_part_arguments(ann)
    ann.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ann.set_defaults(func=annotate_command)

    prep = actions.add_parser(
        "prepare", help="stereo audio + alignments -> training shards of Mimi codes and text",
        description="Encode conversations with Mimi, align their words to the 12.5 Hz text stream, write shards.",
        epilog=PREPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument("manifest", metavar="MANIFEST", help="jsonl manifest: {\"path\", \"duration\"} per line")
    prep.add_argument("--tokenizer", required=True, metavar="TOK.model", help="SentencePiece model of the LM's text")
    prep.add_argument("--output", "-o", required=True, metavar="DIR", help="new (or empty) folder for the shards")
    prep.add_argument("--overwrite", action="store_true",
                      help="replace DIR when it holds a previous `data prepare` output (and nothing else)")
    prep.add_argument("--alignments", metavar="DIR",
                      help="folder of alignments (same relative paths as the audio under the manifest's folder; "
                      "default: <audio stem>.json beside each audio file)")
    prep.add_argument("--both-sides", action="store_true",
                      help="also train each conversation from the right speaker's side (channels swapped)")
    prep.add_argument("--policy", choices=("drop", "shift"), default="drop",
                      help="a word whose start frame is taken: drop it, or shift it to the next free frame "
                      "(default: drop)")
    prep.add_argument("--no-spaces", action="store_true",
                      help="the language writes no spaces between words (Japanese, Chinese, Thai): tokenize each "
                      "utterance as running text")
    prep.add_argument("--shard-size", type=positive_int, default=64, metavar="N",
                      help="items per shard: N conversations, N/2 with --both-sides, fewer where some are skipped "
                      "(default: 64)")
    prep.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                      help="conversations per Mimi call, sorted by length (the shards are the same for any N; "
                      "memory grows with it; default: 16 on a GPU, 1 on a CPU, where batching is slower: "
                      "docs/data-preparation.md)")
    add_part_arguments(prep)
    add_mimi_arguments(prep)
    prep.set_defaults(func=prepare_command)

    mer = actions.add_parser(
        "merge", help="join the parts of a `data prepare --num-shards` run into one shards folder",
        description="Join the parts written by `data prepare --num-shards N --shard-index I` (or under torchrun) "
        "into the folder one process would have written.",
        epilog=MERGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mer.add_argument("parts", nargs="+", metavar="PART",
                     help="a part folder (OUT/part-00003-of-00008), or the OUT folder holding all of them")
    mer.add_argument("--output", "-o", required=True, metavar="DIR", help="new (or empty) folder for the shards")
    mer.add_argument("--overwrite", action="store_true",
                     help="replace DIR when it holds a previous `data prepare` output (and nothing else)")
    mer.set_defaults(func=merge_command)

    syn = actions.add_parser(
        "synth", help="synthetic stereo dialogues spoken by two espeak-ng voices, with exact word timestamps",
        description="Synthesise scripted two-speaker conversations (en, hi, ja) in moshi-finetune's data format.",
        epilog=SYNTH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    syn.add_argument("--lang", required=True, choices=("en", "hi", "ja"), help="language of the dialogues")
    syn.add_argument("--dialogues", required=True, type=positive_int, metavar="N", help="how many conversations")
    syn.add_argument("--output", "-o", required=True, metavar="DIR", help="new (or empty) folder for the corpus")
    syn.add_argument("--overwrite", action="store_true",
                     help="replace DIR when it holds a previous `data synth` corpus (and nothing else)")
    syn.add_argument("--seed", type=int, default=0, help="random seed of the scripts and timings (default: 0)")
    syn.add_argument("--voices", metavar="LEFT,RIGHT",
                     help="two espeak-ng voices, e.g. en-us+m3,en-gb-x-rp+f3 (default per language: "
                     "en-us+m3,en-gb-x-rp+f3 / hi+m3,hi+f3 / ja+m3,ja+f3)")
    syn.add_argument("--sample-rate", type=positive_int, default=24000, metavar="HZ",
                     help="sample rate of the WAV files (default: 24000, Mimi's)")
    syn.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    syn.add_argument("--engine", choices=("espeak-ng", "kyutai-tts"), default="espeak-ng",
                     help="who speaks: espeak-ng (default; exact word times) or Kyutai TTS (--tts, --tts-voices; en)")
    syn.add_argument("--tts", metavar="MODEL", help="kyutai-tts: a checkpoint folder whose config.json names its "
                     "files, or hf://OWNER/REPO (default hf://kyutai/tts-1.6b-en_fr)")
    syn.add_argument("--tts-voices", metavar="LEFT,RIGHT", help="kyutai-tts: two voice embedding files")
    syn.set_defaults(func=synth_command)


def add_part_arguments(parser: argparse.ArgumentParser) -> None:
    """``--num-shards`` / ``--shard-index``: this process does one part of the manifest."""
    group = parser.add_argument_group("parts (many processes or machines)")
    group.add_argument("--num-shards", type=positive_int, metavar="N",
                       help="split the work into N parts (default: torchrun's WORLD_SIZE when run under it, else no "
                       "parts: the whole manifest in this process)")
    group.add_argument("--shard-index", type=int, metavar="I",
                       help="the part this process does, 0 .. N-1 (e.g. $SLURM_ARRAY_TASK_ID; default: torchrun's "
                       "RANK)")


def annotate_command(args: argparse.Namespace) -> int:
    from ..data.annotate import FasterWhisper, annotate, part_tasks, plan
    from ..data.parts import local_device, resolve_part

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise FullduplexError(f"--output {output} is a file; give a folder")
    part = resolve_part(args.num_shards, args.shard_index)
    tasks, problems = plan(args.input, output)
    if not tasks:
        raise FullduplexError(f"{args.input}: nothing to annotate ({len(problems)} bad manifest line(s))")
    if part is not None:
        tasks = part_tasks(tasks, part)
        print(f"{part}: {len(tasks)} file(s)", file=sys.stderr)
    # faster-whisper loads only when some file still needs it: a finished run resumes instantly.
    todo = any(not t.output.is_file() for t in tasks)
    device, index = args.device, 0
    local = local_device()
    if local is not None and args.device in ("auto", "cuda"):
        device, index = "cuda", local.index
    transcriber = None
    if todo and args.engine == "faster-whisper":
        transcriber = FasterWhisper(args.model, device, args.compute_type, args.batch_size, index)
    elif todo and args.engine == "kyutai-stt":
        from ..data.stt_engine import KyutaiStt

        transcriber = KyutaiStt.load(args.model, f"cuda:{index}" if device == "cuda" else device)
    language = None if args.language == "auto" else args.language
    report = annotate(tasks, transcriber, language, args.quiet)
    if part is None or part.index == 0:  # the manifest's bad lines: reported by one part only
        report.problems[:0] = problems
    for problem in report.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    print(report.summary())
    if report.annotated == 0 and report.already_done == 0 and tasks:
        raise FullduplexError(f"{args.input}: no file could be annotated; first problem: {report.problems[0]}")
    return 0


def prepare_command(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..atomic import check_output_folder
    from ..data.parts import local_device, resolve_part
    from ..data.prepare import PREPARED, PrepareOptions, prepare, prepare_part
    from ..text.tokenizer import TextTokenizer

    output = Path(args.output)
    part = resolve_part(args.num_shards, args.shard_index)
    if part is None:
        check_output_folder(output, PREPARED, args.overwrite, protect=(Path(args.manifest),))
    elif output.exists() and not output.is_dir():
        raise FullduplexError(f"--output {output} is a file; give a folder (parts go to {output}/{part.folder_name})")
    if args.device is None and (local := local_device()) is not None:
        args.device = str(local)  # torchrun: one GPU per process
    resolve_device(args.device)
    tokenizer = TextTokenizer.load(args.tokenizer)
    mimi, weight = load_mimi_from_args(args, num_codebooks=1)
    if mimi.config.quantizer.n_q < 8:
        raise FullduplexError(f"{weight} has {mimi.config.quantizer.n_q} codebooks; training needs 8 per channel")
    mimi.num_codebooks = 8
    options = PrepareOptions(
        policy=args.policy, both_sides=args.both_sides, shard_size=args.shard_size, spaced=not args.no_spaces,
        alignments=Path(args.alignments) if args.alignments else None, batch_size=args.batch_size,
    )
    meta = {"tokenizer": tokenizer.path.name if tokenizer.path else None, "mimi": weight.name,
            "fullduplex_version": __version__}
    if part is None:
        report = prepare(args.manifest, mimi, tokenizer, output, options, meta=meta, quiet=args.quiet,
                         overwrite=args.overwrite)
    else:
        report = prepare_part(args.manifest, mimi, tokenizer, output, part, options, meta=meta, quiet=args.quiet,
                              overwrite=args.overwrite)
    for problem in report.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    print(report.summary())
    if part is None:
        print(f"wrote {report.items} items to {output}")
    else:
        print(f"{part}: {report.items} items in {output / part.folder_name}; when every part is done: "
              f"fullduplex data merge {output} --output DIR")
    return 0


def merge_command(args: argparse.Namespace) -> int:
    from ..data.merge import merge

    report = merge(args.parts, args.output, args.overwrite)
    for problem in report.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    print(report.summary())
    print(f"wrote {report.items} items to {args.output}")
    return 0


def synth_command(args: argparse.Namespace) -> int:
    if args.engine == "kyutai-tts":
        from .speak import synth_corpus_tts

        return synth_corpus_tts(args)
    from ..atomic import check_output_folder
    from ..data.synth import SYNTH, SynthConfig, resolve_voices, synthesize_corpus

    output = Path(args.output)
    check_output_folder(output, SYNTH, args.overwrite)
    config = SynthConfig(sample_rate=args.sample_rate)
    voices = resolve_voices(args.lang, args.voices)
    report = synthesize_corpus(args.lang, args.dialogues, output, args.seed, voices, config, args.quiet,
                               overwrite=args.overwrite)
    print(report.summary())
    print(f"wrote {output / 'manifest.jsonl'}")
    return 0
