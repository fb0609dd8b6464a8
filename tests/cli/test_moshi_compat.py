"""Drop-in for moshi users: ``python -m fullduplex.run_inference`` and ``python -m fullduplex.server`` against the
reference (moshi==0.2.13, a test-only oracle) on one tiny random checkpoint written in the released layout (LM,
Mimi, tokenizer, a moshi ``config.json`` naming the Mimi architecture by ``mimi_config_name``).

run_inference: both tools run as subprocesses with the same command line (batch of 2); they must write the same
files (names, mono 16-bit, 24 kHz, lengths, every sample) and print the same words, greedy and sampled from
moshi's seed. The tiny Mimi keeps its transformer context of 10 steps (0.4 s), so the run (20 steps of 25 Hz in
each direction) goes past it: ``Mimi.match_moshi`` reproduces moshi's streaming window and rounding there too.

server: started with the flags of moshi's README examples on local files; moshi's own client talks to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fullduplex as fd
from fullduplex.cli.models import sampling_from_args
from fullduplex.codec import MimiConfig, mimi_preset
from fullduplex.inference import Sampling
from fullduplex.lm import lm_preset
from fullduplex.text import train_tokenizer
from tests.helpers import ASSETS, assert_one_line_error, randomize_

pytest.importorskip("moshi", reason="reference oracle: pip install --no-deps moshi==0.2.13 (scripts/setup.sh)")

FRAME = 1920
FRAMES = 10
SENTENCES = ["hello there how are you", "fine thanks and you", "good morning to you", "see you later then"] * 8
ENV = {**os.environ, "NO_TORCH_COMPILE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moshi_ckpt")
    torch.manual_seed(0)
    lm_config = lm_preset("tiny")
    mimi_dict = mimi_preset("tiny").to_moshi_dict()
    assert mimi_dict["transformer"]["context"] < 2 * FRAMES  # the run goes past the context (module docstring)
    lm = randomize_(fd.LMModel(lm_config))
    fd.save_lm(lm, root / "model.safetensors")
    fd.save_mimi(randomize_(fd.Mimi(MimiConfig.from_moshi_dict(mimi_dict)).eval()), root / "mimi.safetensors")
    train_tokenizer(SENTENCES, root / "tokenizer", lm_config.text_card, model_type="bpe")
    (root / "mimi_config.json").write_text(json.dumps(mimi_dict))
    config = {**lm_config.to_moshi_dict(), "mimi_config_name": f"file://{root / 'mimi_config.json'}"}
    (root / "config.json").write_text(json.dumps(config))
    (root / "greedy.json").write_text(json.dumps({**config, "lm_gen_config": {"use_sampling": False}}))
    # A moshi-finetune adapter on two layers (the server test), and the config.json that goes with it.
    g = torch.Generator().manual_seed(2)
    adapters = {}
    for module, (out_dim, in_dim) in {"transformer.layers.0.self_attn.in_projs.0": (192, 64),
                                      "linears.0": (lm_config.card, 32)}.items():
        adapters[f"{module}.lora_A.weight"] = torch.randn(4, in_dim, generator=g) * 0.1
        adapters[f"{module}.lora_B.weight"] = torch.randn(out_dim, 4, generator=g) * 0.1
    save_file(adapters, str(root / "lora.safetensors"))
    (root / "lora.json").write_text(json.dumps({**config, "lora": True, "lora_rank": 4, "lora_scaling": 2.0,
                                                "lm_gen_config": {"use_sampling": False}}))
    with wave.open(str(ASSETS / "speech_en.wav")) as f:
        data = f.readframes(FRAMES * FRAME + 500)  # and a part frame, which both drop
    with wave.open(str(root / "talk.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(24000)
        f.writeframes(data)
    return root


def model_flags(root: Path, config: str) -> list[str]:
    return ["--moshi-weight", str(root / "model.safetensors"), "--mimi-weight", str(root / "mimi.safetensors"),
            "--tokenizer", str(root / "tokenizer.model")] + (["--config", str(root / config)] if config else [])


def read_mono(path: Path) -> np.ndarray:
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 24000), path
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.int32)


def printed_words(stdout: str) -> str:
    """The model's words from run_inference's stdout: moshi prints them between its log lines ("[Info] ...",
    "Info: ..."), the last piece followed by "Info: processed ..." on the same line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", stdout)
    return "".join(re.sub(r"\[?Info\]?:?.*$", "", line) for line in text.splitlines()).strip()


