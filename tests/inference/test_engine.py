"""The batched engine: sessions in slots equal `generate` on their own; joining, leaving and a full engine."""

from __future__ import annotations

import pytest
import torch

from fullduplex.errors import FullduplexError
from fullduplex.inference import Engine, EngineFull, Sampling, generate
from tests.helpers import speech, tiny_models

GREEDY = Sampling(temp=0, temp_text=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tok"))


def run_sessions(engine: Engine, inputs: dict[int, torch.Tensor], joins: dict[int, int], ticks: int):
    """Open session k at tick joins[k] and push its whole input; step ``ticks`` times; collect outputs."""
    sessions, outputs = {}, {k: [] for k in inputs}
    for tick in range(ticks):
        for k, at in joins.items():
            if at == tick:
                sessions[k] = engine.open()
                sessions[k].push(inputs[k][0])
        engine.step()
        for k, s in sessions.items():
            outputs[k] += s.pop_outputs()
    return sessions, outputs


@pytest.mark.parametrize("kv_pages", [0, 3], ids=["full-pool", "pool-for-3-of-4-slots"])
def test_sessions_equal_generate_alone(models, kv_pages):
    mimi, lm, tokenizer = models
    inputs = {0: speech(1.2), 1: speech(1.6) * 0.5, 2: speech(1.2).flip(-1)}
    joins = {0: 0, 1: 3, 2: 5}
    lm.transformer.configure_kv(pages=kv_pages)  # tiny LM: context 12, one 16-frame page per session
    try:
        with Engine(mimi, lm, GREEDY, max_sessions=4) as engine:  # the empty slot holds no page
            sessions, outputs = run_sessions(engine, inputs, joins, ticks=30)
    finally:
        lm.transformer.configure_kv(pages=0)
    for k, wav in inputs.items():
        (alone,) = generate([wav], mimi, lm, tokenizer, GREEDY, batch_size=1)
        frames = alone.tokens.shape[-1]
        got = outputs[k][:frames]
        tokens = torch.stack([f.tokens for f in got], dim=-1)
        assert torch.equal(tokens, alone.tokens), k
        model_audio = torch.cat([f.pcm for f in got])[: wav.shape[-1]]
        assert (model_audio - alone.audio[0]).abs().max() < 1e-4, k
        assert got[0].text is None and got[1].text == int(alone.tokens[0, 1])
        assert sessions[k].underruns == len(outputs[k]) - frames  # silence once its input ran out


def test_full_engine_refuses_and_a_freed_slot_starts_fresh(models):
    mimi, lm, tokenizer = models
    wav = speech(1.2)
    with Engine(mimi, lm, GREEDY, max_sessions=2) as engine:
        a, b = engine.open(), engine.open()
        with pytest.raises(EngineFull, match="all 2 conversation slots are busy"):
            engine.open()
        a.push(speech(2.0).flip(-1)[0])
        b.push(speech(2.0)[0])
        for _ in range(7):
            engine.step()
        engine.close(b)
        assert engine.active == 1
        c = engine.open()
        assert c.slot == b.slot
        c.push(wav[0])
        outs = []
        for _ in range(15):
            engine.step()
            outs += c.pop_outputs()
    (alone,) = generate([wav], mimi, lm, tokenizer, GREEDY, batch_size=1)
    tokens = torch.stack([f.tokens for f in outs[: alone.tokens.shape[-1]]], dim=-1)
    assert torch.equal(tokens, alone.tokens)  # nothing of b's conversation leaks into c's


def test_errors(models):
    mimi, lm, _ = models
    engine = Engine(mimi, lm, GREEDY, max_sessions=1)
    with pytest.raises(FullduplexError, match="not started"):
        engine.open()
    with engine:
        s = engine.open()
        engine.close(s)
        with pytest.raises(FullduplexError, match="closed"):
            s.push(torch.zeros(10))
    with pytest.raises(ValueError, match="max_sessions"):
        Engine(mimi, lm, GREEDY, max_sessions=0)


def test_a_session_joins_the_steps_with_its_first_frame(models):
    mimi, lm, tokenizer = models
    wav = speech(1.2)
    with Engine(mimi, lm, GREEDY, max_sessions=2) as engine:
        busy, late = engine.open(), engine.open()
        busy.push(speech(3.0)[0])
        for _ in range(4):
            engine.step()
        assert late.pop_outputs() == [] and late.frames == 0 and late.underruns == 0  # not started: not stepped
        late.push(wav[0])
        outs = []
        for _ in range(15):
            engine.step()
            outs += late.pop_outputs()
    (alone,) = generate([wav], mimi, lm, tokenizer, GREEDY, batch_size=1)
    tokens = torch.stack([f.tokens for f in outs[: alone.tokens.shape[-1]]], dim=-1)
    assert torch.equal(tokens, alone.tokens)
