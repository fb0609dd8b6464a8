"""``python -m fullduplex.run_inference``: moshi's ``python -m moshi.run_inference`` (0.2.13), flag for flag.

    python -m fullduplex.run_inference --hf-repo kyutai/moshiko-pytorch-bf16 talk.wav reply.wav
    python -m fullduplex.run_inference --moshi-weight model.safetensors --mimi-weight mimi.safetensors \\
        --tokenizer tokenizer.model --config config.json --device cpu --batch-size 1 talk.wav reply.wav

The same command line gives the same files as moshi's: ``--batch-size`` copies of the input's first channel
(read and resampled to 24 kHz as moshi reads it) run together; each copy's answer is written as a mono 16-bit
WAV at 24 kHz, ``OUT-0.wav`` ... ``OUT-{B-1}.wav`` (``OUT.wav`` itself when the batch is 1), holding only the model's
audio, one 80 ms frame per whole input frame (a trailing part frame is dropped); the model's words of the
first copy go to stdout. The first input frame is fed twice, as moshi does, so that the model hears it (the
first step's user input is otherwise masked by the initial tokens). Sampling: the model's ``lm_gen_config``
(``config.json``), else temperature 0.8/0.7, top-k 250/25, seeded 4242 exactly as moshi seeds it, so that on
the same weights the same draws give the same tokens and audio (see :func:`seed_as_moshi`).

This is a thin layer over fullduplex's own loading (:func:`fullduplex.cli.models.load_models`), codec and
generator. ``fullduplex generate`` is the native command (stereo output aligned with the input, transcripts
with times, tokens, any number of inputs); docs/from-moshi.md maps one to the other.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .checkpoint.resolve import DEFAULT_REPO
from .errors import AudioError, FullduplexError

SEED = 4242  # moshi.run_inference's seed_all(4242)

EPILOG = """\
examples:
  python -m fullduplex.run_inference --hf-repo kyutai/moshiko-pytorch-bf16 talk.wav reply.wav
      # reply-0.wav ... reply-7.wav: eight samples of the model's answer (the default --batch-size 8)
  python -m fullduplex.run_inference --device cpu --batch-size 1 --moshi-weight model.safetensors \\
      --mimi-weight mimi.safetensors --tokenizer tokenizer.model --config config.json talk.wav reply.wav

The same flags, defaults and output files as moshi's `python -m moshi.run_inference`, and on the same weights
the same tokens and audio. `fullduplex generate` is the native command (stereo output, transcripts, tokens):
see docs/from-moshi.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fullduplex.run_inference",
        description="Answer a recording as moshi's run_inference does: the model's audio as mono WAV files, its "
        "words on stdout.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tokenizer", type=str, help="SentencePiece .model of the LM's text vocabulary")
    parser.add_argument("--moshi-weight", type=str, help="LM checkpoint: a file, folder or hf://OWNER/REPO[/FILE]")
    parser.add_argument("--mimi-weight", type=str, help="Mimi checkpoint: a file, folder or hf://OWNER/REPO[/FILE]")
    parser.add_argument("--hf-repo", type=str, default=DEFAULT_REPO,
                        help=f"Hugging Face repo of the files not given (default: {DEFAULT_REPO})")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="copies of the input answered together, one output file each (default: 8)")
    parser.add_argument("--device", type=str, default="cuda", help="torch device (default: cuda)")
    parser.add_argument("--half", action="store_const", const="float16", default="bfloat16", dest="dtype",
                        help="run the LM in float16 instead of bfloat16 (for old GPUs)")
    parser.add_argument("--config", "--lm-config", dest="config", type=str,
                        help="the model's config.json (default: the repo's)")
    parser.add_argument("--cfg-coef", type=float, default=1.0,
                        help="classifier-free guidance: only 1.0 (none), as the dialogue models have no conditioning")
    parser.add_argument("infile", type=str, help="the user's recording (any format sphn reads; first channel)")
    parser.add_argument("outfile", type=str, nargs="?", default="",
                        help="output WAV (default: none, only the words are printed)")
    return parser


