"""``fullduplex eval behaviour`` end to end on a tiny random model: report, plots, WAVs; bad input."""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.lm.config import lm_preset
from fullduplex.text import train_tokenizer
from tests.eval.conftest import write_wav
from tests.helpers import ASSETS, assert_one_line_error, randomize_

SPEECH = ASSETS / "speech_en.wav"
SENTENCES = ["hello there how are you doing today", "i would like a cup of coffee please",
             "we went to the market on saturday morning", "can you tell me the way to the station"] * 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    lm = fd.save_lm(fd.LMModel(lm_preset("tiny")), root / "model.safetensors")
    mimi = fd.save_mimi(randomize_(fd.Mimi(mimi_preset("tiny")).eval()), root / "mimi.safetensors")
    return {"lm": lm, "mimi": mimi, "tokenizer": train_tokenizer(SENTENCES, root / "tok", 96, model_type="bpe").path}


def behaviour(capsys, ckpt: dict[str, Path], *argv: str | Path) -> tuple[int, str, str]:
    code = main([
        "eval", "behaviour", "--moshi-weight", str(ckpt["lm"]), "--mimi-weight", str(ckpt["mimi"]),
        "--tokenizer", str(ckpt["tokenizer"]), "--config", "tiny", "--mimi-config", "tiny", "--device", "cpu",
        "--quiet", "--vad", "level", "--listen", "2", "--monologue", "4", *(str(a) for a in argv),
    ])
    out, err = capsys.readouterr()
    return code, out, err


def test_end_to_end_tiny_model(tmp_path, capsys, ckpt):
    out = tmp_path / "report"
    code, stdout, err = behaviour(capsys, ckpt, "--speech", SPEECH, "--repeats", "2", "--output", out)
    assert code == 0, err
    kinds = ["pause", "turn-end", "interrupt", "backchannel"]
    expected = {"report.json", "report.md", "latency.png", *(f"timeline-{k}.png" for k in kinds),
                *(f"{k}-{i}.wav" for k in kinds for i in range(2))}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        assert str(out / name) in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "behaviour" and "not comparable to published Full-Duplex-Bench" in report["label"]
    assert report["settings"]["vad"]["method"] == "level" and report["settings"]["scoring"] == "VAD"
    assert report["settings"]["probes"] == kinds and report["settings"]["lm"] == "model.safetensors"
    assert report["label"] in (out / "report.md").read_text()
    # The tiny random model babbles without a break from its second frame on (noise at about -25 dBFS): it takes
    # over every pause, is already speaking at every turn end, never stops when interrupted, never backchannels.
    s = report["summary"]
    assert s["pause"]["takeover_rate"] == 1.0 and s["pause"]["n"] == 2
    assert s["turn-end"]["response_rate"] == 1.0 and s["turn-end"]["already_speaking"] == 2
    assert s["turn-end"]["latency_ms"]["p50"] == 0.0
    assert s["interrupt"]["applicable"] == 2 and s["interrupt"]["did_not_stop"] == 2
    assert s["backchannel"]["backchannels"] == 0 and s["backchannel"]["takeover_rate"] == 1.0
    for inst in report["probes"]["interrupt"]:
        assert inst["prefix_max_diff"] == 0.0  # pass 2 repeats pass 1 up to the interruption
        assert inst["times"]["onset"] == pytest.approx(inst["times"]["prompt_end"] + 0.5)
    # The WAVs: left the model as played (first 80 ms frame silent), right the probe's input.
    inst = report["probes"]["pause"][0]
    with wave.open(str(out / inst["wav"]), "rb") as f:
        assert f.getnchannels() == 2 and f.getframerate() == 24000
        assert f.getnframes() == round(inst["duration"] * 24000)
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, 2)
    assert not pcm[:1920, 0].any() and pcm[1920:, 0].any()
    lead = round(inst["times"]["pause_start"] * 24000) - 10
    assert not pcm[:24000, 1].any() and pcm[24000:lead, 1].any()  # 1 s of lead silence, then the user
    assert (out / "timeline-interrupt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_probe_kind_and_a_stereo_speech_file(tmp_path, capsys, ckpt):
    data = np.frombuffer(SPEECH.read_bytes()[44:], "<i2").astype(np.float32) / 32768
    stereo = write_wav(tmp_path / "stereo.wav", np.stack([data, data]))
    code, _, err = behaviour(capsys, ckpt, "--speech", stereo, "--probes", "turn-end", "--repeats", "1",
                             "--output", tmp_path / "r")
    assert code == 0, err
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.json", "report.md", "latency.png",
                                                            "timeline-turn-end.png", "turn-end-0.wav"}


