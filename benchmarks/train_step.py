"""Training throughput: tokens per second and peak memory of one optimiser step (forward, loss, backward, AdamW).

Tokens are counted as moshi-finetune counts them: frames x (1 + dep_q) = the text token plus the model's 8
codebooks per frame, the tokens the loss predicts (its README's ~12k tokens/s on one H100 is this count). The
frames x 17 count of every input stream is printed too. Random weights, random codes; the same code path as
`fullduplex train` (recipe helpers, loss, LoRA wrapper, gradient checkpointing, bf16 autocast on CUDA).

    python benchmarks/train_step.py                         # CPU, 2 threads, "small" config, fp32, 10 s windows
    python benchmarks/train_step.py --device cuda --config moshiko --lora --segment-seconds 100 \
        --gradient-checkpointing --model-dtype bfloat16     # moshi-finetune's README setting (batch 1 here)
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fullduplex as fd  # noqa: E402
from fullduplex.lm import lm_preset  # noqa: E402
from fullduplex.train.config import LoraConfig, LossConfig, OptimConfig, TrainConfig  # noqa: E402
from fullduplex.train.lora import apply_lora  # noqa: E402
from fullduplex.train.loss import combine, loss_parts, target_weights  # noqa: E402
from fullduplex.train.recipe import enable_gradient_checkpointing, param_groups  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", default="small", help="LM preset (small, moshiko, tiny)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--segment-seconds", type=float, default=10.0)
    p.add_argument("--lora", action="store_true", help="LoRA on every linear layer (rank 128, scaling 2)")
    p.add_argument("--lora-rank", type=int, default=128)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="base weights (bfloat16 only with --lora: frozen weights)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs)")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = lm_preset(args.config)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.model_dtype == "bfloat16" else torch.float32
    with torch.device(device):
        model = fd.LMModel(config).to(dtype).train()
    cfg = TrainConfig(lora=LoraConfig(enabled=args.lora, rank=args.lora_rank), optim=OptimConfig(), loss=LossConfig())
    if args.lora:
        apply_lora(model, args.lora_rank, 2.0, ["*"])
    elif dtype != torch.float32:
        raise SystemExit("--model-dtype bfloat16 needs --lora (full fine-tuning keeps fp32 master weights)")
    if args.gradient_checkpointing:
        enable_gradient_checkpointing([*model.transformer.layers, *model.depformer.layers])
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.95))
    frames = round(args.segment_seconds * 12.5)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, config.card, (args.batch_size, config.num_streams, frames), generator=g)
    codes[:, 0] = torch.randint(0, config.text_card, (args.batch_size, frames), generator=g)
    codes = codes.to(device)
    weights = target_weights(codes, config, cfg.loss)
    totals = weights.text.sum(), weights.audio.sum()
    bf16 = device.type == "cuda"

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(codes)
        loss = combine(loss_parts(out, codes, weights, config), *totals, cfg.loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    predicted = args.batch_size * frames * (1 + config.dep_q)
    all_streams = args.batch_size * frames * config.num_streams
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA allocated)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"
    print(f"config {args.config}, device {device}, batch {args.batch_size} x {frames} frames "
          f"({args.segment_seconds:g} s), lora {args.lora}, grad ckpt {args.gradient_checkpointing}, "
          f"weights {args.model_dtype}, compute {'bf16' if bf16 else 'fp32'}, trainable {trainable / 1e6:.1f} M params")
    print(f"step: median {median * 1000:.0f} ms over {args.steps} (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")
    print(f"tokens/s (frames x {1 + config.dep_q}, moshi-finetune's count): {predicted / median:,.0f}")
    print(f"tokens/s (frames x {config.num_streams}, every stream): {all_streams / median:,.0f}")
    print(f"frames/s: {args.batch_size * frames / median:,.1f}; peak memory: {peak}")


if __name__ == "__main__":
    main()
