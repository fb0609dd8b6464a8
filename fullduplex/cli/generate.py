"""``fullduplex generate``: run the model on recordings of the user, as a live conversation would.

Outputs (any of them; at least one):

``--output``: stereo 16-bit WAV at 24 kHz, left channel the model, right channel the user's input, both exactly
the input's length. A path ending in ``.wav`` is that file (one input only); anything else is a folder, created
if needed, holding ``<input stem>.wav`` per input.

``--transcript``: the model's inner-monologue words. Per input, one JSON object::

    {"input": "talk.wav", "duration": 2.507, "frame_rate": 12.5, "text": "hello there",
     "words": [{"text": "hello", "start": 0.08, "end": 0.64}, {"text": "there", "start": 0.64, "end": 1.2}]}

with times in seconds on the output timeline (``0 <= start < end <= duration``). A path ending in ``.json`` is
one file: that object for one input, or for several an object mapping each input (as given on the command line)
to its object. Anything else is a folder, created if needed, holding ``<input stem>.json`` per input.

``--tokens-out``: one safetensors file with a tensor per input, named by the input's stem: int32
[1 + dep_q, T] (T = ceil(samples / 1920); row 0 the text token, rows 1..dep_q the audio codes; column t is what
generation step t returned, already aligned across streams; -2 where nothing was generated yet: column 0).
String metadata: ``format`` (``fullduplex-generate-tokens``), ``frame_rate``, ``sample_rate``, ``delays`` (JSON list
of the LM's stream delays), ``inputs`` (JSON object stem -> input path), ``samples`` (JSON object stem -> input
samples at 24 kHz), ``dep_q``, ``text_card``, ``card``, ``ungenerated_token`` (-2), ``lm``, ``mimi``,
``tokenizer`` (file names), ``temp``, ``temp_text``, ``top_k``, ``top_k_text``, ``seed`` and ``fullduplex_version``.

Every file is written under a temporary name once generation has succeeded, then renamed into place: a failure
leaves no output behind.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import check_file_targets, publish, temporary_beside
from ..checkpoint.resolve import DEFAULT_REPO
from ..codec.config import MimiConfig
from ..errors import FullduplexError
from ..inference.offline import GenerationResult, Sampling, generate, read_inputs, write_stereo_wav
from ..lm.config import LMConfig
from ..lm.model import UNGENERATED_TOKEN
from .codec import mimi_config_from_arg, positive_int, progress
from .models import (
    add_model_arguments,
    add_persona_arguments,
    check_persona_arguments,
    load_models,
    persona_schedule,
    sampling_from_args,
)

EPILOG = f"""\
examples:
  fullduplex generate --input question.wav --output answer.wav --transcript answer.json      # the demo model
  fullduplex generate question.wav answer.wav         # INFILE [OUTFILE], as moshi's run_inference takes them
  fullduplex generate --input question.wav --output answer.wav --hf-repo kyutai/moshiko-pytorch-bf16
  fullduplex generate --input a.wav b.flac c.mp3 --output out/ --transcript out/ --tokens-out out/tokens.safetensors
  fullduplex generate --input talk.wav --output talk.out.wav --hf-repo nu-dialogue/j-moshi-ext --temp 0 --temp-text 0
  fullduplex generate --input talk.wav --output o.wav --moshi-weight model.safetensors --config config.json \\
      --mimi-weight tokenizer-e351c8d8-checkpoint125.safetensors --tokenizer tokenizer_spm_32k_3.model
  fullduplex generate --input talk.wav --output o.wav --hf-repo nvidia/personaplex-7b-v1 \\
      --voice-prompt voices/NATF2.pt --text-prompt "You are a wise and friendly teacher."

Inputs are read in any format and rate, mixed down to mono and resampled to 24 kHz. The model hears them one
80 ms frame at a time and answers as it would live: its audio for a frame is played one frame later, so the
first 80 ms of the left channel are silent. Several inputs run as one batch (--batch-size at a time).

