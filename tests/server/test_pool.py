"""Several engines in one server (``fullduplex serve --devices cpu,cpu``): a new session goes to the least-loaded
engine, every session still gets exactly what ``generate`` gives for its input alone, and health and metrics add
the engines up and list them."""

from __future__ import annotations

import asyncio
import copy
import threading

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from fullduplex.cli.main import main as cli
from fullduplex.inference import Engine, EngineFull, Sampling
from fullduplex.server.app import Server, ServerConfig, new_model_thread
from fullduplex.server.pool import EnginePool, Lane
from tests.helpers import assert_one_line_error, speech, tiny_models
from tests.server.test_server import converse, expected_text

GREEDY = Sampling(temp=0, temp_text=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tok"))


def pool_of(models, *sizes: int) -> EnginePool:
    """One engine per size, each on its own copy of the models (as on its own device) and its own thread."""
    mimi, lm, _ = models
    return EnginePool([Lane(Engine(copy.deepcopy(mimi), copy.deepcopy(lm), GREEDY, max_sessions=n), new_model_thread())
                       for n in sizes])


def test_sessions_go_to_the_least_loaded_engine(models):
    pool = pool_of(models, 2, 4)
    pool.start()
    try:
        opened = [pool.open() for _ in range(4)]
        # Fraction of slots in use decides (ties: the first engine): 0/2 0/4 -> e0; 1/2 0/4 -> e1; 1/2 1/4 -> e1;
        # 1/2 2/4 -> e0.
        assert [pool.engines.index(pool.lane_of(s).engine) for s in opened] == [0, 1, 1, 0]
        assert pool.open() in pool.engines[1].sessions and pool.open() in pool.engines[1].sessions
        assert pool.full and (pool.active, pool.max_sessions) == (6, 6)
        with pytest.raises(EngineFull, match="all 6 conversation slots of its 2 engines are busy"):
            pool.open()
        pool.close(opened[0])  # a slot of engine 0 frees: the next session takes it
        assert not pool.full and pool.lane_of(pool.open()).engine is pool.engines[0]
    finally:
        pool.stop()


def test_each_engine_starts_on_its_own_model_thread(models):
    """The thread that steps an engine also starts it (on CUDA: that thread's current device is the engine's, where
    its seeds and CUDA graphs go)."""
    pool = pool_of(models, 1, 1)
    started = []
    for engine in pool.engines:
        engine.start = lambda engine=engine, start=engine.start: (started.append(threading.current_thread()), start())
    pool.start()
    try:
        stepped = [lane.thread.submit(threading.current_thread).result() for lane in pool.lanes]
        assert started == stepped and stepped[0] is not stepped[1] and threading.current_thread() not in stepped
    finally:
        pool.stop()


def test_two_engines_serve_sessions_with_their_own_replies(models):
    """4 clients on two engines of 2 slots: both engines serve, and each client gets exactly the text `generate`
    gives for its input alone."""
    base = speech(2.0)[0]
    inputs = [(base * (0.2 + 0.1 * k)).roll(2400 * k, dims=-1)[..., : 1920 * (9 + 2 * k)] for k in range(4)]
    pool = pool_of(models, 2, 2)
    placed = []
    open_session = pool.open

    def recording_open(persona=None):
        session = open_session(persona)
        placed.append(pool.engines.index(pool.lane_of(session).engine))
        return session

    pool.open = recording_open

    async def main():
        server = Server(pool, models[2], ServerConfig())
        async with TestServer(server.app(), host="127.0.0.1") as test_server:
            url = str(test_server.make_url("/api/chat"))
            results = await asyncio.gather(*(converse(url, wav) for wav in inputs))
            async with ClientSession() as client:
                async with client.get(test_server.make_url("/api/health")) as response:
                    health = await response.json()
                async with client.get(test_server.make_url("/api/metrics")) as response:
                    metrics = await response.text()
            return results, health, metrics, [e.steps for e in pool.engines]

    results, health, metrics, steps = asyncio.run(main())
    assert sorted(set(placed)) == [0, 1] and min(steps) > 0  # spread over both, both stepped (placement: above)
    for wav, got in zip(inputs, results, strict=True):
        assert got["handshake"] and not got["errors"]
        want = expected_text(models, wav)
        assert got["text"][: len(want)] == want
    assert health["status"] == "ok" and health["max_sessions"] == 4
    assert [d["max_sessions"] for d in health["devices"]] == [2, 2]
    assert f"fullduplex_steps_total {float(sum(steps))}" in metrics
    for i in (0, 1):
        assert f'fullduplex_engine_steps_total{{device="cpu",engine="{i}"}} {float(steps[i])}' in metrics


@pytest.mark.parametrize("argv, needle", [
    (["--devices", "cpu,,cpu"], "comma-separated devices"),
    (["--devices", "cpu", "--device", "cpu"], "not both"),
    (["--devices", "cpu,nonsense"], "--devices cpu,nonsense: 'nonsense' is not a torch device"),
])
def test_bad_devices_are_one_clear_error(argv, needle, capsys):
    code = cli(["serve", *argv])
    assert_one_line_error(code, capsys.readouterr().err, needle)
