"""Latency statistics on hand-made timelines, and ``fullduplex eval latency`` against a real server running the
tiny random models on 127.0.0.1 (in a thread of its own)."""

from __future__ import annotations

import asyncio
import json
import threading
import wave
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from aiohttp import web

from fullduplex.cli.main import main
from fullduplex.eval.latency import response_latencies, response_summary, summary
from fullduplex.eval.vad import VadSettings, speech_intervals
from fullduplex.inference import Engine, Sampling
from fullduplex.server.app import Server
from tests.eval.conftest import write_wav
from tests.helpers import assert_one_line_error, speech, tiny_models


def test_summary_percentiles():
    assert summary([]) == {"n": 0, "mean": None, "p50": None, "p90": None, "p95": None, "p99": None, "max": None}
    s = summary([i / 1000 for i in range(100, 0, -1)])
    assert s == {"n": 100, "mean": 50.5, "p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "max": 100.0}


def test_response_latencies_on_a_known_timeline():
    user = [(0.5, 2.0), (2.1, 3.0), (6.0, 7.0), (9.0, 9.5)]  # IPUs: 0.5-3.0 (0.1 s merged), 6-7, 9-9.5
    reply = [(3.4, 5.0), (6.5, 8.0)]
    got = response_latencies(user, reply, duration=10.0, min_silence=0.2)
    assert [r["user_end"] for r in got] == [3.0, 7.0, 9.5]
    assert got[0]["latency"] == pytest.approx(0.4) and not got[0]["already_speaking"]
    assert got[1] == {"user_end": 7.0, "latency": 0.0, "already_speaking": True}  # talking over the user
    assert got[2]["latency"] is None  # silent until the input ends
    # A reply that starts only after the user spoke again does not answer the earlier turn.
    late = response_latencies([(0.0, 1.0), (2.0, 3.0)], [(2.5, 4.0)], duration=5.0)
    assert late[0]["latency"] is None and late[1]["latency"] == 0.0
    s = response_summary(got)
    assert s["user_turns"] == 3 and s["no_response"] == 1 and s["already_speaking"] == 1 and s["n"] == 2
    assert s["p50"] == 0.0 and s["max"] == pytest.approx(400.0)


@contextmanager
def real_server() -> Iterator[str]:
    """``fullduplex serve`` in-process on the tiny random models (greedy), on a free port."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        mimi, lm, tokenizer = tiny_models(Path(folder))
        server = Server(Engine(mimi, lm, Sampling(temp=0, temp_text=0), max_sessions=4), tokenizer)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        state: dict = {}

        def run() -> None:
            asyncio.set_event_loop(loop)
            runner = web.AppRunner(server.app(), shutdown_timeout=1.0)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            state["port"] = runner.addresses[0][1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(30)
        try:
            yield f"ws://127.0.0.1:{state['port']}"
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


def read_stereo(path) -> np.ndarray:
    with wave.open(str(path)) as f:
        assert f.getnchannels() == 2 and f.getframerate() == 24000
        return (np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, 2).T / 32768.0).astype(np.float32)


def test_cli_against_a_real_server(tmp_path, capsys):
    user = np.concatenate([speech(1.2)[0, 0].numpy(), np.zeros(int(0.8 * 24000), np.float32)])  # 2 s: 25 frames
    path = write_wav(tmp_path / "user.wav", user)
    out = tmp_path / "latency"
    with real_server() as url:
        code = main(["eval", "latency", "--url", url, "--input", str(path), "--sessions", "2", "--fast", "--quiet",
                     "--output", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["latency_cdf.png", "report.json", "report.md", "response_cdf.png", "session-0.wav",
                     "session-1.wav"]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["sessions"] == 2 and report["settings"]["mode"] == "fast"
    assert report["settings"]["reply_vad"]["method"] == "level" and report["settings"]["user_vad"]["method"] == "silero"
    assert report["user_speech"] and report["user_speech"][-1][1] <= 1.3  # the user stops within the first 1.2 s
    for session in report["sessions"]:
        frame = session["frame_latency_ms"]
        assert session["frames"] == frame["n"] >= 24 and 0 < frame["p50"] <= frame["p99"] <= frame["max"] < 5000
        assert summary(session["frame_latency_s"]) == frame
        # The response latencies are those of the recorded reply, recomputed here from the saved audio.
        stereo = read_stereo(out / f"session-{session['session']}.wav")
        assert np.abs(stereo[1] - user).max() <= 1 / 32768
        level = VadSettings("level", level_dbfs=-40)
        from fullduplex.codec.audio import resample

        reply = resample(torch.from_numpy(stereo[0])[None], 24000, 16000)[0].numpy()
        again = response_latencies(report["user_speech"], speech_intervals(reply, level), 2.0, 0.2)
        assert [r["user_end"] for r in again] == [r["user_end"] for r in session["responses"]]
        for a, b in zip(again, session["responses"], strict=True):
            assert (a["latency"] is None) == (b["latency"] is None)
            if a["latency"] is not None:
                assert a["latency"] == pytest.approx(b["latency"], abs=0.031)  # one 30 ms frame of 16-bit rounding
    pooled = report["pooled"]
    assert pooled["sessions_ok"] == 2 and pooled["frame_latency_ms"]["n"] == sum(s["frames"] for s in report["sessions"])
    assert "| **pooled** |" in (out / "report.md").read_text()


def test_cli_errors(tmp_path, capsys):
    silent = write_wav(tmp_path / "silent.wav", np.zeros(24000))
    code = main(["eval", "latency", "--url", "ws://127.0.0.1:9", "--input", str(silent), "--output",
                 str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "found no speech")
    path = write_wav(tmp_path / "user.wav", speech(1.0)[0, 0].numpy())
    code = main(["eval", "latency", "--url", "ws://127.0.0.1:9", "--input", str(path), "--sessions", "2",
                 "--output", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 3 and err[0].startswith("warning: session 0 failed: could not connect")
    assert err[2].startswith("error: no session with ws://127.0.0.1:9/api/chat succeeded")
    assert not (tmp_path / "o").exists()
