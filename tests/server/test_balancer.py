"""Several servers behind a load balancer: ``/api/health`` says "full" with 503, and HAProxy running
``examples/deploy/haproxy.cfg`` on loopback spreads conversations over two servers and sends new ones away from a
full server (docs/deploy.md)."""

from __future__ import annotations

import asyncio
import copy
import csv
import io
import shutil
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from fullduplex.inference import Engine, Sampling
from fullduplex.server import protocol
from fullduplex.server.app import Server, ServerConfig
from tests.helpers import tiny_models

EXAMPLE = Path(__file__).parents[2] / "examples" / "deploy" / "haproxy.cfg"
GREEDY = Sampling(temp=0, temp_text=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tok"))


def serve(models, max_sessions: int) -> TestServer:
    """A server of its own (its own copy of the models: an engine's streaming state lives in them)."""
    mimi, lm, tokenizer = models
    engine = Engine(copy.deepcopy(mimi), copy.deepcopy(lm), GREEDY, max_sessions=max_sessions)
    test_server = TestServer(Server(engine, tokenizer, ServerConfig()).app(), host="127.0.0.1")
    return test_server


async def health(client: ClientSession, url: str) -> tuple[int, dict]:
    async with client.get(url) as response:
        return response.status, await response.json()


async def open_session(client: ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """A conversation that has had its handshake (it holds a slot until closed)."""
    ws = await client.ws_connect(url)
    message = protocol.decode((await ws.receive(timeout=10)).data)
    assert message.kind == protocol.Kind.HANDSHAKE, message
    return ws


def test_health_says_full_with_503(models):
    async def main():
        async with serve(models, max_sessions=1) as server, ClientSession() as client:
            url = str(server.make_url("/api/health"))
            before = await health(client, url)
            ws = await open_session(client, str(server.make_url("/api/chat")))
            during = await health(client, url)
            await ws.close()
            for _ in range(100):  # the server frees the slot when it sees the close
                after = await health(client, url)
                if after[0] == 200:
                    break
                await asyncio.sleep(0.05)
            return before, during, after

    before, during, after = asyncio.run(main())
    assert before == (200, {"status": "ok", "sessions": 0, "max_sessions": 1,
                            "devices": [{"device": "cpu", "sessions": 0, "max_sessions": 1}]})
    assert during[0] == 503 and during[1]["status"] == "full" and during[1]["sessions"] == 1
    assert after[0] == 200 and after[1]["status"] == "ok"


# --- HAProxy on loopback --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_config(folder: Path, servers: list[tuple[int, int]], front: int, stats: int) -> Path:
    """The example config with this test's ports, servers ``(port, max_sessions)``, a 100 ms check interval and a
    1 s queue timeout (each replaced text must be there, so the test runs the example, not a config of its own)."""
    text = EXAMPLE.read_text()
    (port1, max1), (port2, max2) = servers
    replacements = [
        ("127.0.0.1:8998", f"127.0.0.1:{front}"), ("127.0.0.1:8404", f"127.0.0.1:{stats}"),
        ("127.0.0.1:8999 maxconn 8", f"127.0.0.1:8999 maxconn {max1}"),
        ("127.0.0.1:9000 maxconn 8", f"127.0.0.1:9000 maxconn {max2}"),
        ("127.0.0.1:8999", f"127.0.0.1:{port1}"), ("127.0.0.1:9000", f"127.0.0.1:{port2}"),
        ("check inter 1s fall 1 rise 1", "check inter 100ms fall 1 rise 1"),
        ("timeout queue 5s", "timeout queue 1s"),
    ]
    for old, new in replacements:
        assert old in text, f"{EXAMPLE} no longer contains {old!r}; update this test with it"
        text = text.replace(old, new)
    path = folder / "haproxy.cfg"
    path.write_text(text)
    return path


class HAProxy:
    """haproxy in the foreground on ``config``; ``states()`` reads its stats page: server -> UP/DOWN."""

    def __init__(self, config: Path, stats: int) -> None:
        self.config, self.stats = config, stats

    async def __aenter__(self) -> HAProxy:
        self.log = self.config.with_suffix(".log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], stdout=log, stderr=log)
        self.client = ClientSession()
        for _ in range(200):
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text()}")
            try:
                await self.states()
                return self
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        raise RuntimeError("haproxy's stats page did not come up in 10 s")

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)

    async def states(self, backend: str = "conversations") -> dict[str, str]:
        async with self.client.get(f"http://127.0.0.1:{self.stats}/stats;csv") as response:
            text = await response.text()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["svname"]: row["status"].split()[0] for row in rows
                if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}

    async def wait_for(self, want: dict[str, str]) -> None:
        """Until the servers in ``want`` have those states (a state, not a time: up to 20 s on a loaded machine)."""
        for _ in range(400):
            states = await self.states()
            if all(states.get(name) == state for name, state in want.items()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"haproxy's servers stayed {states}, expected {want}")


@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="haproxy is not installed (apt-get install haproxy; scripts/test.sh does it as root)")
def test_haproxy_spreads_sessions_and_avoids_a_full_server(models, tmp_path):
    """fd1 has 1 slot, fd2 has 2. Through the balancer: two conversations go one to each server; a third goes to
    fd2 since fd1 is full; a fourth, with both full, is refused with 503. Then fd2 is filled behind the balancer's
    back (direct connections): its health check says "full", it is marked down, and a new conversation goes to fd1
    although both hold no conversation of the balancer's."""

    async def main():
        async with serve(models, 1) as fd1, serve(models, 2) as fd2, ClientSession() as client:
            front, stats = free_port(), free_port()
            config = haproxy_config(tmp_path, [(fd1.port, 1), (fd2.port, 2)], front, stats)
            async with HAProxy(config, stats) as haproxy:
                await haproxy.wait_for({"fd1": "UP", "fd2": "UP"})
                chat = f"ws://127.0.0.1:{front}/api/chat"
                count = {}

                async def sessions() -> tuple[int, int]:
                    return ((await health(client, str(fd1.make_url("/api/health"))))[1]["sessions"],
                            (await health(client, str(fd2.make_url("/api/health"))))[1]["sessions"])

                a = await open_session(client, chat)
                b = await open_session(client, chat)
                count["two"] = await sessions()
                c = await open_session(client, chat)
                count["three"] = await sessions()
                try:
                    await client.ws_connect(chat)
                    count["fourth"] = None
                except aiohttp.WSServerHandshakeError as e:
                    count["fourth"] = e.status
                for ws in (a, b, c):
                    await ws.close()
                await haproxy.wait_for({"fd1": "UP", "fd2": "UP"})  # fd1 was full (down) until now
                direct = [await open_session(client, str(fd2.make_url("/api/chat"))) for _ in range(2)]
                await haproxy.wait_for({"fd2": "DOWN"})
                d = await open_session(client, chat)
                count["behind"] = await sessions()
                for ws in (d, *direct):
                    await ws.close()
            return count

    count = asyncio.run(main())
    assert count["two"] == (1, 1)  # spread: one each
    assert count["three"] == (1, 2)  # fd1 full: the third went to fd2
    assert count["fourth"] == 503  # both full: refused by the balancer once its queue timeout passed
    assert count["behind"] == (1, 2)  # fd2 full (direct clients) and marked down: fd1 took the conversation
