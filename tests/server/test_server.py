"""The server over real sockets (127.0.0.1): handshake, audio and text back, several sessions at once, a full
server, malformed input ending only its own session, auth, health and metrics."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from aiohttp import ClientSession, WSMsgType
from aiohttp.test_utils import TestServer

from fullduplex.inference import Engine, Sampling, generate
from fullduplex.server import protocol
from fullduplex.server.app import Server, ServerConfig
from tests.helpers import speech, tiny_models

GREEDY = Sampling(temp=0, temp_text=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tok"))


def serve(models, max_sessions: int = 4, **config) -> TestServer:
    mimi, lm, tokenizer = models
    server = Server(Engine(mimi, lm, GREEDY, max_sessions=max_sessions), tokenizer, ServerConfig(**config))
    test_server = TestServer(server.app(), host="127.0.0.1")
    test_server.fullduplex = server  # for tests that look inside
    return test_server


async def converse(url: str, wav: torch.Tensor, params: dict | None = None, headers: dict | None = None) -> dict:
    """Connect, wait for the handshake, send the whole input as Opus at once, collect replies until the model's
    audio covers the input (or 10 s pass)."""
    received: dict = {"handshake": False, "pcm": [], "text": [], "errors": []}
    encoder, decoder = protocol.OpusEncoder(), protocol.OpusDecoder()
    async with ClientSession() as client, client.ws_connect(url, params=params, headers=headers) as ws:
        first = await ws.receive(timeout=10)
        if first.type != WSMsgType.BINARY:
            return received
        message = protocol.decode(first.data)
        if message.kind == protocol.Kind.ERROR:
            received["errors"].append(message.text())
            return received
        received["handshake"] = message.kind == protocol.Kind.HANDSHAKE
        await ws.send_bytes(protocol.audio(encoder.encode(wav[0].numpy()) + encoder.flush()))
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            try:  # the server answers each frame as it steps; 1 s of quiet means it is done
                msg = await ws.receive(timeout=1.0)
            except TimeoutError:
                break
            if msg.type != WSMsgType.BINARY:
                break
            message = protocol.decode(msg.data)
            if message.kind == protocol.Kind.AUDIO:
                received["pcm"].append(decoder.decode(message.payload))
            elif message.kind == protocol.Kind.TEXT:
                received["text"].append(message.text())
            elif message.kind == protocol.Kind.ERROR:
                received["errors"].append(message.text())
                break
    received["pcm"] = np.concatenate(received["pcm"]) if received["pcm"] else np.zeros(0, np.float32)
    return received


def expected_text(models, wav: torch.Tensor) -> list[str]:
    mimi, lm, tokenizer = models
    (alone,) = generate([wav], mimi, lm, tokenizer, GREEDY, batch_size=1)
    return [tokenizer.piece(int(t)).replace("▁", " ") for t in alone.tokens[0] if t >= 0 and tokenizer.is_text(int(t))]


def test_sessions_get_their_own_replies(models):
    """8 clients at once in 8 slots: each gets exactly the text `generate` gives for its input alone."""
    base = speech(2.0)[0]
    inputs = [(base * (0.2 + 0.1 * k)).roll(2400 * k, dims=-1)[..., : 1920 * (12 + k)] for k in range(8)]

    async def main():
        async with serve(models, max_sessions=8) as server:
            url = str(server.make_url("/api/chat"))
            return await asyncio.gather(*(converse(url, wav) for wav in inputs))

    results = asyncio.run(main())
    for wav, got in zip(inputs, results, strict=True):
        assert got["handshake"] and not got["errors"]
        assert len(got["pcm"]) >= wav.shape[-1] - 3 * 1920  # 24 kHz audio covering the input (less Opus delay)
        # Exactly what `generate` says for this input alone; the server then keeps the conversation going on
        # silence while the other, longer conversations still run.
        want = expected_text(models, wav)
        assert got["text"][: len(want)] == want


def test_full_server_refuses_with_a_message(models):
    async def main():
        async with serve(models, max_sessions=1) as server:
            url = str(server.make_url("/api/chat"))
            async with ClientSession() as client, client.ws_connect(url) as first:
                assert protocol.decode((await first.receive(timeout=10)).data).kind == protocol.Kind.HANDSHAKE
                return await converse(url, speech(0.5)[0])

    got = asyncio.run(main())
    assert not got["handshake"] and "busy" in got["errors"][0]


def test_garbage_ends_only_that_session(models):
    async def main():
        async with serve(models) as server:
            url = str(server.make_url("/api/chat"))
            async with ClientSession() as client, client.ws_connect(url) as bad:
                await bad.receive(timeout=10)  # handshake
                await bad.send_bytes(protocol.audio(b"definitely not an ogg page"))
                reply = await bad.receive(timeout=10)
                error = protocol.decode(reply.data)
                closed = await bad.receive(timeout=10)
            good = await converse(url, speech(1.2)[0])
            async with client_json(server, "/api/health") as health:
                return error, closed, good, health

    error, closed, good, health = asyncio.run(main())
    assert error.kind == protocol.Kind.ERROR and "malformed" in error.text()
    assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert good["handshake"] and len(good["pcm"]) > 0
    assert health["sessions"] == 0 and health["max_sessions"] == 4  # the bad session's slot was freed


class client_json:
    def __init__(self, server: TestServer, path: str) -> None:
        self.server, self.path = server, path

    async def __aenter__(self):
        self.client = ClientSession()
        async with self.client.get(self.server.make_url(self.path)) as response:
            return await response.json()

    async def __aexit__(self, *exc):
        await self.client.close()


def test_auth_token_and_metrics(models):
    async def main():
        async with serve(models, auth_token="s3cret") as server:
            url = str(server.make_url("/api/chat"))
            async with ClientSession() as client:
                async with client.get(url) as refused:
                    status = refused.status
                ok = await converse(url, speech(0.8)[0], headers={"Authorization": "Bearer s3cret"})
                ok_query = await converse(url, speech(0.8)[0], params={"auth_token": "s3cret"})
                async with client.get(server.make_url("/api/metrics")) as response:
                    closed = response.status  # with auth on, metrics need the token too
                async with client.get(server.make_url("/api/metrics"), headers={"Authorization": "bearer s3cret"}) as response:
                    metrics = await response.text()
            return status, ok, ok_query, metrics, closed

    status, ok, ok_query, metrics, closed = asyncio.run(main())
    assert status == 401 and closed == 401
    assert ok["handshake"] and ok_query["handshake"]
    assert "fullduplex_steps_total" in metrics and 'fullduplex_step_seconds{quantile="0.99"}' in metrics


def test_connect_disconnect_cycles_leak_nothing(models):
    async def main():
        async with serve(models, max_sessions=2) as server:
            url = str(server.make_url("/api/chat"))
            async with ClientSession() as client:
                for _ in range(200):
                    async with client.ws_connect(url) as ws:
                        await ws.receive(timeout=10)
                        await ws.send_bytes(protocol.audio(protocol.OpusEncoder().encode(np.zeros(1920, np.float32))))
            await asyncio.sleep(0.2)
            inner = server.fullduplex
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            return inner.engine.active, len(inner._outputs), len(tasks)

    active, senders, tasks = asyncio.run(main())
    assert active == 0 and senders == 0  # every slot and sender freed
    assert tasks <= 2  # the stepping loop (and the test server's own) only


def test_unknown_kinds_are_ignored_and_a_vanishing_client_frees_its_slot(models):
    async def main():
        async with serve(models, max_sessions=1) as server:
            url = str(server.make_url("/api/chat"))
            async with ClientSession() as client:
                async with client.ws_connect(url) as ws:
                    await ws.receive(timeout=10)
                    await ws.send_bytes(bytes([0x42]) + b"from the future")  # unknown kind: discarded
                    await ws.send_bytes(protocol.ping())
                    await ws.send_bytes(protocol.control(protocol.Control.PAUSE))
                    ogg = protocol.OpusEncoder().encode(speech(0.5)[0, 0, :1000].numpy())
                    await ws.send_bytes(protocol.audio(ogg))  # half a frame, then vanish
                await asyncio.sleep(0.3)
                after = await converse(url, speech(0.8)[0])  # the only slot is free again
            return after, server.fullduplex.errors

    after, errors = asyncio.run(main())
    assert after["handshake"] and len(after["pcm"]) > 0
    assert errors == 0  # unknown kinds, ping and control are not errors


def test_a_failing_model_step_is_reported(models):
    async def main():
        async with serve(models) as server:
            def broken() -> None:
                raise RuntimeError("boom")

            server.fullduplex.engine.step = broken
            url = str(server.make_url("/api/chat"))
            await converse(url, speech(0.5)[0])  # its frames trigger the failing step
            async with ClientSession() as client:
                async with client.get(server.make_url("/api/health")) as response:
                    status, body = response.status, await response.json()
            refused = await converse(url, speech(0.5)[0])
            return status, body, refused

    status, body, refused = asyncio.run(main())
    assert status == 503 and body["status"] == "error"
    assert "model failed" in refused["errors"][0]