def log(level: str, message: str) -> None:
    print(f"[{level}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and return the exit status: 0, or 2 with one ``error: ...`` line on stderr."""
    from .cli.main import run_command

    def command(args: argparse.Namespace) -> int:
        with torch.inference_mode():
            return run(args)

    return run_command(build_parser(), argv, command)


def model_arguments(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    """The options of :func:`fullduplex.cli.models.load_models` for moshi's flags (sampling from the model's
    ``lm_gen_config``)."""
    return argparse.Namespace(
        hf_repo=args.hf_repo, moshi_weight=args.moshi_weight, mimi_weight=args.mimi_weight, tokenizer=args.tokenizer,
        config=args.config, lora_weight=getattr(args, "lora_weight", None), lora_scaling=None, mimi_config=None,
        device=args.device, dtype=args.dtype, quantize=None, temp=None, temp_text=None, top_k=None,
        top_k_text=None, seed=seed, cfg_coef=args.cfg_coef,
    )


def read_first_channel(path: str, sample_rate: int) -> torch.Tensor:
    """The first channel of an audio file at ``sample_rate`` as moshi reads it (``sphn.read`` with its own
    resampler): float32 [S]."""
    import sphn

    from .codec.audio import _sphn_call

    file = Path(path)
    if not file.is_file():
        raise AudioError(f"audio file not found: {path}")
    data, _ = _sphn_call("read audio file", file, sphn.read, str(file), sample_rate=sample_rate)
    data = np.asarray(data, dtype=np.float32)
    data = data[None] if data.ndim == 1 else data
    if data.size == 0:
        raise AudioError(f"audio file {path} holds no samples")
    return torch.from_numpy(np.ascontiguousarray(data[0]))


# moshi's LMModel creates these layers on the CPU, without its device argument, before moving the model to the
# meta device (randomly initialised even when the weights are loaded afterwards).
LM_LAYERS_BUILT_ON_CPU = ("text_linear.", "depformer_in.", "linears.", "extra_heads.")


def seed_as_moshi(mimi: torch.nn.Module, lm: torch.nn.Module, device: torch.device, seed: int = SEED) -> None:
    """Put the global random generators where moshi's are when its run_inference starts sampling.

    moshi seeds (torch, CUDA, ``random``, numpy), then builds Mimi and the LM randomly initialised before loading
    their weights: every linear and convolution layer draws its weight and bias uniformly, once per element, from
    the global generator. For Mimi these are all its layers but norms and layer scales (the convolutions and the
    quantizer on the CPU, the two transformers on ``device``); the LM is built on the meta device except
    :data:`LM_LAYERS_BUILT_ON_CPU`. fullduplex builds no model randomly, so the same draws are made here, on the
    same generators, from the shapes of the loaded models (the same architecture): the samples that follow come
    from the same random stream as moshi's."""
    from .nn.transformer import LayerScale

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the CPU and every CUDA generator
    cpu, on_device = 0, []
    for name, module in mimi.named_modules():
        if isinstance(module, (torch.nn.LayerNorm, LayerScale)):
            continue
        transformer = name.split(".")[0] in ("encoder_transformer", "decoder_transformer")
        for param in module.parameters(recurse=False):
            if transformer and device.type != "cpu":
                on_device.append(param.shape)
            else:
                cpu += param.numel()
    cpu += sum(p.numel() for name, p in lm.named_parameters() if name.startswith(LM_LAYERS_BUILT_ON_CPU))
    torch.empty(cpu, dtype=torch.float32).uniform_()
    for shape in on_device:  # one call per tensor: a CUDA generator advances by call, not by element
        torch.empty(shape, dtype=torch.float32, device=device).uniform_()


def run(args: argparse.Namespace) -> int:
    from .atomic import atomic_outputs
    from .cli.models import load_models
    from .codec.audio import write_wav
    from .inference.generator import Generator

    if args.batch_size < 1:
        raise FullduplexError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.outfile) if args.outfile else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise FullduplexError(f"cannot write {out}: " + ("it is a folder" if out.is_dir() else
                                                         f"folder {out.parent} does not exist"))
    if not Path(args.infile).is_file():
        raise AudioError(f"audio file not found: {args.infile}")
    model_args = model_arguments(args, SEED)
    if args.cfg_coef != 1.0:  # before any loading
        from .cli.models import CFG_REFUSAL

        raise FullduplexError(CFG_REFUSAL.format(coef=args.cfg_coef))
    log("info", "loading the models")
    models = load_models(model_args)
    mimi, lm, tokenizer, sampling = models.mimi, models.lm, models.tokenizer, models.sampling
    device = next(mimi.parameters()).device
    batch = args.batch_size  # moshi answers alone only with text-only models (dep_q 0), which fullduplex has not
    log("info", f"loading input file {args.infile}")
    pcm = read_first_channel(args.infile, mimi.sample_rate)
    frame = mimi.frame_size
    frames = pcm.shape[-1] // frame  # whole frames only, as moshi
    if frames == 0:
        raise AudioError(f"{args.infile} is shorter than one frame ({frame} samples at {mimi.sample_rate} Hz)")
    mimi.match_moshi()  # moshi's streaming window and rounding: the same audio, also past Mimi's context
    seed_as_moshi(mimi, lm, device)
    gen = Generator(lm, sampling.temp, sampling.temp_text, sampling.top_k, sampling.top_k_text, seed=None)
    log("info", f"starting inference, sampling: {sampling.temp > 0 or sampling.temp_text > 0}, audio temp: "
        f"{sampling.temp}, text temp: {sampling.temp_text}")
    audio: list[torch.Tensor] = []  # per step: [B, 1, frame]
    with mimi.streaming(batch), gen.streaming(batch):
        for t in range(frames):
            chunk = pcm[t * frame : (t + 1) * frame].to(device).view(1, 1, frame).expand(batch, 1, frame)
            codes = mimi.encode(chunk)
            if t == 0:  # fed twice: the first step's user input is masked by the initial tokens
                gen.step(codes)
            tokens = gen.step(codes)
            if tokens is None:
                continue
            audio.append(mimi.decode(tokens[:, 1:]).float().cpu())
            text = int(tokens[0, 0])
            if text not in (0, 3):
                print(tokenizer.piece(text).replace("\u2581", " "), end="", flush=True)
    print(flush=True)
    if out is None or not audio:
        return 0
    model = torch.cat(audio, dim=-1)  # [B, 1, S]
    targets = [out] if batch == 1 else [out.with_name(f"{out.stem}-{b}{out.suffix}") for b in range(batch)]
    with atomic_outputs() as stage:
        for target, wav in zip(targets, model, strict=True):
            write_wav(stage(target), wav, mimi.sample_rate)
    for target in targets:
        log("info", f"wrote {target} with duration {model.shape[-1] / mimi.sample_rate:.1f} sec.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
