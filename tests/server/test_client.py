"""``fullduplex client`` end to end against a small fake Moshi server on 127.0.0.1 (a thread of its own).

The fake server echoes the user's audio frame by frame (so the left channel must be the input, delayed by two
Opus rounds) and sends a text piece every fourth frame, before that frame's audio. Failures (an Error message, no
handshake, nothing listening, a missing token, garbage) exit 2 with one ``error:`` line and write nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from fullduplex.cli.client import FRAME, chat_url, latency_summary, words
from fullduplex.cli.main import main
from fullduplex.server import protocol
from tests.helpers import ASSETS, assert_one_line_error

SPEECH = ASSETS / "speech_en.wav"  # 24 kHz mono, 60169 samples
PIECES = ["\u2581hel", "lo", "\u2581there", "\u2581how", "\u2581are", "\u2581you"]
OPUS_LAG = 2 * 156  # samples: one Opus encode/decode each way


class FakeServer:
    """A Moshi-protocol server: ``echo`` answers each 1920 samples with them; ``error`` refuses with an Error;
    ``error_later`` fails after 3 frames; ``mute`` never sends its handshake; ``garbage`` answers with bad Ogg;
    ``auth`` wants the token ``secret``; ``moshi`` ignores the first frame, as moshi's own server does. ``requests`` records each connection's Authorization header and query."""

    def __init__(self, mode: str = "echo") -> None:
        self.mode = mode
        self.requests: list[dict[str, object]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/api/chat", self.chat)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def chat(self, request: web.Request) -> web.WebSocketResponse:
        self.requests.append({"authorization": request.headers.get("Authorization"), "query": dict(request.query)})
        if self.mode == "auth" and request.headers.get("Authorization") != "Bearer secret":
            raise web.HTTPUnauthorized(text="a valid auth token is required")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.mode == "error":
            await ws.send_bytes(protocol.error("all 2 session slots are busy"))
            await ws.close()
            return ws
        if self.mode != "mute":
            await ws.send_bytes(protocol.handshake())
        decoder, encoder = protocol.OpusDecoder(), protocol.OpusEncoder()
        pending, frames, skipped = np.zeros(0, np.float32), 0, False
        async for msg in ws:
            message = protocol.decode(msg.data)
            if message.kind != protocol.Kind.AUDIO:
                continue
            pending = np.concatenate([pending, decoder.decode(message.payload)])
            while len(pending) >= FRAME:
                frame, pending = pending[:FRAME], pending[FRAME:]
                if self.mode == "error_later" and frames == 3:
                    await ws.send_bytes(protocol.error("the model crashed"))
                    await ws.close()
                    return ws
                if self.mode == "moshi" and frames == 0 and not skipped:  # nothing while the model warms up
                    skipped = True
                    continue
                if self.mode == "garbage":
                    await ws.send_bytes(protocol.audio(b"not ogg at all"))
                    continue
                if frames % 4 == 0:
                    await ws.send_bytes(protocol.text(PIECES[frames // 4 % len(PIECES)]))
                await ws.send_bytes(protocol.audio(encoder.encode(frame)))
                frames += 1
        return ws


@contextmanager
def serving(mode: str = "echo") -> Iterator[FakeServer]:
    server = FakeServer(mode)
    server._thread.start()
    assert server._ready.wait(10)
    try:
        yield server
    finally:
        server._loop.call_soon_threadsafe(server._loop.stop)
        server._thread.join(10)


def client(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main(["client", "--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def read_stereo(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as f:
        assert f.getnchannels() == 2 and f.getsampwidth() == 2
        data = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, 2).T / 32768.0
        return data.astype(np.float32), f.getframerate()


def best_lag(reference: np.ndarray, delayed: np.ndarray, max_lag: int = 1000) -> int:
    """The delay (samples) at which ``delayed`` best matches ``reference`` (cross-correlation peak)."""
    reference, delayed = reference.astype(np.float32), delayed.astype(np.float32)  # mixed dtypes: no BLAS, slow
    n = min(len(reference), len(delayed)) - max_lag
    return int(np.argmax([np.dot(reference[:n], delayed[lag : lag + n]) for lag in range(max_lag)]))


def short_input(tmp_path: Path, frames: int) -> Path:
    with wave.open(str(SPEECH)) as f:
        data = f.readframes(frames * FRAME - 100)  # not a whole number of frames
    path = tmp_path / "short.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(24000)
        f.writeframes(data)
    return path


def test_fast_echo_end_to_end(tmp_path, capsys):
    out_wav, out_json = tmp_path / "reply.wav", tmp_path / "reply.json"
    with serving() as server:
        code, out, err = client(capsys, "--url", server.url, "--input", SPEECH, "--output", out_wav,
                                "--transcript", out_json, "--fast")
    assert code == 0, err
    assert "latency" in err and "p50" in err and "p99" in err and "wrote stereo audio, 2.51 s" in out
    stereo, rate = read_stereo(out_wav)
    with wave.open(str(SPEECH)) as f:
        user = np.frombuffer(f.readframes(f.getnframes()), "<i2") / 32768.0
    assert rate == 24000 and stereo.shape == (2, 60169)
    np.testing.assert_array_equal(stereo[1], user)  # right: the input, unchanged
    lag = best_lag(user, stereo[0])
    assert abs(lag - OPUS_LAG) <= 8  # left: the echo of frame t at frame t, plus the Opus look-ahead
    assert np.corrcoef(user[: len(user) - lag], stereo[0][lag:])[0, 1] > 0.8
    transcript = json.loads(out_json.read_text())
    frames = -(-60169 // FRAME)  # 32
    assert transcript["input"] == str(SPEECH) and transcript["duration"] == pytest.approx(60169 / 24000)
    assert transcript["frame_rate"] == 12.5
    # Pieces at frames 0, 4, 8, ...: "▁hel" + "lo" join into one word spanning frames 0..4.
    assert [w["text"] for w in transcript["words"][:5]] == ["hello", "there", "how", "are", "you"]
    assert transcript["words"][0] == {"text": "hello", "start": 0.0, "end": 0.4}
    assert transcript["words"][1] == {"text": "there", "start": 0.64, "end": 0.72}
    assert transcript["text"].startswith("hello there how are you hello")
    assert all(0 <= w["start"] < w["end"] <= transcript["duration"] for w in transcript["words"])
    latency = transcript["latency_ms"]
    assert latency["frames"] == frames and latency["late_frames"] == 0 and latency["mode"] == "fast"
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] < 5000


def test_real_time_pacing_and_alignment(tmp_path, capsys):
    path = short_input(tmp_path, 8)
    out_wav, out_json = tmp_path / "rt.wav", tmp_path / "rt.json"
    with serving() as server:
        started = time.monotonic()
        code, _, err = client(capsys, "--url", server.url, "--input", path, "-o", out_wav, "--transcript", out_json)
        elapsed = time.monotonic() - started
    assert code == 0, err
    assert elapsed >= 7 * 0.08  # one frame every 80 ms
    stereo, _ = read_stereo(out_wav)
    assert stereo.shape == (2, 8 * FRAME - 100)
    latency = json.loads(out_json.read_text())["latency_ms"]
    assert latency["mode"] == "real-time" and latency["frames"] == 8
    if latency["late_frames"] == 0:  # the echo came back within 80 ms each time: placed at its own frame
        assert abs(best_lag(stereo[1], stereo[0], 600) - OPUS_LAG) <= 8


def test_fast_with_a_server_silent_at_first(tmp_path, capsys):
    """moshi's server answers nothing to the first frame: it stays silent (a late frame), and the answer to frame
    t still lands at frame t; the latency then counts from frame 0 to the server's first audio."""
    path = short_input(tmp_path, 6)
    out_wav, out_json = tmp_path / "m.wav", tmp_path / "m.json"
    with serving("moshi") as server:
        code, _, err = client(capsys, "--url", server.url, "--input", path, "-o", out_wav, "--transcript", out_json,
                              "--fast")
    assert code == 0, err
    stereo, _ = read_stereo(out_wav)
    assert not stereo[0, :FRAME].any() and stereo[0, FRAME + OPUS_LAG :].any()
    assert abs(best_lag(stereo[1, FRAME:], stereo[0, FRAME:], 600) - OPUS_LAG) <= 8  # echo of frame t at frame t
    latency = json.loads(out_json.read_text())["latency_ms"]
    assert latency["late_frames"] == 1 and latency["frames"] == 5  # the server's stream is one frame short
    assert latency["p99"] >= 500  # frame 0 waited FAST_WAIT for the answer to frame 1


