"""The LM's KV cache: memory per session (ring vs paged, by KV dtype), quantized-KV agreement, and step time.

1. Memory per session after ``--frames`` frames (750 = 60 s), for the 7B shape (32 layers, 32 heads x 128, bf16,
   context 3000) from the allocator's accounting (a pool built on the meta device: no memory used), then checked
   by measurement: the "small" LM's Temporal Transformer, given the 7B's context, steps ``--frames`` frames on CPU
   and the bytes of the pages a session holds are counted from the pool's tensors.
2. Agreement of ``--kv-dtype`` int8 / fp8 with the float cache on the small random model over ``--steps`` steps:
   teacher-forced (both read the same random tokens; top-1 agreement and mean KL(float || quantized) of text and
   audio logits) and stepped (greedy generation; share of equal tokens).
3. Generator step time, small config, CPU: ring (today's cache) vs paged vs paged int8 / fp8, interleaved runs.
4. (``--attention``) One decode step of attention, 4 heads x 64, 250 keys: SDPA on a contiguous cache, our
   gather + SDPA from a paged pool, FlexAttention eager and compiled (torch.compile: needs a C++ compiler).

    python benchmarks/kv_cache.py                      # all three, 2 threads
    python benchmarks/kv_cache.py --skip-time --steps 50

Random weights give flat logits, so top-1 agreement is a harsh test; timings are taken on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fullduplex as fd  # noqa: E402
from fullduplex.lm import lm_preset  # noqa: E402
from fullduplex.nn.paged_kv import PagedKV, parse_kv_dtype  # noqa: E402

GIB = 1024**3
VARIANTS = (("ring", "auto"), ("paged", "auto"), ("paged", "int8"), ("paged", "fp8"))


def random_model(config: fd.LMConfig) -> fd.LMModel:
    torch.manual_seed(0)
    lm = fd.LMModel(config)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            p.fill_(1.0) if name.endswith("alpha") else p.normal_(std=0.02)
    return lm.eval()


def ring_bytes(config: fd.LMConfig, itemsize: int) -> int:
    """Today's per-session ring: keys and values for the whole context, every layer."""
    return 2 * config.num_layers * config.dim * config.context * itemsize


def memory(frames: int) -> None:
    big = lm_preset("moshiko")
    print(f"1. KV memory per session after {frames} frames ({frames * 0.08:.0f} s)")
    print(f"   7B shape ({big.num_layers} layers, {big.num_heads} x {big.dim // big.num_heads}, context {big.context}), "
          "allocator accounting:")
    before = ring_bytes(big, 2)
    print(f"   {'ring (today), bf16':26} {before / GIB:7.3f} GiB")
    for dtype in ("auto", "int8", "fp8"):
        kv = PagedKV.create(1, big.num_layers, big.num_heads, big.dim // big.num_heads, big.context,
                            torch.device("meta"), torch.bfloat16, pages=1, stored=parse_kv_dtype(dtype))
        after = kv.pages_for(frames) * kv.page_bytes
        name = f"paged {'bf16' if dtype == 'auto' else dtype}, {kv.pages_for(frames)} pages"
        print(f"   {name:26} {after / GIB:7.3f} GiB  {after / before:6.1%} of today")
    small = dataclasses.replace(lm_preset("small"), context=big.context)
    lm = random_model(small)
    x = torch.randn(2, frames, small.dim, generator=torch.Generator().manual_seed(1))
    print(f"   measured: the small LM's Temporal Transformer with context {small.context}, {frames} frames stepped "
          "on CPU (fp32), batch 2 with item 1 idle:")
    expect = ring_bytes(small, 4)
    for layout, dtype in VARIANTS:
        lm.transformer.configure_kv(layout, pages=0, dtype=dtype)
        with torch.no_grad(), lm.transformer.streaming(2):
            for t in range(frames):
                if t == 1 and layout == "paged":  # an idle item gives its pages back to the pool
                    lm.transformer.state.set_active(torch.tensor([True, False]))
                lm.transformer(x[:, t : t + 1])
            kv = lm.transformer.state
            if layout == "ring":
                held = sum(layer.self_attn.state.keys.nbytes + layer.self_attn.state.values.nbytes
                           for layer in lm.transformer.layers) // 2
            else:  # bytes of the distinct pool pages item 0 holds, counted from the pool's tensors
                pages = kv.table[0][kv.table[0] >= 0].unique().numel()
                slot_bytes = sum(t.nbytes for s in kv.stores for t in s.tensors()) // ((kv.pages + 1) * kv.page_size)
                held = pages * kv.page_size * slot_bytes
                assert held == kv.item_bytes(0) and kv.item_pages(1) == 0
        print(f"   {layout + ' ' + dtype:26} {held / 2**20:7.2f} MiB  {held / expect:6.1%} of the fp32 ring")


