"""`data prepare` throughput: hours of audio prepared per hour of wall time, one conversation per Mimi call
(batch 1) beside batched calls, on the same corpus, models and process.

The corpus is made here: N stereo conversations of random lengths (short by default: 3–8 s) built from the
committed English sample, with alignments, and a tiny tokenizer. Mimi has the released architecture
(``--mimi-config mimi``) with random weights: the same work per second of audio as the real checkpoint. Each run
prepares the whole corpus end to end (read, resample, encode, align, write shards) into a fresh folder; the batch
sizes take turns run by run so that machine load falls on all of them alike. Prints the median of the runs, in
wall time and in this process's CPU time (all threads; far less sensitive to other processes on a shared
machine), and the machine's load average.

    python benchmarks/prepare_throughput.py                                  # CPU, 2 threads
    python benchmarks/prepare_throughput.py --device cuda --conversations 256 --batch-sizes 1 16 64

On a GPU it also prints what 26,000 hours (Human-1's corpus) would take on 8 such GPUs, one part each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sphn
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fullduplex.codec import Mimi, mimi_preset  # noqa: E402
from fullduplex.data.prepare import PrepareOptions, prepare  # noqa: E402
from fullduplex.text import TextTokenizer, train_tokenizer  # noqa: E402
from tests.helpers import speech  # noqa: E402

SENTENCES = ["hello there how are you", "i am fine thank you", "what a lovely morning it is"] * 8
WORDS = ["hello", "there", "how", "are", "you", "fine", "thank", "lovely"]


def make_corpus(folder: Path, count: int, low: float, high: float, seed: int) -> tuple[Path, float]:
    """``count`` stereo conversations of ``low``..``high`` seconds with alignments; the manifest and the seconds."""
    rng = random.Random(seed)
    sample = speech()[0, 0].numpy()  # [S] at 24 kHz, 2.5 s
    lines, total = [], 0.0
    for i in range(count):
        seconds = round(rng.uniform(low, high), 2)
        n = int(seconds * 24000)
        wav = np.zeros((2, n), dtype=np.float32)
        for channel, offset in ((0, 0), (1, 12000)):
            tiled = np.tile(sample, n // sample.shape[0] + 2)
            wav[channel] = 0.8 * tiled[offset : offset + n]
        sphn.write_wav(str(folder / f"c{i}.wav"), wav, 24000)
        words = []
        for k, start in enumerate(np.arange(0.2, seconds - 0.3, 0.45)):
            speaker = "SPEAKER_MAIN" if k % 2 == 0 else "SPEAKER_OTHER"
            words.append([WORDS[k % len(WORDS)], [round(float(start), 3), round(float(start) + 0.3, 3)], speaker])
        (folder / f"c{i}.json").write_text(json.dumps({"alignments": words}))
        lines.append(json.dumps({"path": f"c{i}.wav", "duration": seconds}))
        total += seconds
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=16, help="conversations in the corpus (default: 16)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX"),
                        help="conversation lengths, drawn uniformly (default: 3 8)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="N",
                        help="conversations per Mimi call to compare; the first is the baseline (default: 1 8)")
    parser.add_argument("--runs", type=int, default=3, help="runs per batch size; the median is printed (default: 3)")
    parser.add_argument("--mimi-config", default="mimi", help="Mimi preset: mimi (the released size) or tiny")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--chunk", type=int, nargs=2, metavar=("FRAMES", "CHANNEL_FRAMES"),
                        help="override the Mimi call size of this device (frames per call, channel-frames per call); "
                             "e.g. 250 4000 for the GPU's 20 s calls on a CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.chunk:
        from fullduplex.data import prepare as prepare_module

        names = ("CPU_CHUNK_FRAMES", "CPU_CHUNK_ROWS_FRAMES") if args.device == "cpu" else ("CHUNK_FRAMES", "CHUNK_ROWS_FRAMES")
        for name, value in zip(names, args.chunk, strict=True):
            setattr(prepare_module, name, value)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        root = Path(tmp)
        (root / "corpus").mkdir()
        manifest, audio_seconds = make_corpus(root / "corpus", args.conversations, *args.seconds, seed=0)
        tokenizer = TextTokenizer.load(train_tokenizer(SENTENCES, root / "tok", 48, model_type="bpe").path)
        torch.manual_seed(0)
        mimi = Mimi(mimi_preset(args.mimi_config), num_codebooks=8).to(device).eval()
        print(f"corpus: {args.conversations} conversations, {audio_seconds:.1f} s of stereo audio "
              f"({args.seconds[0]:g}-{args.seconds[1]:g} s each); Mimi {args.mimi_config} (random weights) on "
              f"{device}, {args.threads} CPU threads; load average before: {os.getloadavg()[0]:.2f}", flush=True)
        prepare(manifest, mimi, tokenizer, root / "warmup", PrepareOptions(batch_size=max(args.batch_sizes)),
                quiet=True)  # first calls allocate and pick kernels
        walls: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
        cpus: dict[int, list[float]] = {b: [] for b in args.batch_sizes}  # CPU seconds of this process, all threads
        for run in range(args.runs):
            for b in args.batch_sizes:
                out = root / f"out-{b}-{run}"
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                prepare(manifest, mimi, tokenizer, out, PrepareOptions(batch_size=b), quiet=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                walls[b].append(time.perf_counter() - t0)
                cpus[b].append(time.process_time() - c0)
                print(f"  run {run + 1}, batch {b}: {walls[b][-1]:.2f} s wall, {cpus[b][-1]:.2f} s CPU "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        base = statistics.median(walls[args.batch_sizes[0]])
        base_cpu = statistics.median(cpus[args.batch_sizes[0]])
        for b in args.batch_sizes:
            wall, cpu = statistics.median(walls[b]), statistics.median(cpus[b])
            rate = audio_seconds / wall  # hours of audio per hour of wall time
            print(f"batch {b:>3}: median {wall:7.2f} s wall -> {rate:8.1f} h of audio per hour, x{base / wall:.2f} vs "
                  f"batch {args.batch_sizes[0]}; {cpu:7.2f} s CPU -> {audio_seconds / cpu:6.1f} h of audio per "
                  f"CPU-hour, x{base_cpu / cpu:.2f}")
        if device.type == "cuda":
            best = max(audio_seconds / statistics.median(w) for w in walls.values())
            print(f"26,000 h on 8 such GPUs (one part each, encoding bound): 26000 / (8 x {best:.0f}) = "
                  f"{26000 / (8 * best):.1f} h")


if __name__ == "__main__":
    main()
