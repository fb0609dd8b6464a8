"""LM step latency (temporal + depth + sampling, one 80 ms frame), ours beside the reference (moshi==0.2.13).

Same random weights (saved by the reference in the released format, loaded by ours), same user codes, greedy
and sampled, batch B. Prints the median ms per step and the ratio reference / ours, and checks the tokens agree.

    python benchmarks/lm_step.py                              # CPU, 2 threads, "small" config, fp32, batch 1
    python benchmarks/lm_step.py --device cuda --config moshiko --dtype bfloat16 --batch-size 32

Needs the reference next to our torch: pip install --no-deps moshi==0.2.13 einops
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fullduplex as fd  # noqa: E402
from fullduplex.checkpoint.lm import from_released  # noqa: E402
from fullduplex.checkpoint.state import assign_weights, check_state_dict  # noqa: E402
from fullduplex.lm import lm_preset  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(gen, user: torch.Tensor, warmup: int, device: str) -> tuple[list[float], list[torch.Tensor | None]]:
    times, outs = [], []
    with gen.streaming(user.shape[0]):
        for t in range(user.shape[-1]):
            sync(device)
            start = time.perf_counter()
            outs.append(gen.step(user[..., t : t + 1]))
            sync(device)
            if t >= warmup:
                times.append(time.perf_counter() - start)
    return times, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="LM preset (small, moshiko, tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--via-file", action="store_true", help="hand the weights over through a safetensors file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    config = lm_preset(args.config)
    torch.manual_seed(0)
    reference = None
    if not args.skip_reference:
        try:
            from moshi.models import lm as reference_lm
            from moshi.models import loaders
        except ImportError:
            sys.exit("the reference is not installed: pip install --no-deps moshi==0.2.13 einops")
        reference = loaders.get_moshi_lm(None, config.to_moshi_dict(), device=args.device, dtype=dtype).eval()
        if args.via_file:  # the full path: released-format file, then our loader
            with tempfile.TemporaryDirectory() as tmp:
                from safetensors.torch import save_file

                path = Path(tmp) / "model.safetensors"
                save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
                ours = fd.load_lm(path, config=config, device=args.device, dtype=dtype)
        else:  # the same key conversion in memory (a 7B file would take minutes to write)
            state, unknown = from_released(reference.state_dict().items(), config.dep_q, dtype)
            with torch.device("meta"):
                ours = fd.LMModel(config)
            check_state_dict(ours, state, unknown, "reference", "LM")
            ours = assign_weights(ours, state, args.device)
    else:
        with torch.device("meta"):
            ours = fd.LMModel(config)
        ours = ours.to_empty(device=args.device).to(dtype)
        for p in ours.parameters():
            torch.nn.init.normal_(p, std=0.02)
        for m in ours.modules():
            if hasattr(m, "init_non_persistent_buffers"):
                m.init_non_persistent_buffers()
        ours.eval()
    steps = args.warmup + args.steps
    user = torch.randint(0, config.card, (args.batch_size, 8, steps), generator=torch.Generator().manual_seed(1)).to(args.device)
    results: dict[str, list[float]] = {"ours": [], "reference": []}
    agree = True
    with torch.no_grad():
        for _ in range(args.runs):
            gen = fd.Generator(ours, temp=0, temp_text=0)
            times, outs = run(gen, user, args.warmup, args.device)
            results["ours"] += times
            if reference is not None:
                ref_gen = reference_lm.LMGen(reference, use_sampling=False)
                ref_times, ref_outs = run(ref_gen, user, args.warmup, args.device)
                results["reference"] += ref_times
                agree &= all((a is None and b is None) or torch.equal(a, b) for a, b in zip(outs, ref_outs, strict=True))
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    ours_ms = statistics.median(results["ours"]) * 1e3
    print(f"LM step, config {args.config}, {dev}, {args.dtype}, batch {args.batch_size}, greedy, "
          f"median over {args.runs} x {args.steps} steps")
    print(f"ours       {ours_ms:8.2f} ms per step")
    if reference is not None:
        ref_ms = statistics.median(results["reference"]) * 1e3
        print(f"reference  {ref_ms:8.2f} ms per step")
        print(f"ratio      {ref_ms / ours_ms:8.2f}x (reference / ours); tokens identical: {agree}")
        print(f"sessions per 80 ms frame at this batch: ours {80 / ours_ms * args.batch_size:.1f}, "
              f"reference {80 / ref_ms * args.batch_size:.1f}")


if __name__ == "__main__":
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    main()