@pytest.mark.parametrize("case", ["missing", "silent", "no-speech", "probes", "output-file", "asr-folder",
                                  "asr-package", "pause-range"])
def test_bad_input_one_line_and_nothing_written(tmp_path, capsys, monkeypatch, ckpt, case):
    out = tmp_path / "report"
    speech: list[str | Path] = [SPEECH]
    extra: list[str | Path] = []
    needles: tuple[str, ...]
    if case == "missing":
        speech, needles = [SPEECH, tmp_path / "nope.wav"], ("audio file not found", "nope.wav")
    elif case == "silent":
        speech = [write_wav(tmp_path / "zero.wav", np.zeros(24000))]
        needles = ("zero.wav is silent",)
    elif case == "no-speech":
        speech = [write_wav(tmp_path / "hiss.wav", np.full(24000, 1e-4))]
        needles = ("hiss.wav", "found no speech")
    elif case == "probes":
        extra, needles = ["--probes", "pause,laugh"], ("unknown probe 'laugh'",)
    elif case == "output-file":
        out.write_text("x")
        needles = ("is a file",)
    elif case == "asr-folder":
        extra, needles = ["--asr-model", tmp_path / "whisper"], ("--asr-model", "not a folder")
    elif case == "asr-package":
        (tmp_path / "whisper").mkdir()
        (tmp_path / "whisper" / "model.bin").write_bytes(b"x")
        extra, needles = ["--asr-model", tmp_path / "whisper"], ("pip install faster-whisper",)
        monkeypatch.setitem(sys.modules, "faster_whisper", None)  # installed or not: the import fails
    else:
        extra, needles = ["--pause-range", "1.5", "1.0"], ("pause lengths",)
    code, _, err = behaviour(capsys, ckpt, "--speech", *speech, *extra, "--output", out)
    if case == "probes":  # argparse: its usage line, then one error line
        assert code == 2 and err.strip().splitlines()[-1].startswith("fullduplex eval behaviour: error:")
        assert needles[0] in err
    else:
        assert_one_line_error(code, err, *needles)
    assert out.is_file() if case == "output-file" else not out.exists()


def test_persona_prompt_is_stepped_before_each_probe(tmp_path, capsys, ckpt):
    """--text-prompt runs the probes behind a role prompt (as `generate --text-prompt`): the report says so, a
    model without persona training gets a warning, and the model's side changes; a missing voice file is refused
    before any model is loaded."""
    args = ("--speech", SPEECH, "--probes", "pause", "--repeats", "1")
    code, _, err = behaviour(capsys, ckpt, *args, "--output", tmp_path / "plain")
    assert code == 0, err
    code, _, err = behaviour(capsys, ckpt, *args, "--text-prompt", "You are a patient teacher.",
                             "--output", tmp_path / "persona")
    assert code == 0 and "warning: " in err and "not trained with persona prompts" in err, err
    report = json.loads((tmp_path / "persona" / "report.json").read_text())
    assert report["settings"]["text_prompt"] == "You are a patient teacher." and report["settings"]["voice_prompt"] is None
    wavs = [(tmp_path / name / "pause-0.wav").read_bytes() for name in ("plain", "persona")]
    assert wavs[0] != wavs[1]
    code, _, err = behaviour(capsys, ckpt, *args, "--voice-prompt", tmp_path / "nope.pt", "--output", tmp_path / "o")
    assert_one_line_error(code, err, "--voice-prompt", "nope.pt")
    assert not (tmp_path / "o").exists()
