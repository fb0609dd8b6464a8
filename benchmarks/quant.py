"""Quantized inference on CPU: the generator step in fp32, bf16, int8 and int4, weight memory, and load times.

Random weights (std 0.02; norms 1), greedy, batch 1, the same user codes for every variant. Variants run
interleaved, ``--runs`` times, and the median of all timed steps is reported (the machine may be shared). Then
the "medium" model is written as MLX q8 / q4 / bf16 files and timed loading (median of ``--load-runs``).

    python benchmarks/quant.py                          # medium config, 2 threads
    python benchmarks/quant.py --config small --steps 10 --runs 2 --skip-load

Target (docs/formats.md): int8 at least 2x faster than fp32 with at most 30 % of its weight memory; int4 no
slower than int8.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fullduplex as fd  # noqa: E402
from fullduplex.lm import lm_preset  # noqa: E402
from fullduplex.lm.quantize import weight_bytes  # noqa: E402

VARIANTS = ("fp32", "bf16", "int8", "int4")


def random_model(config: fd.LMConfig) -> fd.LMModel:
    torch.manual_seed(0)
    with torch.device("meta"):
        lm = fd.LMModel(config)
    lm = lm.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in lm.named_parameters():
            p.fill_(1.0) if name.endswith("alpha") else p.normal_(std=0.02)
    for m in lm.modules():
        if hasattr(m, "init_non_persistent_buffers"):
            m.init_non_persistent_buffers()
    return lm.eval()


def time_steps(lm: fd.LMModel, user: torch.Tensor, warmup: int) -> tuple[list[float], torch.Tensor]:
    gen = fd.Generator(lm, temp=0, temp_text=0)
    times, outs = [], []
    with torch.no_grad(), gen.streaming(user.shape[0]):
        for t in range(user.shape[-1]):
            start = time.perf_counter()
            out = gen.step(user[..., t : t + 1])
            if t >= warmup:
                times.append(time.perf_counter() - start)
            if out is not None:
                outs.append(out)
    return times, torch.cat(outs, dim=-1)


def time_load(path: Path, config: fd.LMConfig, runs: int, **kwargs) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        lm = fd.load_lm(path, config=config, **kwargs)
        times.append(time.perf_counter() - start)
        del lm
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="medium", help="LM preset (default: medium)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run and variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load-runs", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = lm_preset(args.config)

    base = random_model(config)
    models = {"fp32": base, "bf16": copy.deepcopy(base).to(torch.bfloat16)}
    for mode in ("int8", "int4"):
        models[mode] = fd.quantize(copy.deepcopy(base), mode)
    memory = {name: weight_bytes(m) for name, m in models.items()}

    user = torch.randint(0, config.card, (1, 8, args.warmup + args.steps), generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {name: [] for name in models}
    tokens: dict[str, torch.Tensor] = {}
    for _ in range(args.runs):
        for name, lm in models.items():
            t, tokens[name] = time_steps(lm, user, args.warmup)
            times[name] += t
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    fastest = {name: min(t) * 1e3 for name, t in times.items()}  # least disturbed by other users of the machine

    print(f"generator step, config {args.config} ({sum(p.numel() for p in base.parameters()) / 1e6:.0f}M parameters), "
          f"CPU {args.threads} threads, batch 1, greedy; median of {args.runs} x {args.steps} steps")
    print(f"{'variant':8} {'ms/step':>9} {'vs fp32':>8} {'min ms':>8} {'weights MB':>11} {'of fp32':>8} {'tokens = fp32':>14}")
    for name in models:
        same = (tokens[name] == tokens["fp32"]).float().mean().item()
        print(f"{name:8} {median[name]:9.1f} {median['fp32'] / median[name]:7.2f}x {fastest[name]:8.1f} "
              f"{memory[name] / 1e6:11.1f} {memory[name] / memory['fp32']:7.1%} {same:13.0%}")
    print("(tokens = fp32: share of greedy tokens equal to fp32's; random weights give flat logits)")
    print(f"targets: int8 >= 2x fp32: {median['fp32'] / median['int8']:.2f}x; int8 weights <= 30 %: "
          f"{memory['int8'] / memory['fp32']:.1%}; int4 no slower than int8: {median['int4']:.1f} vs {median['int8']:.1f} ms")

    if args.skip_load:
        return
    del models
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {fmt: fd.save_mlx(base, Path(tmp) / fmt, fmt) for fmt in ("mlx-q8", "mlx-q4", "mlx-bf16")}
        paths["moshi-bf16"] = fd.save_lm(base, Path(tmp) / "model.safetensors", dtype=torch.bfloat16)
        del base
        gc.collect()
        rows = [
            ("mlx-bf16", "bf16 model", {}), ("mlx-bf16", "fp32 model", {"dtype": torch.float32}),
            ("mlx-q8", "bf16 model", {}), ("mlx-q8", "fp32 model", {"dtype": torch.float32}),
            ("mlx-q8", "int8", {"quantize": "int8"}), ("mlx-q4", "int4 (codes kept)", {"quantize": "int4"}),
            ("moshi-bf16", "bf16 model", {"dtype": torch.bfloat16}),
        ]
        print(f"\nload time, median of {args.load_runs} (file in the page cache after the first)")
        print(f"{'file':11} {'MB':>7} {'into':18} {'seconds':>8}")
        for fmt, into, kwargs in rows:
            seconds = time_load(paths[fmt], config, args.load_runs, **kwargs)
            print(f"{fmt:11} {paths[fmt].stat().st_size / 1e6:7.0f} {into:18} {seconds:8.2f}")


if __name__ == "__main__":
    main()
