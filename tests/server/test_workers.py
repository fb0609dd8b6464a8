"""I/O worker processes (``fullduplex serve --io-workers N``): sockets and Opus in other processes, the engines in
this one. Every session still gets exactly what ``generate`` gives for its input alone; health and metrics come
through; a worker that dies ends only its own sessions and is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import pytest
from aiohttp import ClientSession

from fullduplex.inference import Engine, Sampling
from fullduplex.server import protocol
from fullduplex.server.app import Server, ServerConfig
from fullduplex.server.workers import Hub, PieceTable
from tests.helpers import speech, tiny_models
from tests.server.test_server import converse, expected_text

GREEDY = Sampling(temp=0, temp_text=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tok"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A hub with ``workers`` I/O workers serving ``models`` on a free port, in a thread, for a ``with`` block."""

    def __init__(self, models, workers: int, max_sessions: int = 4, **config) -> None:
        mimi, lm, tokenizer = models
        self.port = free_port()
        server = Server(Engine(mimi, lm, GREEDY, max_sessions=max_sessions), tokenizer,
                        ServerConfig(port=self.port, **config))
        self.hub = Hub(server, workers)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.hub.run(self.ready.set)), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        assert self.ready.wait(120), "the I/O workers did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.hub.stop()
        self.thread.join(60)

    def url(self, path: str) -> str:
        scheme = "ws" if path == "/api/chat" else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"


async def get_json(url: str) -> tuple[int, dict]:
    async with ClientSession() as client, client.get(url) as response:
        return response.status, await response.json()


def test_sessions_through_two_workers_get_their_own_replies(models):
    base = speech(2.0)[0]
    inputs = [(base * (0.3 + 0.1 * k)).roll(2400 * k, dims=-1)[..., : 1920 * (10 + k)] for k in range(4)]
    with Running(models, workers=2) as running:
        async def main():
            results = await asyncio.gather(*(converse(running.url("/api/chat"), wav) for wav in inputs))
            health = await get_json(running.url("/api/health"))
            async with ClientSession() as client, client.get(running.url("/api/metrics")) as response:
                metrics = await response.text()
            return results, health, metrics

        results, (status, health), metrics = asyncio.run(main())
        pids = {w.process.pid for w in running.hub.workers}
    assert len(pids) == 2
    for wav, got in zip(inputs, results, strict=True):
        assert got["handshake"] and not got["errors"]
        assert len(got["pcm"]) >= wav.shape[-1] - 3 * 1920
        want = expected_text(models, wav)
        assert got["text"][: len(want)] == want
    assert status == 200 and health["status"] == "ok" and health["max_sessions"] == 4
    steps = next(line for line in metrics.splitlines() if line.startswith("fullduplex_steps_total "))
    assert float(steps.split()[1]) > 10


def test_a_dead_worker_ends_only_its_sessions_and_is_replaced(models):
    with Running(models, workers=1, max_sessions=2) as running:
        async def open_session():
            client = ClientSession()
            ws = await client.ws_connect(running.url("/api/chat"))
            first = protocol.decode((await ws.receive(timeout=20)).data)
            return client, ws, first

        async def main():
            client, ws, first = await open_session()
            assert first.kind == protocol.Kind.HANDSHAKE
            _, before = await get_json(running.url("/api/health"))
            (worker,) = running.hub.workers
            os.kill(worker.process.pid, signal.SIGKILL)
            gone = await ws.receive(timeout=20)  # our connection dies with its worker
            await client.close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # a new worker takes the port; the dead one's slot is free again
                try:
                    status, after = await get_json(running.url("/api/health"))
                    if after["sessions"] == 0:
                        break
                except OSError:
                    pass
                await asyncio.sleep(0.2)
            again = await converse(running.url("/api/chat"), speech(1.0)[0])
            return before, gone, after, again, worker.process.pid

        before, gone, after, again, dead = asyncio.run(main())
        alive = [w.process.pid for w in running.hub.workers]
    assert before["sessions"] == 1 and after["sessions"] == 0
    assert gone.type.name in ("CLOSE", "CLOSED", "ERROR")
    assert again["handshake"] and not again["errors"] and len(again["pcm"]) > 0
    assert alive and dead not in alive


def test_piece_table_is_the_tokenizer(models):
    _, lm, tokenizer = models
    table = PieceTable.of(tokenizer, lm.config.text_card + 1)
    for token in range(lm.config.text_card + 1):
        assert table.is_text(token) == tokenizer.is_text(token)
        if tokenizer.is_text(token):
            assert table.piece(token) == tokenizer.piece(token)
