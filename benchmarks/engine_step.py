"""Engine step time versus concurrent sessions: how many real-time conversations one machine holds.

One engine step is what the server runs every 80 ms for all its sessions together: Mimi encode of every
slot's input frame, one LM step (temporal + depth + sampling), Mimi decode, and the hand-over of each slot's
audio and text to its session. This benchmark fills N slots with talking sessions (speech input) and reports the
step-time percentiles per N, the peak device memory, and whether p99 stays under the 80 ms frame. Random weights
(the numbers do not depend on them); the reference server holds one conversation at a time, so it is not run.

    python benchmarks/engine_step.py                                        # CPU, small config, N = 1 4 16
    python benchmarks/engine_step.py --device cuda --config moshiko --dtype bfloat16 --sessions 1 16 32 48 64

Idle slots cost nothing: ``--slots M ...`` runs each N on engines of M slots (default: N slots), e.g. 4 sessions
on a 4-slot and on a 64-slot engine, each ``--repeats`` times, interleaved (the table shows the median run, by p50; peak memory is the largest case's):

    python benchmarks/engine_step.py --sessions 4 --slots 4 64 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fullduplex as fd  # noqa: E402
from fullduplex.inference import Engine, Sampling  # noqa: E402
from fullduplex.lm import lm_preset  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def random_models(config_name: str, device: str, dtype: torch.dtype) -> tuple[fd.Mimi, fd.LMModel]:
    torch.manual_seed(0)
    with torch.device("meta"):
        lm = fd.LMModel(lm_preset(config_name))
        mimi = fd.Mimi()
    models = []
    for model, model_dtype in ((mimi, torch.float32), (lm, dtype)):
        model = model.to_empty(device=device).to(model_dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(std=0.02)
        for m in model.modules():
            if hasattr(m, "init_non_persistent_buffers"):
                m.init_non_persistent_buffers()
        models.append(model.eval())
    return models[0], models[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="LM preset (small, moshiko, tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="LM dtype (Mimi runs in fp32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16], help="numbers of sessions to try")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per N")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--slots", type=int, nargs="+", help="engine slots (max_sessions) to try per N (default: N)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; the median run (by p50) is shown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mimi, lm = random_models(args.config, args.device, DTYPES[args.dtype])
    on_gpu = args.device.startswith("cuda")
    dev = torch.cuda.get_device_name() if on_gpu else f"CPU, {args.threads} threads"
    print(f"Engine step, LM config {args.config} ({args.dtype}), Mimi fp32, {dev}, sampled (defaults), {args.steps} steps per N")
    print(f"{'N':>5} {'slots':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'peak GiB':>9}  real time (p99 < 80 ms)")
    frame = mimi.frame_size
    audio = torch.randn(frame * (args.warmup + args.steps)) * 0.1

    def run(n: int, slots: int) -> list[float]:
        with Engine(mimi, lm, Sampling(), max_sessions=slots) as engine:
            sessions = [engine.open() for _ in range(n)]
            times = []
            for t in range(args.warmup + args.steps):
                for s in sessions:
                    s.push(audio[t * frame : (t + 1) * frame])
                start = time.perf_counter()
                engine.step()
                elapsed = time.perf_counter() - start
                for s in sessions:
                    s.pop_outputs()
                if t >= args.warmup:
                    times.append(elapsed * 1e3)
        return times

    for n in args.sessions:
        cases = [slots for slots in args.slots or [n] if slots >= n]
        for slots in sorted(set(args.slots or [n]) - set(cases)):
            print(f"{n:>5} {slots:>6}  skipped: fewer slots than sessions")
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        runs: dict[int, list[list[float]]] = {slots: [] for slots in cases}
        try:
            for _ in range(args.repeats):  # cases interleaved, so that a machine's changing load hits them alike
                for slots in cases:
                    runs[slots].append(run(n, slots))
        except torch.OutOfMemoryError:
            print(f"{n:>5}  out of device memory")
            break
        peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
        for slots in cases:
            times = sorted(runs[slots], key=statistics.median)[len(runs[slots]) // 2]
            p99 = percentile(times, 99)
            print(f"{n:>5} {slots:>6} {statistics.median(times):8.2f} {percentile(times, 95):8.2f} {p99:8.2f} "
                  f"{max(times):8.2f} {peak:9.1f}  {'yes' if p99 < 80 else 'no'}", flush=True)


if __name__ == "__main__":
    main()
