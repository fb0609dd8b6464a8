"""Time from connection to the first model audio with and without the prompt cache, and memory per cached persona.

A session opens with a persona (a voice of --voice-frames frames and a role prompt of T text tokens, for each T in
--text-tokens), while another session talks in the same batch. Without the cache (the reference's behaviour) the
prompt runs in the session's slot, one frame per engine step, before the handshake; with it (a persona seen
before) the state is copied into the slot when the user's first frame arrives. Measured: wall time from `open` to
the first frame of model audio (the engine steps back to back, as fast as the model runs: a server that also
serves real-time sessions steps every 80 ms, so there the uncached start takes at least frames x 80 ms, also
printed), and the bytes of one cached state (measured; and the same formula for the 7B moshiko/PersonaPlex size).

    python benchmarks/persona.py                           # CPU, small config (dep_q = 16), T = 10 50 150
    python benchmarks/persona.py --device cuda --config personaplex --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fullduplex as fd  # noqa: E402
from fullduplex.inference import Engine, Sampling  # noqa: E402
from fullduplex.inference.persona import Persona, PersonaCache  # noqa: E402
from fullduplex.inference.prompt import SILENCE_FRAMES, Voice, build_schedule  # noqa: E402
from fullduplex.lm import lm_preset  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def random_models(config: fd.LMConfig, device: str, dtype: torch.dtype) -> tuple[fd.Mimi, fd.LMModel]:
    torch.manual_seed(0)
    with torch.device("meta"):
        lm, mimi = fd.LMModel(config), fd.Mimi()
    out = []
    for model, model_dtype in ((mimi, torch.float32), (lm, dtype)):
        model = model.to_empty(device=device).to(model_dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(std=0.02)
        for m in model.modules():
            if hasattr(m, "init_non_persistent_buffers"):
                m.init_non_persistent_buffers()
        out.append(model.eval())
    return out[0], out[1]


def first_audio(engine: Engine, persona: Persona, frame: torch.Tensor) -> tuple[float, int]:
    """(seconds from open to the first model audio, engine steps taken) for a new session with ``persona``."""
    start, steps = time.perf_counter(), 0
    session = engine.open(persona)
    while not session.live:  # the prompt, in the session's slot (no handshake before it ends)
        engine.step()
        steps += 1
    session.push(frame)
    while True:
        engine.step()
        steps += 1
        if any(out.text is not None for out in session.pop_outputs()):
            seconds = time.perf_counter() - start
            engine.close(session)
            return seconds, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="LM preset (small, personaplex, tiny); dep_q is set to 16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--voice-frames", type=int, default=50, help="voice prompt frames (released voices: ~50)")
    parser.add_argument("--text-tokens", type=int, nargs="+", default=[10, 50, 150])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = replace(lm_preset(args.config), dep_q=16)
    mimi, lm = random_models(config, args.device, DTYPES[args.dtype])
    print(f"{args.config} LM (dep_q 16, {sum(p.numel() for p in lm.parameters()) / 1e6:.1f} M parameters) on "
          f"{args.device}, {args.dtype}; voice {args.voice_frames} frames; one other session talking in the batch")
    g = torch.Generator().manual_seed(0)
    voice = Voice("bench", codes=torch.randint(0, config.card, (8, args.voice_frames), generator=g))
    frame = torch.randn(mimi.frame_size, generator=g) * 0.1
    talk = torch.randn(mimi.frame_size * 4000, generator=g) * 0.1
    print(f"{'text tokens':>11} {'frames':>6} {'uncached s':>10} {'(at 80 ms/step)':>15} {'cached s':>8} {'state MiB':>9}")
    for tokens in args.text_tokens:
        text = torch.randint(4, config.text_card, (tokens,), generator=g).tolist()
        schedule = build_schedule(config, voice, text)
        persona = Persona.from_schedule(("bench", tokens), schedule, config)
        with Engine(mimi, lm, Sampling(seed=1), max_sessions=2, personas=PersonaCache()) as engine:
            other = engine.open()
            other.push(talk)
            for _ in range(3):  # warm up
                engine.step()
            uncached, _ = first_audio(engine, persona, frame)  # a miss: the prompt runs, then it is cached
            cached, steps = first_audio(engine, persona, frame)  # a hit
            state = engine.personas.get(persona.key)
        print(f"{tokens:>11} {len(schedule):>6} {uncached:>10.3f} {len(schedule) * 0.08:>15.2f} {cached:>8.3f} "
              f"{state.nbytes / 2**20:>9.2f}")
    big = lm_preset("personaplex")
    per_frame = big.num_layers * 2 * big.dim * 2  # bf16 keys and values of one frame, all layers
    frames = args.voice_frames + 2 * SILENCE_FRAMES + 100 - 1
    print(f"7B (moshiko / PersonaPlex), bf16: {per_frame / 2**10:.0f} KiB per prompt frame; a 50-frame voice and a "
          f"100-token role: {frames * per_frame / 2**20:.0f} MiB per cached persona")


if __name__ == "__main__":
    main()
