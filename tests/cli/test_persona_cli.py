"""``fullduplex voice make`` and ``generate --text-prompt/--voice-prompt`` on the tiny models."""

from __future__ import annotations

import torch
from safetensors import safe_open

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.inference import Sampling, generate
from fullduplex.inference.prompt import build_schedule, role_tokens
from fullduplex.inference.voice import filler_codes, load_voice
from fullduplex.text import TextTokenizer
from tests.cli.test_generate_cli import GREEDY, ckpt, generate_cli, read_tokens  # noqa: F401 - ckpt is a fixture
from tests.helpers import assert_one_line_error, speech

MODELS = ("--mimi-config", "tiny", "--device", "cpu")


def test_voice_make_both_formats(tmp_path, capsys, ckpt):  # noqa: F811
    import sphn

    sphn.write_wav(str(tmp_path / "me.wav"), speech(0.7)[0, 0].numpy(), 24000)
    assert main(["voice", "make", str(tmp_path / "me.wav"), str(tmp_path / "me.safetensors"), "--mimi-weight",
                 str(ckpt["mimi"]), *MODELS]) == 0
    assert "wrote voice of 9 frames" in capsys.readouterr().out
    with safe_open(str(tmp_path / "me.safetensors"), framework="pt") as f:
        assert f.get_tensor("codes").shape == (8, 9) and f.metadata()["format"] == "fullduplex-voice"
    assert main(["voice", "make", str(tmp_path / "me.wav"), str(tmp_path / "ME.pt"), "--mimi-weight", str(ckpt["mimi"]),
                 "--moshi-weight", str(ckpt["lm"]), "--config", "tiny", *MODELS]) == 0
    data = torch.load(tmp_path / "ME.pt", weights_only=True)
    assert data["embeddings"].shape == (8, 1, 1, 64) and data["cache"].shape == (1, 17, 4)
    capsys.readouterr()
    code = main(["voice", "make", str(tmp_path / "me.wav"), str(tmp_path / "me.npy"), *MODELS])
    assert_one_line_error(code, capsys.readouterr().err, "must end in .safetensors")


def test_generate_with_a_persona(tmp_path, capsys, ckpt):  # noqa: F811
    import sphn

    sphn.write_wav(str(tmp_path / "talk.wav"), speech(0.48)[0, 0].numpy(), 24000)
    mimi = fd.load_mimi(ckpt["mimi"], config=mimi_preset("tiny"))
    lm = fd.load_lm(ckpt["lm"], config="tiny")
    tokenizer = TextTokenizer.load(ckpt["tokenizer"])
    voice = torch.randint(0, 32, (8, 4), generator=torch.Generator().manual_seed(0))
    fd.inference.voice.save_voice(voice, tmp_path / "v.safetensors", 24000, 12.5, -20.0, "x")
    code, out, err = generate_cli(capsys, ckpt, "--input", tmp_path / "talk.wav", "--tokens-out", tmp_path / "t.safetensors",
                                  "--voice-prompt", tmp_path / "v.safetensors", "--text-prompt", "hello there", *GREEDY)
    assert code == 0 and "not trained with persona prompts" in err and err.startswith("warning: ")
    tokens, _ = read_tokens(tmp_path / "t.safetensors")
    schedule = build_schedule(lm.config, load_voice(tmp_path / "v.safetensors", mimi, lm.config),
                              role_tokens(tokenizer, "hello there"), filler_codes(mimi))
    (want,) = generate([speech(0.48)[0]], mimi, lm, tokenizer, Sampling(temp=0, temp_text=0), prompt=schedule)
    assert torch.equal(tokens["talk"].long(), want.tokens) and (want.tokens[:, 0] >= 0).all()  # audio from frame 0
    code, _, _ = generate_cli(capsys, ckpt, "--input", tmp_path / "talk.wav", "--output", tmp_path / "o.wav", "--text-prompt", "")
    assert code == 0  # an empty prompt works
    code, _, err = generate_cli(capsys, ckpt, "--input", tmp_path / "talk.wav", "--output", tmp_path / "o.wav",
                                "--voice-prompt", tmp_path / "nope.pt")
    assert_one_line_error(code, err, "nope.pt", "no such file")