outputs:
  --output X.wav      stereo WAV (left: model, right: input), one input only; any other path is a folder of
                      <stem>.wav files
  --transcript X.json words with start/end seconds: {{"input", "duration", "frame_rate", "text", "words":
                      [{{"text", "start", "end"}}]}}; for several inputs one object mapping input -> that;
                      any other path is a folder of <stem>.json files
  --tokens-out X      safetensors: per input stem an int32 [1 + dep_q, frames] tensor (text, audio codes;
                      -2 = none), metadata frame_rate, delays, inputs, ...

With no checkpoint option, the small demo model bundled with fullduplex answers (a 6M-parameter model trained
on synthetic espeak-ng dialogues: it shows the machinery, it is no conversation partner; docs/demo.md). With any
checkpoint option, files not given come from the Hugging Face repo {DEFAULT_REPO} (downloaded once, then cached):
  fullduplex generate --input talk.wav --output talk.out.wav --hf-repo {DEFAULT_REPO}
"""


@dataclass
class Plan:
    """Where each output goes: per-input WAV and transcript paths, or one transcript file, or one tokens file."""

    names: list[str]  # per input: its stem (tensor names, file names in output folders)
    wavs: list[Path] = field(default_factory=list)
    transcripts: list[Path] = field(default_factory=list)
    transcript_file: Path | None = None
    tokens: Path | None = None
    folders: list[Path] = field(default_factory=list)  # output folders to create
    created: list[Path] = field(default_factory=list)  # those that did not exist before


def register(subparsers: Any) -> None:
    """Add ``generate``."""
    parser = subparsers.add_parser(
        "generate", help="run the model on recordings of the user (stereo WAV, transcript, tokens)",
        description="Generate the model's side of a conversation for each input recording, frame by frame as "
        "the live server does.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("infile", nargs="?", metavar="INFILE", help="the input, as moshi's run_inference takes it "
                    "(the same as --input INFILE)")
    io.add_argument("outfile", nargs="?", metavar="OUTFILE", help="the same as --output OUTFILE")
    io.add_argument("--input", "-i", nargs="+", metavar="USER.wav", help="the user's side: audio files")
    io.add_argument("--output", "-o", metavar="OUT", help="stereo WAV file (one input) or folder (see below)")
    io.add_argument("--transcript", metavar="OUT.json", help="the model's words with times: JSON file or folder")
    io.add_argument("--tokens-out", metavar="OUT.safetensors", help="the generated text and audio tokens")
    io.add_argument("--overwrite", action="store_true",
                    help="replace files of the same names in an output folder (a file you name is always replaced)")
    add_persona_arguments(parser)
    run = add_model_arguments(parser, seed_help="random seed, per batch (default: 4242)")
    run.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="inputs run together (default: 8)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=generate_command)


def take_positionals(args: argparse.Namespace) -> None:
    """``INFILE [OUTFILE]`` (moshi's run_inference) into ``--input`` / ``--output``; each given one way only."""
    infile, outfile = getattr(args, "infile", None), getattr(args, "outfile", None)
    if infile and args.input:
        raise FullduplexError(f"input given twice ({infile} and --input); give INFILE or --input, not both")
    if outfile and args.output:
        raise FullduplexError(f"output given twice ({outfile} and --output); give OUTFILE or --output, not both")
    if infile:
        args.input = [infile]
    if outfile:
        args.output = outfile
    if not args.input:
        raise FullduplexError("no input: give INFILE or --input USER.wav ...")


def plan_outputs(args: argparse.Namespace) -> Plan:
    """Check the output options against the inputs before any work; see the module docstring for the rules."""
    take_positionals(args)
    inputs = [Path(p) for p in args.input]
    if not (args.output or args.transcript or args.tokens_out):
        raise FullduplexError("nothing to write: give --output, --transcript and/or --tokens-out")
    names = [p.stem for p in inputs]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise FullduplexError(f"several inputs are named {twice[0]!r}; their outputs would collide, rename them")
    plan = Plan(names)
    in_folders: list[Path] = []  # outputs named by this command inside a folder the user gave
    if args.output:
        out = Path(args.output)
        if out.suffix.lower() == ".wav" and not out.is_dir():
            if len(inputs) > 1:
                raise FullduplexError(f"--output {out} is one file but there are {len(inputs)} inputs; give a folder")
            plan.wavs = [_file_target(out, "--output", plan)]
        else:
            plan.wavs = [_folder_target(out, "--output", plan) / f"{n}.wav" for n in names]
            in_folders += plan.wavs
    if args.transcript:
        out = Path(args.transcript)
        if out.suffix.lower() == ".json" and not out.is_dir():
            plan.transcript_file = _file_target(out, "--transcript", plan)
        else:
            plan.transcripts = [_folder_target(out, "--transcript", plan) / f"{n}.json" for n in names]
            in_folders += plan.transcripts
    if args.tokens_out:
        plan.tokens = _file_target(Path(args.tokens_out), "--tokens-out", plan)
    # In an output folder, a file of the same name is a previous run's (or the user's): replaced only when asked.
    check_file_targets(in_folders, args.overwrite, "generate output")
    given = {p.resolve() for p in inputs}
    targets = [*plan.wavs, *plan.transcripts, *filter(None, (plan.transcript_file, plan.tokens))]
    for target in targets:
        if target.resolve() in given:
            raise FullduplexError(f"output {target} is also an input; choose another name")
    if len({t.resolve() for t in targets}) < len(targets):
        raise FullduplexError("two outputs have the same path; give --output, --transcript and --tokens-out apart")
    return plan


def _file_target(path: Path, option: str, plan: Plan) -> Path:
    if path.is_dir():
        raise FullduplexError(f"{option} {path} is a folder; give a file name")
    if not path.parent.is_dir() and path.parent not in plan.folders:  # an output folder this run creates is fine
        raise FullduplexError(f"{option}: folder {path.parent} does not exist")
    return path


def _folder_target(path: Path, option: str, plan: Plan) -> Path:
    if path.exists() and not path.is_dir():
        raise FullduplexError(f"{option} {path} is a file; give a folder for several inputs, or a new folder name")
    plan.folders.append(path)
    return path


def generate_command(args: argparse.Namespace) -> int:
    """Check inputs and outputs, load the three models, generate, then write every output."""
    plan = plan_outputs(args)
    sampling_from_args(args)  # refuse bad sampling settings before reading anything
    mimi_config = mimi_config_from_arg(args.mimi_config)
    wavs = read_inputs(args.input, (mimi_config or MimiConfig()).sample_rate)  # [1, S] each
    check_persona_arguments(args)
    models = load_models(args)
    mimi, lm, tokenizer, sampling = models.mimi, models.lm, models.tokenizer, models.sampling
    lm_path, mimi_path = models.lm_path, models.mimi_path
    prompt = persona_schedule(args, models)
    total = sum(-(-w.shape[-1] // mimi.frame_size) for w in wavs)
    with progress(total, "generate", args.quiet) as bar:
        results = generate(wavs, mimi, lm, tokenizer, sampling, args.batch_size, bar.update, prompt)
    metadata = _tokens_metadata(args, plan, results, lm.config, sampling)
    metadata.update(lm=lm_path.name, mimi=mimi_path.name, tokenizer=tokenizer.path.name if tokenizer.path else "")
    staged = _stage_all(args.input, plan, results, metadata)
    for line in _commit(staged, plan):
        print(line)
    return 0


def _transcript(path: str, result: GenerationResult) -> dict[str, Any]:
    """The transcript object of one input (see the module docstring)."""
    words = [{"text": w.text, "start": w.start, "end": w.end} for w in result.words]
    return {
        "input": path, "duration": result.duration, "frame_rate": result.frame_rate,
        "text": " ".join(w.text for w in result.words), "words": words,
    }


def _tokens_metadata(
    args: argparse.Namespace, plan: Plan, results: list[GenerationResult], cfg: LMConfig, sampling: Sampling
) -> dict[str, str]:
    """String metadata of the tokens file, less the checkpoint file names."""
    from .. import __version__

    return {
        "format": "fullduplex-generate-tokens", "frame_rate": f"{results[0].frame_rate:g}",
        "sample_rate": str(results[0].sample_rate), "delays": json.dumps(list(cfg.delays)),
        "inputs": json.dumps(dict(zip(plan.names, args.input, strict=True))),
        "samples": json.dumps({n: r.audio.shape[-1] for n, r in zip(plan.names, results, strict=True)}),
        "dep_q": str(cfg.dep_q), "text_card": str(cfg.text_card), "card": str(cfg.card),
        "ungenerated_token": str(UNGENERATED_TOKEN), "temp": repr(sampling.temp), "temp_text": repr(sampling.temp_text),
        "top_k": str(sampling.top_k), "top_k_text": str(sampling.top_k_text), "seed": str(sampling.seed),
        "fullduplex_version": __version__,
    }


def _stage_all(
    inputs: list[str], plan: Plan, results: list[GenerationResult], metadata: dict[str, str]
) -> list[tuple[Path, Path, str]]:
    """Write every output under a temporary name beside its target: [(temporary, target, what), ...]. On a
    failure, removes what it wrote and the folders it created."""
    from safetensors.torch import save_file

    staged: list[tuple[Path, Path, str]] = []

    def stage(target: Path, what: str) -> Path:
        staged.append((temporary_beside(target), target, what))
        return staged[-1][0]

    try:
        for folder in plan.folders:
            if not folder.is_dir():
                folder.mkdir(parents=True)
                plan.created.append(folder)
        if plan.wavs:
            for path, result in zip(plan.wavs, results, strict=True):
                tmp = stage(path, f"stereo audio, {result.duration:.2f} s (left: model, right: input)")
                write_stereo_wav(tmp, result.audio, result.sample_rate)
        if plan.transcripts:
            for path, name, result in zip(plan.transcripts, inputs, results, strict=True):
                _write_json(stage(path, f"transcript, {len(result.words)} words"), _transcript(name, result))
        if plan.transcript_file is not None:
            objects = {name: _transcript(name, r) for name, r in zip(inputs, results, strict=True)}
            content = next(iter(objects.values())) if len(objects) == 1 else objects
            _write_json(stage(plan.transcript_file, f"transcript of {len(objects)} input(s)"), content)
        if plan.tokens is not None:
            tensors = {n: r.tokens.to(torch.int32).contiguous() for n, r in zip(plan.names, results, strict=True)}
            rows = next(iter(tensors.values())).shape[0]
            tmp = stage(plan.tokens, f"tokens of {len(tensors)} input(s), int32 [{rows}, frames] each")
            save_file(tensors, str(tmp), metadata=metadata)
    except BaseException:
        _discard(staged, plan)
        raise
    return staged


def _write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _discard(staged: list[tuple[Path, Path, str]], plan: Plan) -> None:
    """Remove temporary files and the output folders this run created, if left empty."""
    for tmp, _, _ in staged:
        tmp.unlink(missing_ok=True)
    for folder in reversed(plan.created):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _commit(staged: list[tuple[Path, Path, str]], plan: Plan) -> list[str]:
    """Rename every temporary file into place; returns one ``wrote ...`` line per file."""
    try:
        for tmp, target, _ in staged:
            publish(tmp, target)
    except OSError:
        _discard(staged, plan)
        raise
    return [f"wrote {what} to {target}" for _, target, what in staged]
