"""``data annotate --engine kyutai-stt``: each channel of a stereo conversation transcribed by a (tiny random)
Kyutai-STT-shaped model, exactly as ``transcribe`` gives it, tagged by speaker."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import sphn
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec.audio import resample
from fullduplex.data.formats import LEFT_SPEAKER, RIGHT_SPEAKER, read_alignments, read_stereo
from fullduplex.data.stt_engine import KyutaiStt
from fullduplex.demo import demo_config, demo_files
from fullduplex.inference.transcribe import transcribe
from fullduplex.lm import LMConfig
from fullduplex.text import train_tokenizer
from tests.helpers import speech

STT = LMConfig(
    dim=64, num_heads=4, num_layers=2, hidden_scale=2.0, context=40, text_card=96, card=256, n_q=8, dep_q=0,
    delays=(1,) + (0,) * 8, kv_repeat=2,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("stt")
    torch.manual_seed(0)
    fd.save_lm(fd.LMModel(STT), root / "model.safetensors")
    shutil.copy(demo_files()["mimi"], root / "mimi.safetensors")
    words = ["hello there", "how are you", "fine thanks", "good morning", "see you later", "what is that"] * 8
    tok = train_tokenizer(words, root / "tok", 96, model_type="bpe").path
    config = dict(STT.to_dict(), delays=list(STT.delays), model_type="stt", mimi_name="mimi.safetensors",
                  tokenizer_name=tok.name, mimi_config=demo_config()["mimi_config"],
                  stt_config={"audio_delay_seconds": 0.16, "audio_silence_prefix_seconds": 0.0})
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_annotate_with_kyutai_stt(tmp_path, capsys, model):
    left, right = speech(1.0)[0, 0], speech(1.0)[0, 0].flip(-1) * 0.5
    (tmp_path / "calls").mkdir()
    sphn.write_wav(str(tmp_path / "calls" / "a.wav"), torch.stack([left, right]).numpy(), 24000)
    code = main(["data", "annotate", str(tmp_path / "calls"), "--engine", "kyutai-stt", "--model", str(model),
                 "-o", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    words = read_alignments(tmp_path / "out" / "a.json")
    engine = KyutaiStt.load(model, "cpu")
    stereo = read_stereo(tmp_path / "calls" / "a.wav", 16000)  # what annotate reads: 16 kHz
    for channel, speaker in ((0, LEFT_SPEAKER), (1, RIGHT_SPEAKER)):
        mine = [(w.text, w.start, w.end) for w in words if w.speaker == speaker]
        heard = resample(stereo[channel][None], 16000, 24000)
        (want,) = transcribe([heard], engine.mimi, engine.lm, engine.tokenizer, engine.stt)
        assert mine and mine == [(w.text, pytest.approx(w.start, abs=1e-6), pytest.approx(w.end, abs=1e-6))
                                 for w in want.words], speaker
    assert engine.transcribe(np.zeros(1600, np.float32), "ja") is not None  # the language is not the model's concern


def test_dialogue_model_is_refused(tmp_path, capsys, model):
    dialogue = shutil.copytree(model, tmp_path / "dialogue")
    config = json.loads((model / "config.json").read_text())
    config["dep_q"] = 8
    config.update(delays=[0] * 17, n_q=16)
    (dialogue / "config.json").write_text(json.dumps(config))
    with pytest.raises(fd.errors.FullduplexError):
        KyutaiStt.load(dialogue, "cpu")
