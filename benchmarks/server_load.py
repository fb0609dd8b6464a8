"""Server load: N clients (`fullduplex client` sessions, --fast or real time) against one server, on loopback.

The server runs in its own process (as in production) with random weights of an LM preset and the released Mimi
architecture; the clients run concurrently in this process's event loop. Prints, per N, the frames per
second the server delivered to all clients together, its median model-step time, and the clients' round-trip
latency percentiles (input frame sent -> the server's audio for it received).

    python benchmarks/server_load.py                          # small config, CPU, N = 1, 4, 16, --fast
    python benchmarks/server_load.py --clients 1 4 --realtime
    python benchmarks/server_load.py --device cuda --config moshiko --dtype bfloat16 --clients 1 8 32 64 --realtime
    python benchmarks/server_load.py --config demo --realtime --client-processes 2 --search   # the bundled demo model

``--config demo`` serves the bundled demo model (its own Mimi and tokenizer). ``--search`` raises N one session at
a time from the first ``--clients`` value and reports the largest N that runs in real time: round-trip p99 within
``--max-p99`` ms and no late frame. The ``io ms/sf`` column is the server's CPU time outside the model step (the
sockets, Ogg/Opus and per-session bookkeeping: its event-loop thread, plus the worker processes with
``--io-workers N``) per session-frame.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fullduplex as fd  # noqa: E402
from fullduplex.cli.client import converse, latency_summary  # noqa: E402
from fullduplex.codec import mimi_preset  # noqa: E402
from fullduplex.inference import Engine, Sampling  # noqa: E402
from fullduplex.lm import lm_preset  # noqa: E402
from fullduplex.server.app import Server, ServerConfig, new_model_thread  # noqa: E402
from fullduplex.text import train_tokenizer  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def random_models(config: str, device: str, dtype: torch.dtype, tmp: Path):
    torch.manual_seed(0)
    mimi = fd.Mimi(mimi_preset("mimi")).to(device).eval()
    with torch.device("meta"):
        lm = fd.LMModel(lm_preset(config))
    lm = lm.to_empty(device=device)
    for p in lm.parameters():
        torch.nn.init.normal_(p, std=0.02)
    for m in lm.modules():
        if hasattr(m, "init_non_persistent_buffers"):
            m.init_non_persistent_buffers()
    lm = lm.to(dtype).eval()
    sentences = [f"sentence number {i} says hello to the server load test" for i in range(200)]
    return mimi, lm, SmallVocabulary(train_tokenizer(sentences * 20, tmp / "tok", 300, model_type="bpe"))


class SmallVocabulary:
    """The server's view of a tokenizer (``is_text``, ``piece``) for a random LM whose text ids run past the small
    tokenizer trained here: those ids are simply not text."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def is_text(self, token: int) -> bool:
        return token < self.tokenizer.vocab_size and self.tokenizer.is_text(token)

    def piece(self, token: int) -> str:
        return self.tokenizer.piece(token)


def serve_forever(args: argparse.Namespace) -> None:
    """The server side (run in its own process, as in production: clients do not compete for its interpreter)."""
    import tempfile

    from aiohttp import web

    torch.set_num_threads(args.threads)
    if args.switch_interval is not None:
        import fullduplex.server.app as server_app

        server_app.SWITCH_INTERVAL = args.switch_interval
    model_thread = new_model_thread()
    if args.config == "demo":
        from fullduplex.demo import load_demo

        mimi, lm, tokenizer = model_thread.submit(load_demo, args.device, DTYPES[args.dtype]).result()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            mimi, lm, tokenizer = model_thread.submit(random_models, args.config, args.device, DTYPES[args.dtype], Path(tmp)).result()
    engine = Engine(mimi, lm, Sampling(), max_sessions=max(args.clients))
    server = Server(engine, tokenizer, ServerConfig(port=args.port), model_thread)
    hub = None

    def io_cpu_seconds() -> float:
        """CPU time of the server's work outside the model step: this event-loop thread, plus the I/O workers."""
        total = time.thread_time()
        for worker in hub.workers if hub is not None else ():
            with open(f"/proc/{worker.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    async def report(request: web.Request) -> web.Response:  # step times of the last measurement, then reset
        times = sorted(engine.step_times)
        engine.step_times.clear()
        return web.json_response({"step_p50_ms": statistics.median(times) * 1e3 if times else None,
                                  "loop_cpu_s": io_cpu_seconds()})

    if not args.io_workers:
        app = server.app()
        app.router.add_get("/bench/steps", report)
        web.run_app(app, host="127.0.0.1", port=args.port, print=None)
        return
    from fullduplex.server.workers import Hub

    hub = Hub(server, args.io_workers)

    async def main() -> None:  # the report on the next port, from this (the model's) process
        bench = web.Application()
        bench.router.add_get("/bench/steps", report)
        runner = web.AppRunner(bench)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port + 1).start()
        await hub.run()

    asyncio.run(main())


def start_server(args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, __file__, "--serve-only", "--config", args.config, "--device", args.device,
               "--dtype", args.dtype, "--threads", str(args.threads), "--port", str(args.port),
               "--clients", *map(str, args.clients), "--io-workers", str(args.io_workers)]
    if args.switch_interval is not None:
        command += ["--switch-interval", str(args.switch_interval)]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("the server process ended before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/api/health", timeout=1):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    sys.exit("the server did not start within 600 s")