CONFIGS = {"greedy": "greedy.json", "sampled": "config.json"}


@pytest.fixture(scope="module")
def runs(checkpoint, tmp_path_factory) -> dict[tuple[str, str], tuple[Path, str]]:
    """(mode, tool) -> (output folder, stdout): moshi's and our run_inference, greedy and sampled, with the same
    command line (batch of 2), the four processes at once."""
    root = tmp_path_factory.mktemp("run_inference")
    procs = {}
    for mode, config in CONFIGS.items():
        for tool in ("moshi", "fullduplex"):
            folder = root / f"{mode}-{tool}"
            folder.mkdir()
            args = [*model_flags(checkpoint, config), "--device", "cpu", "--batch-size", "2",
                    str(checkpoint / "talk.wav"), str(folder / "answer.wav")]
            procs[mode, tool] = folder, subprocess.Popen(
                [sys.executable, "-m", f"{tool}.run_inference", *args], cwd=root, env=ENV, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    for key, (folder, proc) in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{key}: {out}{err}"
        results[key] = folder, out
    return results


@pytest.mark.parametrize("mode", list(CONFIGS))
def test_run_inference_matches_moshi(runs, mode):
    """Same command line → same file names, lengths, words and samples, greedy (the model's lm_gen_config says
    use_sampling false) and sampled (its default settings, moshi's seed 4242)."""
    (ref_dir, ref_out), (our_dir, our_out) = runs[mode, "moshi"], runs[mode, "fullduplex"]
    ref_files = sorted(p.name for p in ref_dir.iterdir())
    assert ref_files == ["answer-0.wav", "answer-1.wav"]
    assert sorted(p.name for p in our_dir.iterdir()) == ref_files
    words = printed_words(our_out)
    assert words and words == printed_words(ref_out)
    items = []
    for name in ref_files:
        ref, ours = read_mono(ref_dir / name), read_mono(our_dir / name)
        assert len(ref) == len(ours) == FRAMES * FRAME  # one frame of answer per whole input frame
        assert np.abs(ref).mean() > 100  # the random Mimi's noise, not silence
        diff = np.abs(ref - ours)
        assert np.array_equal(ref, ours), (name, diff.max(), np.count_nonzero(diff))
        items.append(ours)
    # Greedy: the two copies of the batch agree; sampled: they differ (the draws are per item).
    assert np.array_equal(items[0], items[1]) == (mode == "greedy")


def test_run_inference_refusals(checkpoint, tmp_path, capsys):
    from fullduplex.run_inference import main

    talk = str(checkpoint / "talk.wav")
    code = main([*model_flags(checkpoint, "config.json"), "--device", "cpu", "--cfg-coef", "3", talk])
    assert_one_line_error(code, capsys.readouterr().err, "--cfg-coef 3", "no conditioning for classifier-free guidance")
    code = main([*model_flags(checkpoint, "config.json"), "--device", "cpu", talk, str(tmp_path / "no" / "x.wav")])
    assert_one_line_error(code, capsys.readouterr().err, "does not exist")
    assert main(["--help"]) == 0
    assert "moshi" in capsys.readouterr().out


def test_server_module_refusals(capsys):
    from fullduplex.server.__main__ import main

    assert_one_line_error(main(["--gradio-tunnel"]), capsys.readouterr().err, "--gradio-tunnel is not supported")
    assert_one_line_error(main(["--cfg-coef", "2"]), capsys.readouterr().err, "no conditioning")


def test_lm_gen_config_gives_defaults_and_flags_win():
    import argparse

    unset = argparse.Namespace(temp=None, temp_text=None, top_k=None, top_k_text=None, seed=1, cfg_coef=1.0)
    gen = {"temp": 0.6, "top_k_text": 40}
    assert sampling_from_args(unset, gen) == Sampling(0.6, 0.7, 250, 40, 1)
    assert sampling_from_args(argparse.Namespace(**{**vars(unset), "temp": 0.9}), gen).temp == 0.9
    greedy = sampling_from_args(unset, {"use_sampling": False})
    assert (greedy.temp, greedy.temp_text) == (0.0, 0.0)
    with pytest.raises(ValueError, match="lm_gen_config.temp must be a number"):
        sampling_from_args(unset, {"temp": "hot"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_with_moshi_readme_flags_talks_to_moshi_client(checkpoint, tmp_path, monkeypatch):
    """`python -m fullduplex.server` with moshi's README flags (local files, a LoRA adapter, --half, no page);
    moshi's own client, unchanged, gets the handshake and audio for every frame it sends."""
    from tests.server.test_reference_interop import FakeSoundDevice, RecordingPrinter, write_input_array

    port = free_port()
    log = tmp_path / "server.log"
    flags = ["--host", "127.0.0.1", "--port", str(port), "--hf-repo", "kyutai/moshiko-pytorch-bf16",
             *model_flags(checkpoint, ""), "--config-path", str(checkpoint / "lora.json"), "--half",
             "--lora-weight", str(checkpoint / "lora.safetensors"), "--static", "none", "--device", "cpu"]
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "fullduplex.server", *flags], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        frames = 8
        pcm = write_input_array(frames) * 0.8
        sent = (frames - 1) * FRAME
        printer = RecordingPrinter()
        device = FakeSoundDevice(pcm, printer)
        monkeypatch.setitem(sys.modules, "sounddevice", device.module)
        monkeypatch.delitem(sys.modules, "moshi.client", raising=False)
        import moshi.client as reference_client

        monkeypatch.delitem(sys.modules, "moshi.client")

        async def run() -> int:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/") as page:
                    status = page.status  # --static none: no web page
                async with http.ws_connect(f"ws://127.0.0.1:{port}/api/chat") as ws:
                    connection = reference_client.Connection(printer, ws, event_loop=asyncio.get_running_loop())
                    task = asyncio.create_task(connection.run())
                    assert await asyncio.to_thread(device.input_done.wait, 10)
                    deadline = time.monotonic() + 30
                    while len(device.played) * FRAME < sent and time.monotonic() < deadline and not task.done():
                        await asyncio.sleep(0.02)
                    await ws.close()
                    await asyncio.wait_for(task, 5)
            return status

        assert asyncio.run(run()) == 404
    finally:
        server.terminate()
        server.wait(10)
    assert not [entry for entry in printer.logs if entry[0] == "error"], printer.logs
    played = np.concatenate(device.played) if device.played else np.zeros(0, np.float32)
    assert len(played) == sent and np.abs(played).mean() > 1e-3, log.read_text()
    assert "serving model.safetensors" in log.read_text()


@pytest.mark.parametrize("static", ["none", "folder"])
def test_server_static_option(tmp_path, static):
    """--static none: no page at / (the API stays); --static DIR: DIR's index.html at / and its files below."""
    from aiohttp.test_utils import TestServer

    from fullduplex.inference import Engine
    from fullduplex.server.app import Server, ServerConfig
    from tests.helpers import tiny_models

    mimi, lm, tokenizer = tiny_models(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>moshi page</p>")
    (site / "app.js").write_text("// js")
    config = ServerConfig(static="none" if static == "none" else str(site))

    async def fetch() -> list[tuple[int, str]]:
        server = Server(Engine(mimi, lm, Sampling(temp=0, temp_text=0), max_sessions=1), tokenizer, config)
        async with TestServer(server.app(), host="127.0.0.1") as test_server, aiohttp.ClientSession() as http:
            got = []
            for path in ("/", "/app.js", "/api/health"):
                async with http.get(f"http://127.0.0.1:{test_server.port}{path}") as response:
                    got.append((response.status, await response.text()))
            return got

    page, script, health = asyncio.run(fetch())
    assert health[0] == 200
    if static == "none":
        assert page[0] == 404 and script[0] == 404
    else:
        assert page == (200, "<p>moshi page</p>") and script == (200, "// js")


def test_native_commands_take_moshi_spellings():
    from fullduplex.cli.main import build_parser

    parser = build_parser()
    for command in (["generate", "-i", "talk.wav"], ["serve"]):
        for spelling in ("--config-path", "--lm-config", "--config"):
            args = parser.parse_args([*command, spelling, "c.json", "--half", "--no_fuse_lora", "--cfg-coef", "1"])
            assert (args.config, args.dtype, args.cfg_coef) == ("c.json", "float16", 1.0)
        assert parser.parse_args(command).temp is None  # unset: the model's lm_gen_config, else the default
    assert parser.parse_args(["serve", "--static", "none"]).static == "none"
