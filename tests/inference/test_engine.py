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


def drive(engine: Engine, inputs: dict, joins: dict, leave: dict, ticks: int = 36) -> tuple[dict, dict, list]:
    """Step ``engine`` ``ticks`` times; session k opens at tick ``joins[k]`` with its whole input and closes at
    ``leave[k]``. (outputs per session, the sessions still open, the rows stepped at each tick)."""
    outputs, sessions, rows = {k: [] for k in inputs}, {}, []
    for tick in range(ticks):
        for k, at in joins.items():
            if at == tick:
                sessions[k] = engine.open()
                sessions[k].push(inputs[k][0])
        for k, at in leave.items():
            if at == tick:
                engine.close(sessions.pop(k))
        engine.step()
        rows.append(engine.rows)
        for k, s in sessions.items():
            outputs[k] += s.pop_outputs()
    return outputs, sessions, rows


@pytest.mark.parametrize("buckets", [False, True])
def test_leaving_from_the_middle_compacts_rows_and_the_others_carry_on(models, buckets):
    """Sessions leave from the middle while others join: the last row moves into each hole, every remaining
    session still equals `generate` alone, and only the rows in use are stepped (on CUDA a bucket of rows >= n:
    ``buckets`` runs that path on CPU, the spare rows on silence)."""
    mimi, lm, tokenizer = models
    inputs = {k: speech(1.0 + 0.2 * k) * (0.4 + 0.1 * k) for k in range(5)}
    inputs[1], inputs[3] = inputs[1].flip(-1), inputs[3].flip(-1)
    leave = {1: 6, 2: 9}  # leave at these ticks, before their input ends
    joins = {0: 0, 1: 1, 2: 2, 3: 4, 4: 10}
    with Engine(mimi, lm, GREEDY, max_sessions=6) as engine:
        engine.buckets = buckets
        outputs, sessions, rows = drive(engine, inputs, joins, leave)
        assert sessions[4].slot == 1 and sessions[4].row == 2  # the freed slot; rows 0, 1 are sessions 0 and 3
    assert rows[:12] == [1, 2, 3, 3, 4, 4, 3, 3, 3, 2, 3, 3]
    for k in (0, 3, 4):
        (alone,) = generate([inputs[k]], mimi, lm, tokenizer, GREEDY, batch_size=1)
        frames = alone.tokens.shape[-1]
        tokens = torch.stack([f.tokens for f in outputs[k][:frames]], dim=-1)
        assert torch.equal(tokens, alone.tokens), k
        model_audio = torch.cat([f.pcm for f in outputs[k][:frames]])[: inputs[k].shape[-1]]
        assert (model_audio - alone.audio[0]).abs().max() < 1e-4, k


def test_bucket_sizes():
    from fullduplex.inference.engine import bucket

    assert [bucket(n, 64) for n in (1, 2, 3, 5, 9, 17, 32, 33, 49, 64)] == [1, 2, 4, 8, 16, 32, 32, 48, 64, 64]
    assert bucket(5, 6) == 6 and bucket(70, 80) == 80


def test_a_persona_prompt_moved_by_compaction_starts_as_alone(models):
    """A persona's prompt runs in a row that moves (a session before it leaves mid-prompt); its cached state and
    the conversation that follows are exactly `generate` with that prompt alone."""
    from dataclasses import replace

    import fullduplex as fd
    from fullduplex.inference.persona import Persona, prefill
    from fullduplex.inference.prompt import Voice, build_schedule
    from fullduplex.inference.voice import filler_codes

    mimi, tiny_lm, tokenizer = models
    torch.manual_seed(0)
    lm = fd.LMModel(replace(tiny_lm.config, dep_q=16, context=64)).eval()
    g = torch.Generator().manual_seed(3)
    voice = Voice("v", codes=torch.randint(0, lm.config.card, (8, 4), generator=g))
    schedule = build_schedule(lm.config, voice, [5, 6, 7], filler_codes(mimi), silence_frames=2)
    persona = Persona.from_schedule(("v",), schedule, lm.config)
    wav = speech(0.96) * 0.5
    with Engine(mimi, lm, GREEDY, max_sessions=3) as engine:
        leaver, other = engine.open(), engine.open()
        leaver.push(speech(2.0)[0])
        other.push(speech(3.0).flip(-1)[0])
        engine.step()
        talker = engine.open(persona)
        engine.step()
        assert talker.row == 2 and talker.state.value == "prompting"
        engine.close(leaver)
        engine.step()
        assert talker.row == 0  # the last row moved into the hole
        while not talker.live:
            engine.step()
        talker.push(wav[0])
        outs = []
        for _ in range(16):
            engine.step()
            outs += talker.pop_outputs()
    cached, alone_state = engine.personas.get(persona.key), prefill(fd.Generator(lm, temp=0, temp_text=0), persona)
    assert_states_close(cached.items, alone_state.items)
    (alone,) = generate([wav], mimi, lm, tokenizer, GREEDY, batch_size=1, prompt=schedule)
    tokens = torch.stack([f.tokens for f in outs[: alone.tokens.shape[-1]]], dim=-1)
    assert torch.equal(tokens, alone.tokens)


def assert_states_close(got: object, want: object, where: str = "") -> None:
    """Per-item snapshots (dicts of tensors, the paged cache's KVItemSnapshot, lists) equal within float error."""
    if isinstance(want, torch.Tensor):
        assert got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=1e-5), where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_states_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_states_close(a, b, f"{where}[{i}]")
    elif hasattr(want, "__dataclass_fields__"):
        for name in want.__dataclass_fields__:
            assert_states_close(getattr(got, name), getattr(want, name), f"{where}.{name}")
    else:
        assert got == want, where