def server_report(port: int, io_workers: int = 0) -> tuple[float, float]:
    """(median step in ms since the last call, CPU seconds so far of the server's work outside the model step)."""
    port = port + 1 if io_workers else port  # with I/O workers the model process reports on the next port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/steps", timeout=10) as response:
        report = json.loads(response.read())
    value = report["step_p50_ms"]
    return (float("nan") if value is None else value), report["loop_cpu_s"]


async def load(url: str, clients: int, pcm: np.ndarray, fast: bool) -> tuple[float, list[float], int]:
    start = time.perf_counter()
    results = await asyncio.gather(*(converse(url, pcm, fast=fast, timeout=60) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    latency = [x for r in results for x in r.latency]
    late = sum(r.late_frames for r in results)
    return elapsed, latency, late


def load_in_processes(url: str, clients: int, pcm: np.ndarray, fast: bool, processes: int):
    """:func:`load` split over several client processes, so that the clients' own Opus work and event loop are
    not what limits a large N (one Python process cannot drive 64 real-time clients)."""
    import concurrent.futures
    import multiprocessing

    counts = [clients // processes + (i < clients % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(counts), mp_context=context) as pool:
        results = list(pool.map(run_load, [(url, c, pcm, fast) for c in counts if c]))
    return max(r[0] for r in results), [x for r in results for x in r[1]], sum(r[2] for r in results)


def run_load(job: tuple) -> tuple[float, list[float], int]:
    url, clients, pcm, fast = job
    return asyncio.run(load(url, clients, pcm, fast))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="an LM preset with random weights, or 'demo' (the bundled model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=4.0, help="audio each client sends")
    parser.add_argument("--realtime", action="store_true", help="clients send in real time instead of --fast")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--client-processes", type=int, default=1,
                        help="spread the clients over this many processes (for large N on a many-core machine)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="the server's GIL switch interval in seconds (default: the server's own, 0.0005)")
    parser.add_argument("--io-workers", type=int, default=0,
                        help="serve with this many I/O worker processes (fullduplex serve --io-workers); 0: in process")
    parser.add_argument("--search", action="store_true",
                        help="raise N from the first --clients value until a run is not real time; report the largest")
    parser.add_argument("--max-p99", type=float, default=200.0, help="--search: round-trip p99 bound in ms")
    parser.add_argument("--max-late", type=int, default=0, help="--search: late frames allowed (all clients together)")
    parser.add_argument("--max-search", type=int, default=64, help="--search: stop at this N")
    parser.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_only:
        serve_forever(args)
        return
    pcm = (0.1 * np.random.default_rng(0).standard_normal(int(args.seconds * 24000))).astype(np.float32)
    url = f"ws://127.0.0.1:{args.port}/api/chat"
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    mode = "real time" if args.realtime else "--fast"
    print(f"server load: LM {args.config} ({args.dtype}), Mimi, {dev}; clients send {args.seconds:g} s each, {mode};")
    io = f"{args.io_workers} I/O worker processes" if args.io_workers else "sockets and Opus in the model's process"
    print(f"a server with N slots per row; {io}")
    print(f"{'N':>4}{'frames/s':>10}{'step p50 ms':>13}{'rtt p50':>9}{'p95':>8}{'p99':>8}{'late':>7}{'io ms/sf':>12}")
    best = None
    counts = itertools.count(args.clients[0]) if args.search else iter(args.clients)
    for n in counts:
        p99, late = measure(args, n, pcm, url)
        if not args.search:
            continue
        if p99 > args.max_p99 or late > args.max_late:
            break
        best = n
        if n >= args.max_search:
            break
    if args.search:
        late_rule = "no late frame" if args.max_late == 0 else f"at most {args.max_late} late frames"
        print(f"largest N in real time (p99 <= {args.max_p99:g} ms, {late_rule}): {best if best else 'none'}")


def measure(args: argparse.Namespace, n: int, pcm: np.ndarray, url: str) -> tuple[float, int]:
    """Start a server with N slots, run N clients, print one row; (round-trip p99 ms, late frames)."""
    server = start_server(argparse.Namespace(**{**vars(args), "clients": [n]}))
    try:
        asyncio.run(load(url, 1, pcm[:24000], fast=True))  # warm-up: first steps allocate and fill caches
        _, cpu_before = server_report(args.port, args.io_workers)
        processes = min(n, args.client_processes)
        if processes > 1:
            elapsed, latency, late = load_in_processes(url, n, pcm, not args.realtime, processes)
        else:
            elapsed, latency, late = asyncio.run(load(url, n, pcm, fast=not args.realtime))
        frames = n * len(pcm) // 1920
        step, cpu_after = server_report(args.port, args.io_workers)
        summary = latency_summary(latency)
        print(f"{n:>4}{frames / elapsed:>10.1f}{step:>13.1f}{summary['p50']:>9.0f}"
              f"{summary['p95']:>8.0f}{summary['p99']:>8.0f}{late:>7}{(cpu_after - cpu_before) * 1e3 / frames:>12.2f}",
              flush=True)
        return summary["p99"], late
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