def logits(lm: fd.LMModel, delayed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stepped teacher forcing: text [T, Vt] and audio [T, dep_q, card] logits for delayed tokens [1, K, T + 1]."""
    cfg = lm.config
    texts, audios = [], []
    with torch.no_grad(), lm.transformer.streaming(1):
        for t in range(delayed.shape[-1] - 1):
            hidden, text = lm.temporal(delayed[..., t : t + 1])
            target = delayed[..., t + 1]
            steps = [lm.depth_input(k, hidden[:, 0], target[:, k]) for k in range(cfg.dep_q)]
            depth = lm.depformer(torch.stack(steps, dim=1))
            audios.append(torch.stack([lm.linears[k](depth[:, k]) for k in range(cfg.dep_q)], dim=1)[0])
            texts.append(text[0, 0])
    return torch.stack(texts).float(), torch.stack(audios).float()


def agreement(steps: int) -> None:
    config = lm_preset("small")
    lm = random_model(config)
    g = torch.Generator().manual_seed(2)
    delayed = torch.randint(0, config.card, (1, config.num_streams, steps + 1), generator=g)
    delayed[:, 0] = torch.randint(0, config.text_card, (1, steps + 1), generator=g)
    user = torch.randint(0, config.card, (1, 8, steps), generator=g)
    results = {}
    for dtype in ("auto", "int8", "fp8"):
        lm.transformer.configure_kv("paged", dtype=dtype)
        gen = fd.Generator(lm, temp=0, temp_text=0)
        with torch.no_grad(), gen.streaming(1):
            tokens = torch.cat([o for t in range(steps) if (o := gen.step(user[..., t : t + 1])) is not None], -1)
        results[dtype] = (*logits(lm, delayed), tokens)
    print(f"\n2. --kv-dtype agreement with the float cache, small config, random weights, {steps} steps")
    print(f"   {'kv dtype':9} {'text top-1':>10} {'text KL':>9} {'audio top-1':>11} {'audio KL':>9} {'greedy tokens':>14}")
    text0, audio0, tokens0 = results["auto"]
    for dtype in ("int8", "fp8"):
        text, audio, tokens = results[dtype]
        row = []
        for ref, got in ((text0, text), (audio0, audio)):
            top1 = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
            kl = torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                            reduction="none").sum(-1).mean().item()
            row += [top1, kl]
        same = (tokens == tokens0).float().mean().item()
        print(f"   {dtype:9} {row[0]:10.1%} {row[1]:9.2e} {row[2]:11.1%} {row[3]:9.2e} {same:14.1%}")


def step_time(steps: int, runs: int) -> None:
    config = lm_preset("small")
    lm = random_model(config)
    user = torch.randint(0, config.card, (1, 8, steps + 5), generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {f"{layout} {dtype}": [] for layout, dtype in VARIANTS}
    for _ in range(runs):
        for layout, dtype in VARIANTS:
            lm.transformer.configure_kv(layout, dtype=dtype)
            gen = fd.Generator(lm, temp=0, temp_text=0)
            with torch.no_grad(), gen.streaming(1):
                for t in range(user.shape[-1]):
                    start = time.perf_counter()
                    gen.step(user[..., t : t + 1])
                    if t >= 5:
                        times[f"{layout} {dtype}"].append(time.perf_counter() - start)
    print(f"\n3. generator step, small config, CPU {torch.get_num_threads()} threads, batch 1, greedy; "
          f"median (min) of {runs} x {steps} steps, runs interleaved")
    base = statistics.median(times["ring auto"])
    for name, t in times.items():
        print(f"   {name:12} {statistics.median(t) * 1e3:7.2f} ms ({min(t) * 1e3:.2f})  {statistics.median(t) / base:6.2f}x ring")


def _median_us(fn, n: int = 200) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def attention(batches: tuple[int, ...] = (1, 8), H: int = 4, D: int = 64, N: int = 250, page: int = 16) -> None:  # noqa: N803
    import warnings

    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    print(f"\n4. one decode step of attention, {H} heads x {D}, {N} keys, pages of {page}; median us")
    for B in batches:
        print(f"   B={B}: " + _attention_at(B, H, D, N, page))


def _attention_at(B: int, H: int, D: int, N: int, page: int) -> str:  # noqa: N803
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, H, N, D), torch.randn(B, H, N, D)
    mask = torch.ones(B, 1, 1, N, dtype=torch.bool)
    pages = -(-N // page)
    table = torch.randperm(B * pages).view(B, pages)
    rows = (table[:, :, None] * page + torch.arange(page)).view(B, -1)[:, :N].reshape(-1)
    pool_k, pool_v = torch.randn(H, B * pages * page, D), torch.randn(H, B * pages * page, D)

    def gathered():
        keys = pool_k.index_select(1, rows).view(H, B, N, D)
        values = pool_v.index_select(1, rows).view(H, B, N, D)
        return F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask.transpose(0, 1))

    block_mask = create_block_mask(lambda b, h, qi, kv: kv < N, B, None, 1, N, device="cpu", BLOCK_SIZE=page)
    compiled = torch.compile(flex_attention, dynamic=False)
    start = time.perf_counter()
    compiled(q, k, v, block_mask=block_mask)
    compile_s = time.perf_counter() - start
    return (f"SDPA contiguous {_median_us(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)):.0f}, "
            f"gather + SDPA {_median_us(gathered):.0f}, "
            f"flex eager {_median_us(lambda: flex_attention(q, k, v, block_mask=block_mask), 50):.0f}, "
            f"flex compiled {_median_us(lambda: compiled(q, k, v, block_mask=block_mask)):.0f} "
            f"(compiled in {compile_s:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=750, help="conversation length for the memory figures")
    parser.add_argument("--steps", type=int, default=100, help="steps for the agreement and timing figures")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--attention", action="store_true", help="also time attention alone (SDPA vs FlexAttention)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_memory:
        memory(args.frames)
    if not args.skip_agreement:
        agreement(args.steps)
    if not args.skip_time:
        step_time(args.steps, args.runs)
    if args.attention:
        attention()


if __name__ == "__main__":
    main()
