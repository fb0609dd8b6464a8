"""Interoperability with the reference implementation (moshi==0.2.13, a test-only oracle), both ways.

1. ``fullduplex client`` against moshi's own Python server (``python -m moshi.server``), run as a subprocess on
   tiny random checkpoints written in the released formats: the LM (``save_lm``) with a moshi ``config.json``
   (``LMConfig.to_moshi_dict``), the tiny Mimi (``save_mimi``) whose architecture the reference reads from that
   config's ``mimi_config_name`` (a ``file://`` JSON of ``MimiConfig.to_moshi_dict``: the reference server does
   not hard-code Mimi when a config names one, and takes ``max(dep_q, n_q - dep_q)`` codebooks from the LM
   config), and a SentencePiece tokenizer of the LM's ``text_card`` pieces.

   moshi 0.2.13's server cannot start with ``--device cpu`` on a CPU-only torch: its warm-up ends with an
   unconditional ``torch.cuda.synchronize()``, which raises "Torch not compiled with CUDA enabled" (moshi issue
   #181). The test therefore starts it through a three-line wrapper that replaces ``torch.cuda.synchronize`` with
   a no-op when CUDA is unavailable, and then runs ``moshi.server`` as ``__main__`` with the usual flags; nothing
   else is changed.

2. moshi's own command-line client (``moshi.client.Connection``: sphn ``OpusStreamWriter``/``Reader`` at 24 kHz,
   one ``0x01`` message of Ogg pages per 1920-sample block as it comes) against ``fullduplex``'s ``Server``. The
   client needs a sound card (``sounddevice``, not installed): the test gives it a stand-in ``sounddevice``
   module whose input stream plays a file in real time and whose output stream records what it would play.

Skipped only when the reference ``moshi`` package is not importable.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
import wave
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestServer

import fullduplex as fd
from fullduplex.cli.client import FAST_WAIT, FRAME, converse, words
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.inference import Engine, Sampling, generate
from fullduplex.lm import lm_preset
from fullduplex.server.app import Server
from fullduplex.text import train_tokenizer
from tests.helpers import ASSETS, assert_one_line_error, randomize_, tiny_models

pytest.importorskip("moshi", reason="reference oracle: pip install --no-deps moshi==0.2.13 (scripts/setup.sh)")

SPEECH = ASSETS / "speech_en.wav"  # 24 kHz mono 16-bit
SENTENCES = ["hello there how are you", "fine thanks and you", "good morning to you", "see you later then"] * 8
START_TIMEOUT = 60.0  # seconds for the reference server to load the models and open its port
# moshi.server as `python -m moshi.server`, except that torch.cuda.synchronize() (called unconditionally at the
# end of its warm-up) becomes a no-op on a machine without CUDA; see the module docstring.
WRAPPER = """\
import runpy
import torch
if not torch.cuda.is_available():
    torch.cuda.synchronize = lambda *args, **kwargs: None
