"""Mimi speed, ours beside the reference (moshi==0.2.13), same random weights and audio, one process.

Prints milliseconds per 80 ms frame (median of several runs) for streaming encode, streaming decode, and batch
encode / decode, with the ratio reference / ours (> 1: ours is faster).

    python benchmarks/codec_stream.py                 # CPU, 2 threads, batch 1
    python benchmarks/codec_stream.py --device cuda --batch-size 64

Needs the reference installed next to our torch: pip install --no-deps moshi==0.2.13 einops
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fullduplex.checkpoint.mimi import mimi_released_state_dict  # noqa: E402
from fullduplex.codec import Mimi, MimiConfig  # noqa: E402


def build_pair(device: str, num_codebooks: int) -> tuple[torch.nn.Module, Mimi]:
    try:
        from moshi.models import loaders
    except ImportError:
        sys.exit("the reference is not installed: pip install --no-deps moshi==0.2.13 einops")
    torch.manual_seed(0)
    ours = Mimi(MimiConfig(), num_codebooks=num_codebooks)
    ref = loaders.get_mimi(None, MimiConfig().to_moshi_dict(), num_codebooks=num_codebooks)
    ref.load_state_dict(mimi_released_state_dict(ours))
    return ref.to(device).eval(), ours.to(device).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_encode_decode(model, chunks, device: str) -> tuple[list[float], list[float]]:
    """Seconds spent in ``encode`` and in ``decode`` for each chunk (decode gets that chunk's codes)."""
    enc, dec = [], []
    for chunk in chunks:
        sync(device)
        t0 = time.perf_counter()
        codes = model.encode(chunk)
        sync(device)
        t1 = time.perf_counter()
        model.decode(codes)
        sync(device)
        enc.append(t1 - t0)
        dec.append(time.perf_counter() - t1)
    return enc, dec


def time_streaming(model, wav: torch.Tensor, frames: int, warmup: int, device: str) -> tuple[float, float]:
    """Median ms per frame of encode and of decode, one frame per call."""
    with model.streaming(wav.shape[0]):
        enc, dec = time_encode_decode(model, wav[..., : (warmup + frames) * 1920].split(1920, dim=-1), device)
    return statistics.median(enc[warmup:]) * 1e3, statistics.median(dec[warmup:]) * 1e3


def time_batch(model, wav: torch.Tensor, repeats: int, device: str) -> tuple[float, float]:
    """Median ms per frame of a whole-file encode and decode (the first of ``repeats + 1`` runs is warm-up)."""
    frames = wav.shape[-1] // 1920
    enc, dec = time_encode_decode(model, [wav] * (repeats + 1), device)
    return statistics.median(enc[1:]) / frames * 1e3, statistics.median(dec[1:]) / frames * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--frames", type=int, default=50, help="timed streaming frames per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="runs; the figures are medians over all of them")
    parser.add_argument("--batch-seconds", type=float, default=10.0, help="audio length for the batch timing")
    parser.add_argument("--num-codebooks", type=int, default=8)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    ref, ours = build_pair(args.device, args.num_codebooks)
    g = torch.Generator().manual_seed(0)
    n = (args.warmup + args.frames) * 1920
    wav = (0.1 * torch.randn(args.batch_size, 1, max(n, int(args.batch_seconds * 24000)), generator=g)).to(args.device)
    batch_wav = wav[..., : int(args.batch_seconds * 24000) // 1920 * 1920]
    if not args.skip_reference:  # same weights, same audio: the figures compare like with like
        with torch.no_grad():
            probe = batch_wav[:1, :, : 24000 * 2]
            same = torch.equal(ours.encode(probe), ref.encode(probe))
        print(f"parity check (batch encode, 2 s): codes identical to the reference: {same}")
    models = [("ours", ours)] + ([] if args.skip_reference else [("reference", ref)])
    results: dict[str, dict[str, list[float]]] = {name: {"se": [], "sd": [], "be": [], "bd": []} for name, _ in models}
    with torch.no_grad():
        for _ in range(args.runs):
            for name, model in models:
                se, sd = time_streaming(model, wav, args.frames, args.warmup, args.device)
                be, bd = time_batch(model, batch_wav, 2, args.device)
                for key, value in zip(("se", "sd", "be", "bd"), (se, sd, be, bd), strict=True):
                    results[name][key].append(value)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"Mimi codec, {dev}, batch {args.batch_size}, {args.num_codebooks} codebooks, "
          f"median of {args.runs} runs (ms per 80 ms frame; batch: {args.batch_seconds:.0f} s of audio)")
    print(f"{'':24}{'ours':>10}{'reference':>12}{'ref/ours':>10}")
    rows = [("streaming encode", "se"), ("streaming decode", "sd"), ("batch encode", "be"), ("batch decode", "bd")]
    med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    for label, key in rows + [("streaming enc + dec", None), ("batch enc + dec", "b")]:
        if key is None:
            vals = {name: m["se"] + m["sd"] for name, m in med.items()}
        elif key == "b":
            vals = {name: m["be"] + m["bd"] for name, m in med.items()}
        else:
            vals = {name: m[key] for name, m in med.items()}
        ref_v = vals.get("reference")
        ratio = f"{ref_v / vals['ours']:.2f}x" if ref_v else "-"
        ref_s = f"{ref_v:.2f}" if ref_v else "-"
        print(f"{label:24}{vals['ours']:>10.2f}{ref_s:>12}{ratio:>10}")


if __name__ == "__main__":
    main()
