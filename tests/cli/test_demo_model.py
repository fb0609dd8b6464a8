"""The demo model bundled in fullduplex/assets/demo: it loads, it is the default of the model commands (saying so),
explicit checkpoint options still win, and it runs `generate` end to end."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.codec.audio import write_wav
from fullduplex.demo import DEMO_DIR, NOTICE, demo_config, demo_files, demo_mimi_config
from fullduplex.lm.config import lm_preset
from fullduplex.text import train_tokenizer
from tests.helpers import randomize_, speech


def test_shipped_files_load_and_fit_together():
    files = demo_files()
    assert sum(p.stat().st_size for p in DEMO_DIR.iterdir() if p.is_file()) <= 20_000_000
    assert demo_mimi_config() == mimi_preset("demo")
    mimi, lm, tokenizer = fd.load_demo()
    assert lm.config.card == mimi.cardinality == 256 and lm.config.dep_q == mimi.num_codebooks == 8
    assert lm.config.text_card == tokenizer.vocab_size
    demo = lm_preset("demo")
    assert (lm.config.dim, lm.config.num_layers, lm.config.depformer_dim) == (demo.dim, demo.num_layers, demo.depformer_dim)
    assert next(lm.parameters()).dtype == torch.float32  # float16 on disk, float32 to run on CPU
    assert demo_config()["mimi_name"] == files["mimi"].name
    with torch.no_grad():  # the codec follows speech and silence: frame energies of input and output correlate
        wav = torch.cat([speech(1.2), torch.zeros(1, 1, 19200), speech(1.2)], dim=-1)
        out = mimi.decode(mimi.encode(wav))[..., : wav.shape[-1]]
        energy_in = wav.view(-1, 1920).square().mean(-1).sqrt()
        energy_out = out.reshape(-1, 1920).square().mean(-1).sqrt()
        assert torch.isfinite(out).all()
        assert torch.corrcoef(torch.stack([energy_in, energy_out]))[0, 1] > 0.5


def test_generate_defaults_to_the_demo_model(tmp_path, capsys):
    user = tmp_path / "user.wav"
    write_wav(user, speech(1.2)[0], 24000)  # 15 frames
    out, transcript = tmp_path / "talk.wav", tmp_path / "talk.json"
    code = main(["generate", "--input", str(user), "--output", str(out), "--transcript", str(transcript),
                 "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert NOTICE in captured.err and "--hf-repo kyutai/moshiko-pytorch-bf16" in captured.err
    with wave.open(str(out)) as f:
        assert (f.getnchannels(), f.getframerate(), f.getnframes()) == (2, 24000, 15 * 1920)
    words = json.loads(transcript.read_text())
    assert words["duration"] == pytest.approx(1.2) and all(0 <= w["start"] < w["end"] <= 1.2 for w in words["words"])


def test_explicit_checkpoints_do_not_use_the_demo(tmp_path, capsys):
    torch.manual_seed(0)
    lm = fd.save_lm(fd.LMModel(lm_preset("tiny")), tmp_path / "model.safetensors")
    mimi = fd.save_mimi(randomize_(fd.Mimi(mimi_preset("tiny")).eval()), tmp_path / "mimi.safetensors")
    words = ["hello there", "how are you", "fine thanks", "good morning", "see you later", "what is that"] * 8
    tok = train_tokenizer(words, tmp_path / "tok", 96, model_type="bpe").path
    user = tmp_path / "user.wav"
    write_wav(user, speech(0.4)[0], 24000)
    code = main(["generate", "--input", str(user), "--output", str(tmp_path / "o.wav"), "--moshi-weight", str(lm),
                 "--config", "tiny", "--mimi-weight", str(mimi), "--mimi-config", "tiny", "--tokenizer", str(tok),
                 "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "demo model" not in captured.err


def test_serve_help_and_message_name_the_demo(capsys):
    assert main(["serve", "--help"]) == 0
    assert "the bundled demo model is served" in capsys.readouterr().out


def test_damaged_demo_folder_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"moshi_name": "model.safetensors"}))
    with pytest.raises(fd.load_demo.__globals__["CheckpointError"], match="mimi_name"):
        fd.load_demo(folder=Path(tmp_path))