runpy.run_module("moshi.server", run_name="__main__", alter_sys=True)
"""
TEXT_LOG = re.compile(r"text token '(.*)'$")  # the reference server logs every text piece it sends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_input(path: Path, frames: int) -> np.ndarray:
    """A 16-bit mono WAV of the speech sample, ``frames`` frames less 100 samples (not a whole frame); int16 [S]."""
    with wave.open(str(SPEECH)) as f:
        data = np.frombuffer(f.readframes(frames * FRAME - 100), "<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(24000)
        f.writeframes(data.tobytes())
    return data


def write_input_array(frames: int) -> np.ndarray:
    """The same samples as :func:`write_input`, float32 in [-1, 1)."""
    with wave.open(str(SPEECH)) as f:
        return np.frombuffer(f.readframes(frames * FRAME - 100), "<i2").astype(np.float32) / 32768


class ReferenceServer:
    """``python -m moshi.server`` on 127.0.0.1 (stdout and stderr in ``log``)."""

    def __init__(self, root: Path) -> None:
        torch.manual_seed(0)
        lm_config, mimi_config = lm_preset("tiny"), mimi_preset("tiny")
        lm = fd.save_lm(fd.LMModel(lm_config), root / "model.safetensors")
        mimi = fd.save_mimi(randomize_(fd.Mimi(mimi_config).eval()), root / "mimi.safetensors")
        tokenizer = train_tokenizer(SENTENCES, root / "tokenizer", lm_config.text_card, model_type="bpe").path
        (root / "mimi_config.json").write_text(json.dumps(mimi_config.to_moshi_dict()))
        config = {**lm_config.to_moshi_dict(), "mimi_config_name": f"file://{root / 'mimi_config.json'}"}
        (root / "config.json").write_text(json.dumps(config))
        (root / "moshi_server.py").write_text(WRAPPER)
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        env = {**os.environ, "NO_TORCH_COMPILE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(root / "moshi_server.py"), "--host", "127.0.0.1", "--port", str(self.port),
                 "--moshi-weight", str(lm), "--mimi-weight", str(mimi), "--tokenizer", str(tokenizer),
                 "--config-path", str(root / "config.json"), "--device", "cpu", "--static", "none"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"moshi.server exited with status {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"moshi.server did not open port {self.port} within {START_TIMEOUT:g} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, start: int, timeout: float = 5.0) -> str:
        """The log after offset ``start`` once it contains ``needle`` (or as it is after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while needle not in self.log_text()[start:] and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.log_text()[start:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def reference_server(tmp_path_factory):
    server = ReferenceServer(tmp_path_factory.mktemp("moshi_server"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def read_stereo(path: Path) -> tuple[np.ndarray, int]:
    """(int16 [2, S], sample rate) of a 16-bit stereo WAV."""
    with wave.open(str(path)) as f:
        assert f.getnchannels() == 2 and f.getsampwidth() == 2
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, 2).T, f.getframerate()


def logged_pieces(log: str) -> list[tuple[int, str]]:
    """The text pieces in moshi.server's log, each with the input frame whose arrival made the server send it (it
    logs the pieces of an input frame, then "frame handled in ... ms")."""
    frame, pieces = 0, []
    for line in log.splitlines():
        if m := TEXT_LOG.search(line):
            pieces.append((frame, m.group(1)))
        elif "frame handled in" in line:
            frame += 1
    return pieces


def spoken_words(pieces: list[str]) -> str:
    """Text pieces as words separated by single spaces (how the transcript's "text" joins them)."""
    return " ".join("".join(pieces).split())


# --- 1. fullduplex client -> moshi.server ------------------------------------------------------------------


def test_client_real_time_against_reference_server(reference_server, tmp_path, capsys):
    """Real time: handshake, the reply at 24 kHz placed as documented (the reference answers input frame t only
    once it has frame t+1, so its first frame is missing and every frame's latency includes one frame, 80 ms),
    every text piece the server logged in the transcript, and a clean close on both sides."""
    frames = 20
    pcm = write_input(tmp_path / "talk.wav", frames)
    start = len(reference_server.log_text())
    code = main(["client", "--quiet", "--url", reference_server.url, "--input", str(tmp_path / "talk.wav"),
                 "--output", str(tmp_path / "reply.wav"), "--transcript", str(tmp_path / "reply.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "wrote stereo audio" in out and "wrote transcript" in out
    assert re.search(r"latency .*: p50 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms over 19 frames", err), err

    audio, rate = read_stereo(tmp_path / "reply.wav")
    assert rate == 24000 and audio.shape == (2, len(pcm))
    assert np.array_equal(audio[1], pcm)  # right: the input, unchanged
    transcript = json.loads((tmp_path / "reply.json").read_text())
    latency = transcript["latency_ms"]
    # The reference sends nothing for input frame 0: frame 0 of the left channel is a late frame of silence,
    # its stream starts at frame 1, and its last frame (answering an input frame that never comes) is not measured.
    assert latency["mode"] == "real-time" and latency["late_frames"] >= 1 and 0 < latency["frames"] <= frames - 1
    assert not audio[0, :FRAME].any()
    assert np.abs(audio[0, FRAME:].astype(np.float32)).mean() > 30  # the server's audio (random Mimi: noise)
    # Frame t's audio is sent once input frame t+1 arrived, which the client sends 80 ms after frame t.
    assert 80 <= latency["p50"] <= latency["p95"] <= latency["p99"]

    log = reference_server.wait_log("done with connection", start)
    assert "done with connection" in log, log  # the server saw our close and released its lock
    sent = logged_pieces(log)  # (input frame whose arrival made the server send it, piece)
    got = transcript["text"]
    assert got and transcript["words"] and transcript["duration"] == len(pcm) / 24000
    assert spoken_words([piece for _, piece in sent]).startswith(got)
    if latency["late_frames"] == 1:  # every frame on time (a loaded machine may make some late): then a piece
        # sent on input frame t's arrival was received before the tick of frame t, and placed at frame t.
        assert transcript["words"] == words(sent, transcript["duration"]) and latency["frames"] == frames - 1
    assert all(w["start"] < w["end"] <= transcript["duration"] for w in transcript["words"])


def test_client_fast_against_reference_server(reference_server):
    """--fast: the reference stays silent for the first frame (the client waits at most 0.5 s for it), then
    answers each frame as soon as it has the next: the client must not wait 0.5 s for every frame."""
    frames = 31  # the whole sample (2.5 s)
    pcm = write_input_array(frames)
    start = len(reference_server.log_text())

    async def run():
        began = time.monotonic()
        result = await converse(reference_server.url, pcm, fast=True, timeout=10.0)
        return result, time.monotonic() - began

    result, seconds = asyncio.run(run())
    assert seconds < frames * FAST_WAIT / 2  # ~1.7 s here (0.5 s for frame 0, 0.5 s of drain); stalling: 16 s
    assert len(result.left) == len(pcm) and not result.left[:FRAME].any()
    assert np.abs(result.left[FRAME:]).mean() > 1e-3
    assert len(result.latency) == frames - 1 and result.late_frames >= 1
    # The server's frame 0 comes once input frame 1 was sent: its pieces land at frame 1 or, when they arrive
    # just after the audio that let the client move on, at frame 2.
    assert result.pieces and all(1 <= frame < frames for frame, _ in result.pieces)
    log = reference_server.wait_log("done with connection", start)
    assert "done with connection" in log
    sent = [piece for _, piece in logged_pieces(log)]
    assert spoken_words([piece for _, piece in result.pieces]) and spoken_words(sent).startswith(
        spoken_words([piece for _, piece in result.pieces]))  # all but those arriving during the drain


def test_client_reports_a_busy_reference_server(reference_server, tmp_path, capsys):
    """moshi's server serves one conversation at a time and keeps a second client waiting without a word: ours
    gives up after --timeout with one error line that says so, and writes nothing."""
    write_input(tmp_path / "talk.wav", 5)

    async def hold_and_try():
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{reference_server.url}/api/chat") as ws:
            first = await ws.receive(timeout=10)
            assert first.data == b"\x00"  # the Python server's handshake: the kind byte alone
            return await asyncio.to_thread(main, ["client", "--quiet", "--url", reference_server.url, "--timeout",
                                                  "1", "--input", str(tmp_path / "talk.wav"), "--output",
                                                  str(tmp_path / "reply.wav")])

    code = asyncio.run(hold_and_try())
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "no handshake within 1 s", "one at a time")
    assert not (tmp_path / "reply.wav").exists()

    async def next_visitor() -> bytes:  # the server is free again once both sockets are gone
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{reference_server.url}/api/chat") as ws:
            return (await ws.receive(timeout=10)).data

    assert asyncio.run(next_visitor()) == b"\x00"


# --- 2. moshi's client -> fullduplex's Server ----------------------------------------------------------------


class FakeSoundDevice:
    """Stand-ins for ``sounddevice.InputStream``/``OutputStream`` as moshi's client uses them: the input stream
    calls back with ``input`` one block of [blocksize, 1] every block's duration (whole blocks only, then sets
    ``input_done``); the output stream asks for one block every block's duration and keeps in ``played`` those
    the client filled with audio (not those it reported as a lag, which it fills with silence)."""

    def __init__(self, input: np.ndarray, printer: RecordingPrinter) -> None:
        self.input, self.printer = input, printer
        self.played: list[np.ndarray] = []
        self.input_done = threading.Event()
        self.module = types.ModuleType("sounddevice")
        self.module.InputStream = lambda **kw: _Stream(kw, self._feed)
        self.module.OutputStream = lambda **kw: _Stream(kw, self._play)

    def _feed(self, stream: _Stream, block: int) -> bool:
        chunk = self.input[block * stream.size : (block + 1) * stream.size]
        if len(chunk) < stream.size:
            self.input_done.set()
            return False
        stream.callback(chunk.reshape(-1, 1).copy(), stream.size, None, None)
        return True

    def _play(self, stream: _Stream, block: int) -> bool:
        out = np.full((stream.size, 1), np.nan, dtype=np.float32)
        lags = self.printer.lags
        stream.callback(out, stream.size, None, None)
        if self.printer.lags == lags:
            self.played.append(out[:, 0].copy())
        return True


class _Stream:
    def __init__(self, kw: dict, tick) -> None:
        assert kw["samplerate"] == 24000 and kw["channels"] == 1
        self.size, self.callback, self.period = kw["blocksize"], kw["callback"], kw["blocksize"] / kw["samplerate"]
        self._tick, self._stop = tick, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        began, block = time.monotonic(), 0
        while not self._stop.is_set() and self._tick(self, block):
            block += 1
            self._stop.wait(max(0.0, began + block * self.period - time.monotonic()))

    def __enter__(self) -> _Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


class RecordingPrinter:
    """moshi's client printer interface: keeps the tokens and the log lines."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.logs: list[tuple[str, str]] = []
        self.lags = 0

    def print_header(self) -> None: ...

    def print_token(self, token: str) -> None:
        self.tokens.append(token)

    def log(self, level: str, msg: str) -> None:
        self.logs.append((level, msg))

    def print_lag(self) -> None:
        self.lags += 1

    def print_pending(self) -> None: ...


def as_the_server_hears(pcm: np.ndarray, block: int = FRAME) -> np.ndarray:
    """``pcm`` through sphn's Ogg/Opus writer in ``block``-sample appends and back through its reader."""
    import sphn

    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
    decoded = [reader.append_bytes(writer.append_pcm(pcm[i : i + block])) for i in range(0, len(pcm) - block + 1, block)]
    return np.concatenate(decoded)


def test_reference_client_against_our_server(tmp_path, monkeypatch):
    """moshi's client, unchanged, talking to ``fullduplex``'s server in real time: it gets the handshake, audio it
    plays (every frame it sent answered) and exactly the text ``generate`` writes for what the server heard."""
    mimi, lm, tokenizer = tiny_models(tmp_path)
    greedy = Sampling(temp=0, temp_text=0)
    frames = 15
    pcm = write_input_array(frames) * 0.8  # 14 whole blocks: the stand-in microphone delivers whole blocks only
    sent = (frames - 1) * FRAME
    printer = RecordingPrinter()
    device = FakeSoundDevice(pcm, printer)
    monkeypatch.setitem(sys.modules, "sounddevice", device.module)
    monkeypatch.delitem(sys.modules, "moshi.client", raising=False)
    import moshi.client as reference_client

    monkeypatch.delitem(sys.modules, "moshi.client")  # not kept beyond this test with the stand-in in it

    async def run() -> None:
        server = Server(Engine(mimi, lm, greedy, max_sessions=2), tokenizer)
        async with TestServer(server.app(), host="127.0.0.1") as test_server, aiohttp.ClientSession() as http:
            # What moshi.client.run does once it has built ws://HOST:PORT/api/chat from --host and --port.
            async with http.ws_connect(f"ws://127.0.0.1:{test_server.port}/api/chat") as ws:
                connection = reference_client.Connection(printer, ws, event_loop=asyncio.get_running_loop())
                task = asyncio.create_task(connection.run())
                assert await asyncio.to_thread(device.input_done.wait, 10)
                deadline = time.monotonic() + 30  # then let it play the rest of the answer (slow on a busy machine)
                while len(device.played) * FRAME < sent and time.monotonic() < deadline and not task.done():
                    await asyncio.sleep(0.02)
                await ws.close()
                await asyncio.wait_for(task, 5)

    asyncio.run(run())
    assert not [entry for entry in printer.logs if entry[0] == "error"], printer.logs
    # It warns about the handshake (it handles only audio and text); nothing else surprised it.
    assert [msg for _, msg in printer.logs if "unknown message kind" in msg] == ["unknown message kind 0"]
    # Every frame it sent was answered with 24 kHz audio that it played (the random Mimi's noise, not silence).
    played = np.concatenate(device.played) if device.played else np.zeros(0, np.float32)
    assert len(played) == sent and np.abs(played).mean() > 1e-3
    server_input = torch.from_numpy(as_the_server_hears(pcm[:sent]))[None]
    assert server_input.shape[-1] == sent
    (alone,) = generate([server_input], mimi, lm, tokenizer, greedy, batch_size=1)
    want = [tokenizer.piece(int(t)).replace("\u2581", " ") for t in alone.tokens[0] if t >= 0 and tokenizer.is_text(int(t))]
    assert want and "".join(printer.tokens) == "".join(want)