def test_auth_token_reaches_the_server(tmp_path, capsys):
    path = short_input(tmp_path, 2)
    with serving("auth") as server:
        refused = client(capsys, "--url", f"127.0.0.1:{server.port}", "--input", path, "--fast")
        code, _, err = client(capsys, "--url", f"http://127.0.0.1:{server.port}/?x=1", "--input", path, "--fast",
                              "--auth-token", "secret")
    assert_one_line_error(*refused[::2], "HTTP 401", "--auth-token")
    assert code == 0, err
    assert server.requests[-1] == {"authorization": "Bearer secret", "query": {"x": "1", "auth_token": "secret"}}


@pytest.mark.parametrize(
    "mode, extra, needles",
    [
        ("error", (), ("the server says: all 2 session slots are busy",)),
        ("error_later", (), ("the server says: the model crashed",)),
        ("mute", ("--timeout", "0.3"), ("no handshake within 0.3 s", "--timeout")),
        ("garbage", (), ("malformed message", "OggS")),
    ],
)
def test_server_failures_exit_2_and_write_nothing(tmp_path, capsys, mode, extra, needles):
    out_wav, out_json = tmp_path / "o.wav", tmp_path / "o.json"
    with serving(mode) as server:
        code, out, err = client(capsys, "--url", server.url, "--input", SPEECH, "-o", out_wav, "--transcript",
                                out_json, "--fast", *extra)
    assert_one_line_error(code, err, *needles)
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == []


def test_nothing_listening(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    code, _, err = client(capsys, "--url", f"ws://127.0.0.1:{port}", "--input", SPEECH, "-o", tmp_path / "o.wav")
    assert_one_line_error(code, err, f"could not connect to ws://127.0.0.1:{port}/api/chat", "refused")
    assert not (tmp_path / "o.wav").exists()


def test_bad_arguments(tmp_path, capsys):
    assert_one_line_error(*client(capsys, "--url", "ftp://host", "--input", SPEECH)[::2], "--url")
    assert_one_line_error(*client(capsys, "--input", SPEECH, "-o", SPEECH)[::2], "also the input")
    assert_one_line_error(*client(capsys, "--input", SPEECH, "-o", tmp_path / "no" / "o.wav")[::2], "does not exist")
    assert_one_line_error(*client(capsys, "--input", tmp_path / "missing.wav")[::2], "not found")


def test_chat_url_normalization():
    assert str(chat_url("ws://127.0.0.1:8998/api/chat")) == "ws://127.0.0.1:8998/api/chat"
    assert str(chat_url("127.0.0.1:9000")) == "ws://127.0.0.1:9000/api/chat"
    assert str(chat_url("gpu-box")) == "ws://gpu-box:8998/api/chat"
    assert str(chat_url("https://host.example/moshi/")) == "wss://host.example/moshi/api/chat"
    assert str(chat_url("http://h:1/api/chat?a=b")) == "ws://h:1/api/chat?a=b"


def test_words_and_latency_helpers():
    pieces = [(0, " hel"), (1, "lo"), (3, " you"), (40, " late")]
    assert words(pieces, 1.0) == [{"text": "hello", "start": 0.0, "end": 0.16}, {"text": "you", "start": 0.24, "end": 0.32}]
    assert latency_summary([]) == {"p50": None, "p95": None, "p99": None}
    assert latency_summary([i / 1000 for i in range(1, 101)]) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
