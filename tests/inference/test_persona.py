"""The prompt cache: a cached persona starts bit-identically to running its prompt in full (greedy and seeded),
personas in one batch are independent, released .pt voices replay to the same state as their audio, the LRU
keeps its byte bound; voice loudness matches pyloudnorm."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import fullduplex as fd
from fullduplex.codec import mimi_preset
from fullduplex.codec.loudness import integrated_loudness, normalize_loudness
from fullduplex.errors import FullduplexError
from fullduplex.inference.persona import Persona, PersonaCache, prefill, restore
from fullduplex.inference.prompt import FillerCodes, Voice, build_schedule, prompt_step, run_prompt
from fullduplex.inference.voice import encode_voice, load_voice, released_voice, save_released_voice, save_voice
from fullduplex.lm import lm_preset
from tests.helpers import speech

TINY = lm_preset("tiny")
FILLER = FillerCodes(silence=(1, 2, 3, 4, 5, 6, 7, 8), sine=(9, 10, 11, 12, 13, 14, 15, 16))


@pytest.fixture(scope="module", params=["dep8", "dep16"])
def lm_both(request):
    torch.manual_seed(0)
    return fd.LMModel(TINY if request.param == "dep8" else replace(TINY, dep_q=16)).eval()


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return fd.LMModel(replace(TINY, dep_q=16)).eval()


def persona(config, seed: int, voice_frames: int = 4, text: int = 5) -> Persona:
    g = torch.Generator().manual_seed(seed)
    voice = Voice(f"v{seed}", codes=torch.randint(0, config.card, (8, voice_frames), generator=g))
    tokens = torch.randint(4, config.text_card, (text,), generator=g).tolist()
    return Persona.from_schedule(("v", seed), build_schedule(config, voice, tokens, FILLER, silence_frames=2), config)


def frames(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, TINY.card, (B, 8, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sampled", [False, True])
def test_cached_start_is_bit_identical_to_the_full_prompt(lm_both, sampled):
    lm = lm_both
    p = persona(lm.config, 1)
    P, T = p.frames, p.frames + 12
    talk, other = frames(1, T, 2), frames(1, T, 3)
    settings = dict(seed=11) if sampled else dict(temp=0, temp_text=0)
    first = torch.tensor([True, False])

    def run(cached):
        gen = fd.Generator(lm, **settings)
        outs = []
        with gen.streaming(2):
            for t in range(T):
                if t < P - 1 and not cached:
                    outs.append(prompt_step(gen, p.inputs, t, first, torch.cat([other, other])[..., t : t + 1]))
                elif t < P - 1:  # slot 0 runs something else meanwhile; slot 1 talks throughout
                    outs.append(gen.step(torch.cat([frames(1, 1, 100 + t), other[..., t : t + 1]])))
                elif t == P - 1:
                    if cached:
                        restore(gen, 0, state)
                    outs.append(prompt_step(gen, p.inputs, t, first, torch.cat([other, other])[..., t : t + 1]))
                else:
                    outs.append(gen.step(torch.cat([talk[..., t - P : t - P + 1], other[..., t : t + 1]])))
        return outs

    state = prefill(fd.Generator(lm, temp=0, temp_text=0), p)
    assert state.steps == P - 1 and state.items["lm.transformer"]["positions"].tolist() == list(range(P - 1))
    full, cached = run(False), run(True)
    for t in range(P, T):
        assert torch.equal(full[t][0], cached[t][0]), t
    for t in range(1, T):
        assert torch.equal(full[t][1], cached[t][1]), t
    assert len({tuple(full[t][0].flatten().tolist()) for t in range(P, T)}) > 3  # a conversation, not a constant


def test_personas_in_one_batch_are_independent(lm):
    a, b = persona(lm.config, 4, voice_frames=3, text=2), persona(lm.config, 5, voice_frames=6, text=7)
    states = [prefill(fd.Generator(lm, temp=0, temp_text=0), p) for p in (a, b)]
    talk = frames(2, 10, 6)
    gen = fd.Generator(lm, temp=0, temp_text=0)
    with gen.streaming(2):
        for t in range(7):  # the ring is somewhere else by now, and has wrapped (context 12)
            gen.step(frames(2, 1, 200 + t))
        for item, state in enumerate(states):
            restore(gen, item, state)
        user = torch.stack([p.inputs.user[:, p.frames - 1] for p in (a, b)])[..., None]
        force = torch.stack([p.inputs.force[:, p.frames - 1] for p in (a, b)])[..., None]
        mask = torch.stack([p.inputs.force_mask[:, p.frames - 1] for p in (a, b)])[..., None]
        gen.step(user, force, mask)
        mixed = [gen.step(talk[..., t : t + 1]) for t in range(10)]
    for item, p in enumerate((a, b)):
        with gen.streaming(1):
            run_prompt(gen, p.schedule)
            alone = [gen.step(talk[item : item + 1, :, t : t + 1]) for t in range(10)]
        for t in range(10):
            assert torch.equal(mixed[t][item], alone[t][0]), (item, t)


def test_released_voice_replays_to_the_same_state(lm, tmp_path):
    g = torch.Generator().manual_seed(7)
    codes = torch.randint(0, lm.config.card, (8, 5), generator=g)
    save_released_voice(released_voice(lm, codes, FILLER), tmp_path / "V.pt")
    mimi = fd.Mimi(mimi_preset("tiny"))
    loaded = load_voice(tmp_path / "V.pt", mimi, lm.config)
    assert loaded.embeddings.shape == (4, lm.config.dim) and loaded.frames == 5
    text = [5, 6, 7]
    states = []
    for voice in (Voice("wav", codes=codes), loaded):
        schedule = build_schedule(lm.config, voice, text, FILLER, silence_frames=2)
        states.append(prefill(fd.Generator(lm, temp=0, temp_text=0), Persona.from_schedule(("x",), schedule, lm.config)))
    a, b = states[0].items, states[1].items
    assert set(a) == set(b) and len(a) == 2 + lm.config.num_layers
    for name in a:
        for key in a[name]:
            if key in ("keys", "values"):
                assert (a[name][key] - b[name][key]).abs().max() < 1e-5, (name, key)
            else:
                assert torch.equal(a[name][key], b[name][key]), (name, key)
    with pytest.raises(FullduplexError, match="expected a dict"):
        torch.save({"x": 1}, tmp_path / "bad.pt")
        load_voice(tmp_path / "bad.pt", mimi, lm.config)


def test_cache_is_an_lru_bounded_in_bytes(lm):
    states = {s: prefill(fd.Generator(lm, temp=0, temp_text=0), persona(lm.config, s)) for s in (1, 2, 3)}
    one = states[1].nbytes
    cfg = lm.config
    n = states[1].items["lm.transformer"]["positions"].shape[0]
    # keys and values (fp32), positions, the token ring and its flags, two offsets
    assert one == cfg.num_layers * 2 * cfg.dim * n * 4 + n * 8 + cfg.num_streams * 3 * 9 + 2 * 8
    cache = PersonaCache(max_bytes=2 * one)
    cache.put(("a",), states[1])
    cache.put(("b",), states[2])
    assert cache.get(("a",)) is states[1]  # a is now the most recent
    cache.put(("c",), states[3])
    assert cache.get(("b",)) is None and cache.get(("a",)) is states[1] and cache.get(("c",)) is states[3]
    assert cache.nbytes <= 2 * one and (cache.hits, cache.misses) == (3, 1)
    assert len(PersonaCache(max_bytes=0)) == 0


def test_loudness_matches_pyloudnorm_and_voices_encode(tmp_path):
    pyln = pytest.importorskip("pyloudnorm")
    x = speech(2.0)[0, 0]
    for rate in (24000, 16000):
        assert abs(integrated_loudness(x, rate) - pyln.Meter(rate).integrated_loudness(x.double().numpy())) < 1e-9
    assert abs(integrated_loudness(normalize_loudness(x, 24000), 24000) + 24.0) < 1e-6
    with pytest.raises(FullduplexError, match="silent"):
        normalize_loudness(torch.zeros(24000), 24000, source="quiet.wav")
    mimi = fd.Mimi(mimi_preset("tiny")).eval()
    codes, loudness = encode_voice(x[None, : 1920 * 6 + 5], mimi)
    assert codes.shape == (mimi.num_codebooks, 7) and np.isfinite(loudness)
    save_voice(codes, tmp_path / "me.safetensors", 24000, 12.5, loudness, "me.wav")
    voice = load_voice(tmp_path / "me.safetensors", mimi, TINY)
    assert torch.equal(voice.codes, codes[:8])
