"""``fullduplex transcribe`` end to end on a tiny random STT model (dep_q 0, GQA, an extra head), tiny Mimi and a
tokenizer trained on a few sentences: batched output equals each input alone, times stay inside the input,
bad inputs exit 2 with one ``error:`` line and leave nothing behind."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec.audio import read_audio, write_wav
from fullduplex.demo import demo_config, demo_files, demo_mimi_config
from fullduplex.inference.offline import check_models, read_inputs
from fullduplex.inference.transcribe import SttConfig, framed_frames, transcribe
from fullduplex.lm import LMConfig
from fullduplex.text import TextTokenizer, train_tokenizer
from tests.helpers import ASSETS, assert_one_line_error

SPEECH = ASSETS / "speech_en.wav"  # 24 kHz mono, 2.5 s
STT = LMConfig(
    dim=64, num_heads=4, num_layers=2, hidden_scale=2.0, context=40, text_card=96, card=256, n_q=8, dep_q=0,
    delays=(2,) + (0,) * 8, kv_repeat=2, extra_heads_num_heads=1, extra_heads_dim=3,
)
SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "hello there how are you doing today",
    "i would like a cup of coffee please", "we went to the market on saturday morning",
    "she said the weather was lovely in the park", "can you tell me the way to the station",
] * 3
STT_CONFIG = {"audio_delay_seconds": 0.24, "audio_silence_prefix_seconds": 0.16}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A released-style STT folder: config.json naming its files, a random LM, the demo Mimi (a trained codec:
    a random tiny one gives the same codes every frame), a tokenizer."""
    root = tmp_path_factory.mktemp("stt")
    torch.manual_seed(0)
    fd.save_lm(fd.LMModel(STT), root / "model.safetensors")
    shutil.copy(demo_files()["mimi"], root / "mimi.safetensors")
    tok = train_tokenizer(SENTENCES, root / "tok", 96, model_type="bpe").path
    config = {k: v for k, v in STT.to_dict().items()}
    config.update(delays=list(STT.delays), model_type="stt", stt_config=STT_CONFIG, mimi_name="mimi.safetensors",
                  tokenizer_name=tok.name, mimi_config=demo_config()["mimi_config"])
    (root / "config.json").write_text(json.dumps(config))
    return root


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["transcribe", *(str(a) for a in argv), "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def test_batched_equals_alone(tmp_path, capsys, model):
    (tmp_path / "in").mkdir()
    speech, short = tmp_path / "in" / "speech_en.wav", tmp_path / "in" / "short.wav"
    write_wav(speech, read_audio(SPEECH)[:, :30000], 24000)  # 1.25 s (the machine is shared: keep it short)
    write_wav(short, read_audio(SPEECH)[:, 30000:42777], 24000)  # 0.53 s: 10 frames fewer once framed
    runs = {}
    for name, extra in (("batch", ()), ("alone", ("--batch-size", "1"))):
        code, out, err = cli(capsys, speech, short, "--output", tmp_path / name, "--model", model, *extra)
        assert code == 0, err
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
            "short.json", "short.txt", "speech_en.json", "speech_en.txt"]
        runs[name] = tmp_path / name
    for stem in ("speech_en", "short"):
        for ext in (".json", ".txt"):
            assert (runs["batch"] / f"{stem}{ext}").read_bytes() == (runs["alone"] / f"{stem}{ext}").read_bytes()
    record = json.loads((runs["batch"] / "speech_en.json").read_text())
    assert record["input"] == str(speech) and record["frame_rate"] == 12.5
    assert record["words"], "the random model should write some words"  # not vacuous
    assert record["text"] == " ".join(w["text"] for w in record["words"])
    assert (runs["batch"] / "speech_en.txt").read_text() == record["text"] + "\n"
    for w in record["words"]:
        assert 0 <= w["start"] <= w["end"] <= record["duration"]


def test_library_frames_and_timing_rule(model):
    """Tokens cover every frame of the framed input; a word's start is its first token's frame minus the offset."""
    tokenizer = TextTokenizer.load(next(model.glob("tok*.model")))
    lm = fd.load_lm(model)
    mimi = fd.load_mimi(model / "mimi.safetensors", num_codebooks=None, config=demo_mimi_config())
    check_models(mimi, lm, tokenizer, "model")
    stt = SttConfig.from_config({"stt_config": STT_CONFIG})
    wavs = [read_inputs([SPEECH], 24000)[0][:, :30000]]
    (result,) = transcribe(wavs, mimi, lm, tokenizer, stt)
    frames = framed_frames(wavs[0].shape[-1], stt, 24000, 1920)
    assert frames == -(-(3840 + 30000 + 29760) // 1920)  # 0.16 s prefix, the audio, 0.24 + 1 s of silence
    assert result.tokens.shape == (frames,) and result.extra_heads.shape == (frames, 1, 3)
    assert torch.allclose(result.extra_heads.sum(-1), torch.ones(frames, 1))
    first = next(f for f, t in enumerate(result.tokens.tolist()) if tokenizer.is_text(t)
                 and tokenizer.piece(t).startswith("▁") and f / 12.5 >= stt.offset_seconds)
    starts = [w.start for w in result.words]
    assert pytest.approx(first / 12.5 - 0.4) in starts


def test_errors_leave_nothing(tmp_path, capsys, model):
    code, _, err = cli(capsys, tmp_path / "missing.wav", "--output", tmp_path / "out", "--model", model)
    assert_one_line_error(code, err, "missing.wav")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # A dialogue model is refused by name.
    dialogue = shutil.copytree(model, tmp_path / "dialogue")
    tiny = replace(fd.lm.lm_preset("tiny"), card=256)
    fd.save_lm(fd.LMModel(tiny), dialogue / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    config.update(tiny.to_dict(), delays=list(tiny.delays))
    (dialogue / "config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, SPEECH, "--output", tmp_path / "out", "--model", dialogue)
    assert_one_line_error(code, err, "not a speech-to-text model", "dep_q=8")
    code, _, err = cli(capsys, SPEECH, "--output", tmp_path / "out")  # the bundled demo model speaks: refused
    assert_one_line_error(code, err, "needs a speech-to-text model", "--model")
    code, _, err = cli(capsys, SPEECH, "--output", tmp_path / "out", "--model", "demo")
    assert_one_line_error(code, err, "needs a speech-to-text model")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    code, _, err = cli(capsys, SPEECH, "--output", tmp_path / "o2", "--model", "nowhere-at-all")
    assert_one_line_error(code, err, "--model nowhere-at-all")


def test_generate_refuses_an_stt_model(tmp_path, capsys, model):
    code = main(["generate", "--input", str(SPEECH), "--output", str(tmp_path / "o.wav"), "--moshi-weight", str(model),
                 "--mimi-weight", str(model / "mimi.safetensors"), "--tokenizer", str(next(model.glob("tok*.model"))),
                 "--device", "cpu", "--quiet"])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "speech-to-text model", "fullduplex transcribe")
    assert not (tmp_path / "o.wav").exists()
