"""Batched speech-to-text streams: how many real-time STT streams one machine steps, ours beside the reference.

An STT model (dep_q 0: no Depth Transformer) steps B streams together, one 80 ms frame per step. The figure is
**streams per second of wall time**: B x seconds of audio stepped / seconds taken, i.e. how many streams it would
hold in real time. Both implementations step the same random weights (saved by the reference, loaded by ours)
and the same random user codes, greedy; the text tokens are checked equal. Medians over ``--runs`` runs.

    python benchmarks/stt_streams.py                                # CPU, 2 threads, "small-stt", B = 1 8 32
    python benchmarks/stt_streams.py --device cuda --config stt-1b --dtype bfloat16 --batch-sizes 64 256 512 \\
        --engine                                                    # GPU: + whole engine steps (Mimi encode too)

``--engine`` also runs our batched :class:`~fullduplex.inference.Engine` (what ``fullduplex serve`` steps: Mimi
encode of every stream's frame + the LM step, CUDA graphs) on N sessions and reports the step-time p50/p99 and
whether p99 stays under the 80 ms frame (real time). Configs: ``small-stt`` (51M, the CPU figure) and ``stt-1b``
(the shape of kyutai/stt-1b-en_fr as published in third-party copies of its config.json: dim 2048, 16 layers,
16 heads, n_q 32, text_card 8000, four 6-way extra heads; verify against the released file when it is at hand).

Needs the reference next to our torch: pip install --no-deps moshi==0.2.13 einops
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fullduplex as fd  # noqa: E402
from fullduplex.checkpoint.lm import from_released  # noqa: E402
from fullduplex.checkpoint.state import assign_weights, check_state_dict  # noqa: E402
from fullduplex.lm import LMConfig  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CONFIGS = {
    "small-stt": LMConfig(
        dim=512, num_heads=8, num_layers=8, hidden_scale=4.125, context=375, text_card=8000, card=2048, n_q=32,
        dep_q=0, delays=(6,) + (0,) * 32, kv_repeat=1, extra_heads_num_heads=4, extra_heads_dim=6,
    ),
    "stt-1b": LMConfig(
        dim=2048, num_heads=16, num_layers=16, hidden_scale=4.125, context=750, max_period=100000.0,
        text_card=8000, card=2048, n_q=32, dep_q=0, delays=(6,) + (0,) * 32, extra_heads_num_heads=4,
        extra_heads_dim=6,
    ),
}
FRAME_SECONDS = 0.08


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_all(gen, user: torch.Tensor, warmup: int, device: str) -> tuple[float, list]:
    """Step every frame of ``user`` [B, n_q, T]; (seconds for the frames after ``warmup``, outputs)."""
    outs = []
    with torch.no_grad(), gen.streaming(user.shape[0]):
        for t in range(user.shape[-1]):
            if t == warmup:
                sync(device)
                start = time.perf_counter()
            outs.append(gen.step(user[..., t : t + 1]))
        sync(device)
    return time.perf_counter() - start, outs


def build(config: LMConfig, device: str, dtype: torch.dtype, reference: bool):
    torch.manual_seed(0)
    if not reference:
        with torch.device("meta"):
            ours = fd.LMModel(config)
        ours = ours.to_empty(device=device).to(dtype)
        for p in ours.parameters():
            torch.nn.init.normal_(p, std=0.02)
        for m in ours.modules():
            if hasattr(m, "init_non_persistent_buffers"):
                m.init_non_persistent_buffers()
        return ours.eval(), None
    from moshi.models import loaders

    ref = loaders.get_moshi_lm(None, config.to_moshi_dict(), device=device, dtype=dtype).eval()
    state, unknown = from_released(ref.state_dict().items(), config.dep_q, dtype)
    with torch.device("meta"):
        ours = fd.LMModel(config)
    check_state_dict(ours, state, unknown, "reference", "LM")
    return assign_weights(ours, state, device).eval(), ref


def engine_steps(lm: fd.LMModel, sessions: int, steps: int, device: str) -> list[float]:
    """Seconds per :class:`Engine` step with ``sessions`` talking streams (Mimi encode + LM step)."""
    from fullduplex.codec.config import MimiConfig
    from fullduplex.inference import Engine, Sampling

    torch.manual_seed(0)
    mimi = fd.Mimi(MimiConfig()).to(device).eval()  # the released Mimi's shape, 32 codebooks, random weights
    times = []
    with Engine(mimi, lm, Sampling(temp=0, temp_text=0), max_sessions=sessions) as engine:
        noise = torch.randn(sessions, 1920 * (steps + 5)) * 0.1
        opened = [engine.open() for _ in range(sessions)]
        for k, session in enumerate(opened):
            session.push(noise[k])
        for t in range(steps + 5):
            sync(device)
            start = time.perf_counter()
            engine.step()
            sync(device)
            if t >= 5:
                times.append(time.perf_counter() - start)
            for session in opened:
                session.pop_outputs()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small-stt", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=25, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--engine", action="store_true", help="also time our whole engine step (Mimi encode too)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype, config = DTYPES[args.dtype], CONFIGS[args.config]
    reference_lm = None
    if not args.skip_reference:
        try:
            from moshi.models import lm as reference_lm
        except ImportError:
            sys.exit("the reference is not installed: pip install --no-deps moshi==0.2.13 einops")
    ours, ref = build(config, args.device, dtype, reference_lm is not None)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"STT streams, config {args.config} ({sum(p.numel() for p in ours.parameters()) / 1e6:.0f}M), {dev}, "
          f"{args.dtype}, greedy, {args.steps} timed steps, median of {args.runs} runs")
    print(f"{'B':>5} {'ours streams/s':>15} {'ref streams/s':>14} {'ratio':>7} {'tokens equal':>13}")
    for B in args.batch_sizes:
        user = torch.randint(0, config.card, (B, config.n_q, args.warmup + args.steps),
                             generator=torch.Generator().manual_seed(B)).to(args.device)
        audio = B * args.steps * FRAME_SECONDS
        rates: dict[str, list[float]] = {"ours": [], "ref": []}
        equal = True
        for _ in range(args.runs):  # interleaved, so that load on the machine hits both alike
            seconds, outs = step_all(fd.Generator(ours, temp=0, temp_text=0), user, args.warmup, args.device)
            rates["ours"].append(audio / seconds)
            if ref is not None:
                seconds, ref_outs = step_all(reference_lm.LMGen(ref, use_sampling=False), user, args.warmup, args.device)
                rates["ref"].append(audio / seconds)
                equal &= all((a is None and b is None) or torch.equal(a, b) for a, b in zip(outs, ref_outs, strict=True))
        ours_rate = statistics.median(rates["ours"])
        if ref is not None:
            ref_rate = statistics.median(rates["ref"])
            print(f"{B:>5} {ours_rate:>15.1f} {ref_rate:>14.1f} {ours_rate / ref_rate:>6.2f}x {str(equal):>13}")
        else:
            print(f"{B:>5} {ours_rate:>15.1f} {'-':>14} {'-':>7} {'-':>13}")
    if args.engine:
        print("\nwhole engine step (Mimi encode of every stream + LM step), ours:")
        print(f"{'streams':>8} {'p50 ms':>8} {'p99 ms':>8} {'real time (p99 < 80 ms)':>24}")
        for B in args.batch_sizes:
            times = sorted(engine_steps(ours, B, args.steps, args.device))
            p50, p99 = statistics.median(times) * 1e3, times[min(len(times) - 1, int(0.99 * len(times)))] * 1e3
            print(f"{B:>8} {p50:>8.1f} {p99:>8.1f} {str(p99 < 80):>24}")
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()


if __name__ == "__main__":
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    main()
