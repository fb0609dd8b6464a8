"""Hostile and careless clients against a live server (127.0.0.1, tiny models): an Opus bomb and a flood of empty
Ogg pages are paced while a real-time client beside them gets every frame; a client that leaves during its
persona prompt frees its slot at once; over-long prompts and file names are refused with a message; a client that
resets its socket costs one log line, not a traceback; auth and Origin checks; the access log hides the token.

Timing here only ever bounds from below (pacing makes something take *at least* so long), or waits generously for
something that must happen: a loaded machine makes these tests slower, never wrong.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from aiohttp import ClientSession, WSMsgType, WSServerHandshakeError, web
from aiohttp.test_utils import TestServer, make_mocked_request

import fullduplex as fd
from fullduplex.inference import Engine, Sampling
from fullduplex.inference.persona import PersonaCache
from fullduplex.inference.voice import filler_codes, save_voice
from fullduplex.server import protocol
from fullduplex.server.app import RedactingAccessLogger, Server, ServerConfig
from fullduplex.server.personas import PersonaLibrary
from tests.helpers import tiny_models
from tests.server.ogg_craft import bomb, empty_pages, stream_start

GREEDY = Sampling(temp=0, temp_text=0)
FRAME = 1920


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tok"))


def serve(models, max_sessions: int = 2, personas: PersonaLibrary | None = None, engine_lm=None, **config) -> TestServer:
    mimi, lm, tokenizer = models
    engine = Engine(mimi, engine_lm or lm, GREEDY, max_sessions=max_sessions, personas=PersonaCache())
    server = Server(engine, tokenizer, ServerConfig(**config), personas=personas)
    test_server = TestServer(server.app(), host="127.0.0.1")
    test_server.fullduplex = server
    return test_server


async def realtime_client(url: str, frames: int, timeout: float = 30.0) -> tuple[int, int]:
    """A well-behaved client: one 80 ms frame of audio every 80 ms; returns (frames sent, audio messages received,
    one per frame the server answered), waiting up to ``timeout`` for the answers."""
    encoder = protocol.OpusEncoder()
    rng = np.random.default_rng(0)
    received = 0
    async with ClientSession() as client, client.ws_connect(url) as ws:
        assert protocol.decode((await ws.receive(timeout=timeout)).data).kind == protocol.Kind.HANDSHAKE

        async def read() -> None:
            nonlocal received
            while received < frames:
                msg = await ws.receive()
                if msg.type != WSMsgType.BINARY:
                    return
                if protocol.decode(msg.data).kind == protocol.Kind.AUDIO:
                    received += 1

        reader = asyncio.create_task(read())
        for _ in range(frames):
            await ws.send_bytes(protocol.audio(encoder.encode((0.1 * rng.standard_normal(FRAME)).astype(np.float32))))
            await asyncio.sleep(0.08)
        try:
            await asyncio.wait_for(reader, timeout)
        except TimeoutError:
            pass
    return frames, received


async def first_error(ws, timeout: float = 60.0) -> str | None:
    """The text of the first Error message, or None when the socket closes without one."""
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type != WSMsgType.BINARY:
            return None
        message = protocol.decode(msg.data)
        if message.kind == protocol.Kind.ERROR:
            return message.text()


def test_opus_bomb_is_paced_and_the_realtime_client_gets_every_frame(models):
    """Bomb pages (0.4 s of declared audio in 47 bytes each) sent at 40 messages/s: the server holds at most its
    pending bound plus one message for that session, reads the rest only as the model consumes it, and a real-time
    client beside it is answered frame for frame. A page declaring 4 s in 227 bytes (over the 2 s per message) ends
    its session with an Error before it is decoded."""
    config = ServerConfig()

    async def main():
        async with serve(models) as server:
            url = str(server.make_url("/api/chat"))

            async def attacker() -> None:
                async with ClientSession() as client, client.ws_connect(url) as ws:
                    await ws.receive(timeout=30)
                    start, serial = stream_start()
                    await ws.send_bytes(protocol.audio(start))
                    for i in range(4):
                        await ws.send_bytes(protocol.audio(bomb(serial, 3 + i, packets=10)))
                        await asyncio.sleep(0.025)
                    await asyncio.sleep(1.0)

            async def big_bomb() -> str | None:
                async with ClientSession() as client, client.ws_connect(url) as ws:
                    await ws.receive(timeout=30)
                    start, serial = stream_start()
                    await ws.send_bytes(protocol.audio(start + bomb(serial, 3, packets=100)))
                    return await first_error(ws)

            _, (sent, answered) = await asyncio.gather(attacker(), realtime_client(url, 6))
            paced = server.fullduplex.paced
            return await big_bomb(), sent, answered, paced, server.fullduplex

    error, sent, answered, paced, server = asyncio.run(main())
    assert answered == sent
    assert error is not None and "holds 4.08 s of audio" in error
    # Pending audio never grew past the bound plus one message (0.4 s), whatever the client sent.
    assert server.max_pending <= int((config.max_pending_seconds + 0.4) * 24000)
    assert paced > 0


def test_empty_page_flood_is_paced_and_oversized_messages_close_the_socket(models):
    """Messages full of valid empty Ogg pages at the byte-rate limit: the server reads them no faster than the rate
    allows (a lower bound on time, which load can only lengthen), a real-time client beside them gets every frame,
    and a message over the size limit closes only its own socket (1009, "message too big")."""
    rate, size, count = 16384, 8192, 6  # 48 KiB at 16 KiB/s with a 16 KiB burst: at least 2 s

    async def main():
        async with serve(models, max_message_bytes=size, max_bytes_per_second=rate) as server:
            url = str(server.make_url("/api/chat"))

            async def flooder() -> tuple[float, str | None, int | None]:
                async with ClientSession() as client, client.ws_connect(url) as ws:
                    await ws.receive(timeout=30)
                    began = time.monotonic()
                    for _ in range(count):
                        await ws.send_bytes(protocol.audio(empty_pages(size - 1)))
                    await ws.send_str("the end")  # answered with an Error once everything before it was read
                    error = await first_error(ws)
                    took = time.monotonic() - began
                async with ClientSession() as client, client.ws_connect(url) as ws:
                    await ws.receive(timeout=30)
                    await ws.send_bytes(b"\x01" + bytes(size))
                    closed = await ws.receive(timeout=30)
                    return took, error, ws.close_code if closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) else None

            (took, error, code), (sent, answered) = await asyncio.gather(flooder(), realtime_client(url, 8))
            return took, error, code, sent, answered, server.fullduplex.paced

    took, error, code, sent, answered, paced = asyncio.run(main())
    assert error is not None and "binary" in error
    assert took >= (count * size - rate) / rate * 0.95
    assert paced > 0
    assert code == 1009
    assert answered == sent


@pytest.fixture(scope="module")
def persona_setup(models, tmp_path_factory):
    mimi, lm, tokenizer = models
    torch.manual_seed(3)
    persona_lm = fd.LMModel(replace(lm.config, dep_q=16, context=256)).eval()
    folder = tmp_path_factory.mktemp("voices")
    save_voice(torch.randint(0, 32, (8, 5)), folder / "A.safetensors", 24000, 12.5, -20.0, "x")
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    library = PersonaLibrary(mimi, persona_lm.config, tokenizer, filler_codes(mimi), folder, max_prompt_tokens=200)
    return persona_lm, library, folder


def test_a_client_that_leaves_during_its_prompt_frees_its_slot(models, persona_setup, caplog):
    """On a one-slot server a client with a long role prompt sends its close frame before the handshake and keeps
    the TCP connection open: the server notices while the prompt runs (it reads the socket meanwhile), stops the
    prompt part-way and the next client gets the slot."""
    persona_lm, library, _ = persona_setup
    prompt = " ".join(["hello there"] * 40)
    assert len(library.tokenizer.encode(prompt)) <= 200  # under the cap, and long: dozens of 80 ms steps
    caplog.set_level(logging.INFO, logger="fullduplex.server")

    async def main():
        async with serve(models, max_sessions=1, personas=library, engine_lm=persona_lm) as server:
            engine = server.fullduplex.engine
            sock = await upgrade(server.port, "/api/chat?text_prompt=" + prompt.replace(" ", "+"))
            while engine.sessions[0] is None or engine.sessions[0].prompt_step < 2:
                await asyncio.sleep(0.02)
            session = engine.sessions[0]
            sock.sendall(bytes([0x88, 0x82]) + bytes(4) + struct.pack(">H", 1000))  # close frame, TCP stays open
            while engine.active:
                await asyncio.sleep(0.02)
            _, answered = await realtime_client(str(server.make_url("/api/chat")), 3)
            sock.close()
            return session, answered

    session, answered = asyncio.run(main())
    assert session.closed and session.prompting  # ended with its prompt part-way
    assert session.prompt_step < session.persona.frames
    # One line either way: the server read the close itself, or aiohttp cancelled the handler once it had.
    assert any("left while its persona prompt ran" in r.getMessage() or "connection was lost" in r.getMessage()
               for r in caplog.records)
    assert answered == 3


def test_long_prompts_long_names_and_broken_voices_get_a_message_without_paths(models, persona_setup, caplog):
    persona_lm, library, folder = persona_setup
    caplog.set_level(logging.INFO)

    async def main():
        async with serve(models, personas=library, engine_lm=persona_lm) as server:
            url = str(server.make_url("/api/chat"))
            errors = []
            async with ClientSession() as client:
                for params in ({"text_prompt": "hello " * 400}, {"text_prompt": "x" * 5000},
                               {"voice_prompt": "v" * 300 + ".pt"}, {"voice_prompt": "broken.safetensors"}):
                    async with client.ws_connect(url, params=params) as ws:
                        errors.append(await first_error(ws))
                try:  # a URL over aiohttp's line limit: refused by aiohttp itself
                    await client.ws_connect(url, params={"text_prompt": "x" * 10_000})
                except WSServerHandshakeError as e:
                    too_long = e.status
            return errors, server.fullduplex.engine.active, too_long

    errors, active, too_long = asyncio.run(main())
    assert too_long == 400
    assert "at most 200" in errors[0] and "at most 200" in errors[1]
    assert "too long for a file name" in errors[2]
    assert errors[3] is not None and "broken.safetensors" in errors[3]
    assert all(str(folder) not in e and str(folder.parent) not in e for e in errors)
    assert active == 0
    assert not [r for r in caplog.records if r.exc_info]


UPGRADE = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def upgrade(port: int, path: str) -> socket.socket:
    """A raw TCP connection upgraded to a WebSocket on ``path`` (non-blocking; the 101 response read)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(UPGRADE.format(path=path).encode())
    sock.setblocking(False)
    head = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), 30)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return sock


