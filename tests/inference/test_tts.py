"""``fullduplex speak`` on a tiny random Kyutai-TTS-shaped model: a two-speaker script becomes a stereo file and
word times that the data pipeline's readers accept; one voice gives mono; bad inputs exit 2 with one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.codec.audio import read_audio
from fullduplex.data.formats import LEFT_SPEAKER, RIGHT_SPEAKER, read_alignments, read_stereo
from fullduplex.lm import LMConfig
from fullduplex.text import train_tokenizer
from tests.helpers import assert_one_line_error, randomize_

VOICE_DIM = 12
CONFIG = dict(
    dim=64, num_heads=4, num_layers=2, hidden_scale=4.125, context=12, text_card=96, card=32, depformer_dim=32,
    depformer_num_heads=2, depformer_num_layers=2, depformer_dim_feedforward=64, n_q=4, dep_q=4,
    delays=[0, 0, 2, 2, 2], depformer_low_rank_embeddings=8, depformer_weights_per_step_schedule=[0, 1, 1, 2],
    demux_second_stream=True, cross_attention=True, model_type="tts",
    tts_config={"audio_delay": 0.32, "second_stream_ahead": 2},
    conditioners={
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": VOICE_DIM}},
        "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop", "possible_values": ["1.0", "1.5", "2.0"]}},
        "control": {"type": "lut", "lut": {"n_bins": 3, "dim": 16, "tokenizer": "noop", "possible_values": ["ok"]}},
    },
    fuser={"sum": ["control", "cfg"], "cross": ["speaker_wavs"], "cross_attention_pos_emb": True},
    lm_gen_config={"temp": 0.6, "temp_text": 0.6, "top_k": 250, "top_k_text": 25},
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tts")
    torch.manual_seed(0)
    lm = fd.LMModel(LMConfig.from_moshi_dict(CONFIG)).eval()
    folder = root / "lm"
    folder.mkdir()
    fd.save_lm(lm, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    fd.save_mimi(randomize_(fd.Mimi(mimi_preset("tiny")).eval()), root / "mimi.safetensors")
    words = ["hello there how are you", "fine thanks and you", "see you later my friend"] * 6
    tok = train_tokenizer(words, root / "tok", 96, model_type="bpe")
    voices = []
    for i in range(2):
        path = root / f"voice{i}.safetensors"
        save_file({"speaker_wavs": torch.randn(1, VOICE_DIM, 5, generator=torch.Generator().manual_seed(i))}, str(path))
        voices.append(path)
    script = root / "dialogue.txt"
    script.write_text("hello there how are you\n\nfine thanks and you\nsee you later\n")
    return {"lm": folder, "mimi": root / "mimi.safetensors", "tokenizer": tok.path, "voices": voices, "script": script}


def speak(files, output, *extra: str) -> int:
    return main(["speak", str(files["script"]), "--output", str(output), "--moshi-weight", str(files["lm"]),
                 "--mimi-weight", str(files["mimi"]), "--mimi-config", "tiny", "--tokenizer", str(files["tokenizer"]),
                 "--quiet", *extra])


def test_dialogue_is_stereo_with_word_times(files, tmp_path, capsys):
    out = tmp_path / "talk.wav"
    assert speak(files, out, "--voices", *map(str, files["voices"]), "--max-seconds", "12") == 0
    stereo = read_stereo(out, 24000)  # [2, S]
    words = read_alignments(out.with_suffix(".json"), duration=stereo.shape[-1] / 24000)
    assert [w.text for w in words] == "hello there how are you fine thanks and you see you later".split()
    assert [w.speaker for w in words] == [LEFT_SPEAKER] * 5 + [RIGHT_SPEAKER] * 4 + [LEFT_SPEAKER] * 3
    assert stereo.shape[-1] % 1920 == 0
    left_turn = slice(int(words[0].start * 24000), int(words[5].start * 24000))
    assert stereo[1, left_turn].abs().max() == 0 and stereo[0, left_turn].abs().max() > 0  # one speaker a channel
    assert "stereo" in capsys.readouterr().out


def test_one_voice_is_mono(files, tmp_path):
    out = tmp_path / "one.wav"
    script = tmp_path / "one.txt"
    script.write_text("hello there\nhow are you\n")  # one voice: the lines are one speaker's text
    assert main(["speak", str(script), "--output", str(out), "--moshi-weight", str(files["lm"]), "--mimi-weight",
                 str(files["mimi"]), "--mimi-config", "tiny", "--tokenizer", str(files["tokenizer"]), "--quiet",
                 "--voices", str(files["voices"][0]), "--max-seconds", "12", "--cfg-coef", "2"]) == 0
    wav = read_audio(out, 24000)
    words = read_alignments(out.with_suffix(".json"))
    assert wav.shape[0] == 1 and [w.text for w in words] == ["hello", "there", "how", "are", "you"]
    assert {w.speaker for w in words} == {LEFT_SPEAKER}


def test_bad_inputs(files, tmp_path, capsys):
    out = tmp_path / "x.wav"
    code = speak(files, out, "--voices", str(tmp_path / "nope.safetensors"))
    assert_one_line_error(code, capsys.readouterr().err, "nope.safetensors", "no such file")
    code = speak(files, out, "--voices", str(files["voices"][0]), "--cfg-coef", "3")
    assert_one_line_error(code, capsys.readouterr().err, "--cfg-coef", "guidance strengths")
    code = main(["speak", str(files["script"]), "--voices", str(files["voices"][0]), "--output", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "TTS checkpoint")
    assert not out.exists()


def test_data_synth_with_kyutai_tts(files, tmp_path, capsys):
    """``data synth --engine kyutai-tts``: the planned dialogues spoken with two voices, in the corpus layout that
    ``data prepare`` reads (stereo wav, alignments, manifest)."""
    import shutil

    from fullduplex.data.formats import read_manifest

    folder = tmp_path / "tts-model"
    folder.mkdir()
    for source, name in ((files["lm"] / "model.safetensors", "model.safetensors"), (files["mimi"], "mimi.safetensors"),
                         (files["tokenizer"], "tok.model")):
        shutil.copyfile(source, folder / name)
    config = {**CONFIG, "mimi_name": "mimi.safetensors", "tokenizer_name": "tok.model",
              "mimi_config": mimi_preset("tiny").to_moshi_dict()}
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "corpus"
    voices = ",".join(str(v) for v in files["voices"])
    assert main(["data", "synth", "--engine", "kyutai-tts", "--lang", "en", "--dialogues", "1", "--output", str(out),
                 "--tts", str(folder), "--tts-voices", voices, "--quiet"]) == 0
    entries, problems = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 1 and not problems
    for entry in entries:
        stereo = read_stereo(entry.path, 24000)
        words = read_alignments(entry.path.with_suffix(".json"), duration=stereo.shape[-1] / 24000)
        assert words and abs(entry.duration - stereo.shape[-1] / 24000) < 1e-3
    assert "kyutai-tts" in capsys.readouterr().out
    # ... and `data prepare` turns it into training shards, nothing skipped.
    from fullduplex.data.prepare import prepare
    from fullduplex.text import TextTokenizer

    mimi = fd.load_mimi(files["mimi"], config=mimi_preset("tiny"))
    report = prepare(out / "manifest.jsonl", mimi, TextTokenizer.load(files["tokenizer"]), tmp_path / "shards", quiet=True)
    assert report.conversations == 1 and report.frames > 0 and not report.skipped
    code = main(["data", "synth", "--engine", "kyutai-tts", "--lang", "hi", "--dialogues", "1", "--output",
                 str(tmp_path / "hi"), "--tts", str(folder), "--tts-voices", voices])
    assert_one_line_error(code, capsys.readouterr().err, "English")
