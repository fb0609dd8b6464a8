"""Peak memory of ``fullduplex adapt`` on a large random LM checkpoint, against the size of the checkpoint.

Writes a random checkpoint (one tensor at a time, so writing it needs little memory either), then runs the
adaptation in a fresh process and reports that process's peak resident memory (``ru_maxrss``) above its resident
memory once torch is imported. A design that held the model twice would peak at about two checkpoint sizes.

    python benchmarks/adapt_memory.py                          # ~1.6 GB bf16 checkpoint, 32k -> 32k vocabulary
    python benchmarks/adapt_memory.py --dim 4096 --layers 4 --init copy-shared --folder /tmp/big
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fullduplex.checkpoint.lm import to_released  # noqa: E402
from fullduplex.checkpoint.stream import TensorSpec, write_safetensors_streaming  # noqa: E402
from fullduplex.lm import LMConfig, LMModel  # noqa: E402
from fullduplex.text import train_tokenizer  # noqa: E402

CHILD = """
import json, resource, sys, time
import torch
sys.path.insert(0, {root!r})
from fullduplex.checkpoint.adapt import adapt_checkpoint
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
adapt_checkpoint({tokenizer!r}, {output!r}, moshi_weight={weights!r}, init={init!r}, overwrite=True)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"base_kib": base, "peak_kib": peak, "seconds": seconds}}))
"""


def random_checkpoint(config: LMConfig, path: Path, dtype: torch.dtype) -> int:
    with torch.device("meta"):
        model = LMModel(config)
    shapes = {k: tuple(v.shape) for k, v in to_released(model.state_dict()).items()}
    specs = {k: TensorSpec(dtype, s) for k, s in shapes.items()}
    g = torch.Generator().manual_seed(0)
    tensors = ((k, (torch.randn(s, generator=g) * 0.02).to(dtype)) for k, s in shapes.items())
    write_safetensors_streaming(path, specs, tensors, {"format": "pt"})
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--text-card", type=int, default=32000)
    parser.add_argument("--init", default="mean-cov", choices=("normal", "mean-cov", "copy-shared"))
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="adapt-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = LMConfig(dim=args.dim, num_heads=16, num_layers=args.layers, text_card=args.text_card)
    source = folder / "in"
    source.mkdir(exist_ok=True)
    size = random_checkpoint(config, source / "model.safetensors", torch.bfloat16)
    (source / "config.json").write_text(json.dumps(config.to_moshi_dict()))
    # A tokenizer of the same size as the old vocabulary needs a large corpus; a 2k one exercises the same code.
    words = [f"w{i} x{i % 97} y{i % 89} z{i % 83}" for i in range(20000)]
    tokenizer = train_tokenizer(words, folder / "tok", 2000, model_type="bpe").path
    if args.init == "copy-shared":
        (source / "tokenizer_spm_32k_3.model").write_bytes(tokenizer.read_bytes())
    code = CHILD.format(root=str(Path(__file__).resolve().parents[1]), tokenizer=str(tokenizer),
                        output=str(folder / "out"), weights=str(source), init=args.init)
    result = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    above = (result["peak_kib"] - result["base_kib"]) * 1024
    print(f"checkpoint {size / 1e9:.2f} GB bf16 ({args.dim=}, {args.layers=}, text_card {args.text_card} -> 2000, "
          f"--init {args.init}); adapt took {result['seconds']:.1f} s")
    print(f"peak RSS {result['peak_kib'] * 1024 / 1e9:.2f} GB, of which {above / 1e9:.2f} GB above the process after "
          f"importing torch = {above / size:.2f} x the checkpoint (two copies would be 2.0 x)")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