def test_resets_after_the_upgrade_log_one_line_and_no_traceback(models, caplog):
    """Clients that upgrade, send a frame and reset the TCP connection (RST) while the server writes to them."""
    caplog.set_level(logging.DEBUG)

    async def main():
        async with serve(models) as server:
            port = server.port
            frame = protocol.audio(protocol.OpusEncoder().encode(np.zeros(FRAME * 2, np.float32)))
            for _ in range(8):  # reset before the server answers the upgrade: it writes to a reset socket
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(UPGRADE.format(path="/api/chat").encode())
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                await asyncio.sleep(0.05)
            for _ in range(4):  # reset while the server streams its answer
                sock = await upgrade(port, "/api/chat")
                # One masked binary frame (the mask of zeros leaves the payload as it is).
                sock.sendall(bytes([0x82, 0x80 | 126]) + struct.pack(">H", len(frame)) + bytes(4) + frame
                             if len(frame) >= 126 else bytes([0x82, 0x80 | len(frame)]) + bytes(4) + frame)
                await asyncio.sleep(0.3)  # the server steps and writes its answer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # RST
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            return server.fullduplex.engine.active

    assert asyncio.run(main()) == 0
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()
                  or "never retrieved" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def test_auth_covers_voices_and_metrics_but_not_health(models):
    async def main():
        async with serve(models, auth_token="s3cret") as server:
            statuses = {}
            async with ClientSession() as client:
                for name, path, headers in [
                    ("health", "/api/health", {}), ("voices", "/api/voices", {}), ("metrics", "/api/metrics", {}),
                    ("voices_token", "/api/voices?auth_token=s3cret", {}),
                    ("metrics_bearer", "/api/metrics", {"Authorization": "BEARER s3cret"}),
                    ("wrong", "/api/metrics", {"Authorization": "Bearer s3cre"}),
                    ("basic", "/api/metrics", {"Authorization": "Basic s3cret"}),
                ]:
                    async with client.get(server.make_url(path), headers=headers) as response:
                        statuses[name] = response.status
            return statuses

    statuses = asyncio.run(main())
    assert statuses == {"health": 200, "voices": 401, "metrics": 401, "voices_token": 200, "metrics_bearer": 200,
                        "wrong": 401, "basic": 401}


def test_origin_allow_list(models):
    """Browsers send Origin: pages of the server's own host pass, others only when listed (or "*"); clients that
    send no Origin (moshi's, ours) always pass."""

    async def attempt(url: str, origin: str | None) -> int:
        headers = {"Origin": origin} if origin else {}
        async with ClientSession() as client:
            try:
                async with client.ws_connect(url, headers=headers) as ws:
                    kind = protocol.decode((await ws.receive(timeout=30)).data).kind
                    return 101 if kind == protocol.Kind.HANDSHAKE else -1
            except WSServerHandshakeError as e:
                return e.status

    async def main():
        results = {}
        for allow in ((), ("https://app.example",), ("*",)):
            async with serve(models, allow_origins=allow) as server:
                url = str(server.make_url("/api/chat"))
                own = f"http://127.0.0.1:{server.port}"
                for origin in (None, own, "https://app.example", "http://evil.example"):
                    results[allow, origin and origin.replace(own, "own")] = await attempt(url, origin)
        return results

    results = asyncio.run(main())
    assert results == {
        ((), None): 101, ((), "own"): 101, ((), "https://app.example"): 403, ((), "http://evil.example"): 403,
        (("https://app.example",), None): 101, (("https://app.example",), "own"): 101,
        (("https://app.example",), "https://app.example"): 101, (("https://app.example",), "http://evil.example"): 403,
        (("*",), None): 101, (("*",), "own"): 101, (("*",), "https://app.example"): 101,
        (("*",), "http://evil.example"): 101,
    }


def test_access_log_redacts_the_token(caplog):
    caplog.set_level(logging.INFO, logger="test.access")
    logger = RedactingAccessLogger(logging.getLogger("test.access"), '%r %s')
    request = make_mocked_request("GET", "/api/chat?x=1&auth_token=s3cret")
    logger.log(request, web.Response(status=101), 0.01)
    logger.log(make_mocked_request("GET", "/api/health"), web.Response(), 0.01)
    lines = [r.getMessage() for r in caplog.records]
    assert "s3cret" not in "".join(lines)
    assert "auth_token=***" in lines[0] and "x=1" in lines[0] and "/api/health" in lines[1]
