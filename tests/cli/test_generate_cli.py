"""``fullduplex generate`` end to end on a tiny random LM, tiny Mimi and a tokenizer trained on a few sentences.

The output must be what a live session would have played: the model's audio for step t at frame t (the first
frame silent), the user's input unchanged on the right channel. Bad inputs exit 2 with one ``error:`` line and
leave nothing behind.
"""

from __future__ import annotations

import json
import math
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.codec.audio import read_audio, write_wav
from fullduplex.errors import CheckpointError
from fullduplex.inference.offline import Sampling, check_models, generate, generate_files
from fullduplex.lm.config import lm_preset
from fullduplex.text import TextTokenizer, train_tokenizer
from tests.helpers import ASSETS, assert_one_line_error, randomize_

SPEECH = ASSETS / "speech_en.wav"  # 24 kHz mono, 60169 samples (2.5 s)
FRAME = 1920
SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "hello there how are you doing today",
    "i would like a cup of coffee please", "we went to the market on saturday morning",
    "she said the weather was lovely in the park", "can you tell me the way to the station",
    "my brother plays the guitar every evening", "they are building a new bridge across the river",
    "please close the window before you leave", "the children laughed at the funny clown",
    "the restaurant was closed on monday", "i like to drink tea in the afternoon",
    "the zebra and the giraffe live at the zoo", "a journey of a thousand miles begins with a step",
]
GREEDY = ("--temp", "0", "--temp-text", "0")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    """Checkpoint files of a tiny random LM and Mimi, and tokenizers of 96 (= text_card) and 80 pieces."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    lm = fd.save_lm(fd.LMModel(lm_preset("tiny")), root / "model.safetensors")
    mimi = fd.save_mimi(randomize_(fd.Mimi(mimi_preset("tiny")).eval()), root / "mimi.safetensors")
    tok = train_tokenizer(SENTENCES, root / "tok96", 96, model_type="bpe").path
    tok80 = train_tokenizer(SENTENCES, root / "tok80", 80, model_type="bpe").path
    return {"lm": lm, "mimi": mimi, "tokenizer": tok, "tokenizer80": tok80}


def generate_cli(capsys, ckpt: dict[str, Path], *argv: str | Path, **override: Path) -> tuple[int, str, str]:
    """Run ``fullduplex generate ARGV`` on the tiny models in-process; returns (exit status, stdout, stderr)."""
    files = {**ckpt, **override}
    code = main([
        "generate", "--moshi-weight", str(files["lm"]), "--mimi-weight", str(files["mimi"]), "--tokenizer",
        str(files["tokenizer"]), "--config", "tiny", "--mimi-config", "tiny", "--device", "cpu", "--quiet",
        *(str(a) for a in argv),  # last, so that a test's own options win
    ])
    out, err = capsys.readouterr()
    return code, out, err


def read_stereo(path: Path) -> tuple[np.ndarray, int]:
    """([2, S] float in [-1, 1), sample rate) of a 16-bit stereo WAV."""
    with wave.open(str(path), "rb") as f:
        assert f.getnchannels() == 2 and f.getsampwidth() == 2
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").reshape(-1, 2).T
        return data.astype(np.float32) / 32768.0, f.getframerate()


def read_tokens(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def write_pcm16(path: Path, data: np.ndarray, rate: int = 24000) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.asarray(data, dtype="<i2").tobytes())


# --- one input ----------------------------------------------------------------------------------------------
def test_positional_infile_outfile_as_moshi(tmp_path, capsys, ckpt):
    """``generate INFILE OUTFILE`` (moshi's run_inference spelling) is ``--input INFILE --output OUTFILE``."""
    code, _, err = generate_cli(capsys, ckpt, SPEECH, tmp_path / "a.wav")
    assert code == 0, err
    code, _, err = generate_cli(capsys, ckpt, "-i", SPEECH, "-o", tmp_path / "b.wav")
    assert code == 0, err
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    code, _, err = generate_cli(capsys, ckpt, SPEECH, "--transcript", tmp_path / "t.json")  # INFILE alone
    assert code == 0 and (tmp_path / "t.json").is_file(), err


def test_one_input_end_to_end(tmp_path, capsys, ckpt):
    wav_out, json_out, tok_out = tmp_path / "o.wav", tmp_path / "t.json", tmp_path / "k.safetensors"
    code, out, err = generate_cli(capsys, ckpt, "--input", SPEECH, "--output", wav_out, "--transcript", json_out,
                                  "--tokens-out", tok_out)
    assert code == 0, err
    for path in (wav_out, json_out, tok_out):
        assert str(path) in out
    user = read_audio(SPEECH)[0].numpy()  # [S]
    samples, frames = user.shape[-1], math.ceil(user.shape[-1] / FRAME)

    audio, rate = read_stereo(wav_out)
    assert rate == 24000 and audio.shape == (2, samples)
    assert np.abs(audio[1] - user).max() <= 1 / 32768
    assert np.all(audio[0, :FRAME] == 0) and np.abs(audio[0, FRAME:]).max() > 0

    tensors, meta = read_tokens(tok_out)
    tokens = tensors["speech_en"]
    assert list(tensors) == ["speech_en"] and tokens.dtype == torch.int32 and tokens.shape == (9, frames)
    assert torch.all(tokens[:, 0] == -2) and torch.all(tokens[:, 1:] >= 0)
    assert meta["frame_rate"] == "12.5" and meta["sample_rate"] == "24000"
    assert json.loads(meta["delays"]) == list(lm_preset("tiny").delays)
    assert json.loads(meta["inputs"]) == {"speech_en": str(SPEECH)}
    assert json.loads(meta["samples"]) == {"speech_en": samples}
    assert meta["lm"] == "model.safetensors" and meta["seed"] == "4242" and meta["ungenerated_token"] == "-2"

    # The model's audio for step t sits at frame t: decoding the codes of steps 1.. gives the rest of the channel.
    mimi = fd.load_mimi(ckpt["mimi"], config=mimi_preset("tiny"))
    with torch.no_grad():
        decoded = mimi.decode(tokens[None, 1:, 1:].long())[0, 0, : samples - FRAME].clamp(-1, 1).numpy()
    assert np.abs(audio[0, FRAME:] - decoded).max() < 2e-4

    transcript = json.loads(json_out.read_text())
    assert set(transcript) == {"input", "duration", "frame_rate", "text", "words"}
    assert transcript["input"] == str(SPEECH) and transcript["frame_rate"] == 12.5
    assert transcript["duration"] == pytest.approx(samples / 24000)
    assert transcript["words"], "a random tiny model still writes some text"
    for word in transcript["words"]:
        assert set(word) == {"text", "start", "end"} and word["text"]
        assert 0 <= word["start"] < word["end"] <= transcript["duration"]
    assert transcript["text"] == " ".join(w["text"] for w in transcript["words"])

    # The CLI is the library: the same seed gives the same tokens and audio in-process.
    lm = fd.load_lm(ckpt["lm"], config="tiny")
    result = generate_files([SPEECH], mimi, lm, TextTokenizer.load(ckpt["tokenizer"]), Sampling(seed=4242))[0]
    assert torch.equal(result.tokens, tokens.long())
    assert np.abs(result.audio.numpy() - audio).max() <= 1 / 32768


# --- several inputs -----------------------------------------------------------------------------------------
def test_batch_equals_alone_and_greedy_is_deterministic(tmp_path, capsys, ckpt):
    short = tmp_path / "in" / "short.wav"
    short.parent.mkdir()
    write_wav(short, read_audio(SPEECH)[:, : 24000 + 777], 24000)  # 1.03 s: 13 frames against 32
    inputs = [str(SPEECH), str(short)]
    runs = {}
    for name, extra in (("batch", ()), ("alone", ("--batch-size", "1")), ("again", ())):
        out = tmp_path / name
        code, stdout, err = generate_cli(capsys, ckpt, "--input", *inputs, "--output", out, "--transcript",
                                         out / "words.json", "--tokens-out", out / "k.safetensors", *GREEDY, *extra)
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["k.safetensors", "short.wav", "speech_en.wav", "words.json"]
        assert all(str(p) in stdout for p in out.iterdir())
        runs[name] = out
    batch, alone = runs["batch"], runs["alone"]
    tokens, meta = read_tokens(batch / "k.safetensors")
    tokens_alone, _ = read_tokens(alone / "k.safetensors")
    assert json.loads(meta["inputs"]) == {"speech_en": inputs[0], "short": inputs[1]}
    assert tokens["short"].shape == (9, 13) and tokens["speech_en"].shape == (9, 32)
    for stem, length in (("speech_en", 60169), ("short", 24777)):
        assert torch.equal(tokens[stem], tokens_alone[stem]), stem
        a, _ = read_stereo(batch / f"{stem}.wav")
        b, _ = read_stereo(alone / f"{stem}.wav")
        assert a.shape == (2, length) and np.abs(a - b).max() <= 2 / 32768, stem
    words = json.loads((batch / "words.json").read_text())
    assert list(words) == inputs and words[inputs[1]]["input"] == inputs[1]
    assert words == json.loads((alone / "words.json").read_text())
    for name in ("short.wav", "speech_en.wav", "words.json"):  # greedy: the same output every run
        assert (batch / name).read_bytes() == (runs["again"] / name).read_bytes(), name
    again, meta_again = read_tokens(runs["again"] / "k.safetensors")  # (the header's key order varies)
    assert meta_again == meta and all(torch.equal(tokens[k], again[k]) for k in tokens) and list(again) == list(tokens)


def test_transcript_folder(tmp_path, capsys, ckpt):
    other = tmp_path / "b.wav"
    write_wav(other, read_audio(SPEECH)[:, :30000], 24000)
    code, out, err = generate_cli(capsys, ckpt, "--input", SPEECH, other, "--transcript", tmp_path / "words")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "words").iterdir()) == ["b.json", "speech_en.json"]
    one = json.loads((tmp_path / "words" / "b.json").read_text())
    assert one["input"] == str(other) and one["duration"] == pytest.approx(1.25)
    # Again into the same folder: its files are replaced only with --overwrite (a file named by the user always is).
    first = (tmp_path / "words" / "b.json").read_bytes()
    code, _, err = generate_cli(capsys, ckpt, "--input", other, "--transcript", tmp_path / "words")
    assert_one_line_error(code, err, "b.json already exists", "--overwrite")
    assert (tmp_path / "words" / "b.json").read_bytes() == first
    code, _, err = generate_cli(capsys, ckpt, "--input", other, "--transcript", tmp_path / "words", "--overwrite",
                                "--seed", "5")
    assert code == 0, err


# --- errors -------------------------------------------------------------------------------------------------
def _empty(path: Path) -> None:
    write_pcm16(path, np.zeros(0))


def _silent(path: Path) -> None:
    write_pcm16(path, np.zeros(24000))


@pytest.mark.parametrize(
    "make,override,extra,needles",
    [
        (None, {}, (), ("not found",)),
        (_empty, {}, (), ("no samples",)),
        (_silent, {}, (), ("silent",)),
        ("speech", {}, ("--config", "small"), ("does not match the LM architecture", "model.safetensors")),
        ("speech", {"tokenizer": "tokenizer80"}, (), ("80 pieces", "text_card", "96")),
        ("speech", {"lm": "mimi"}, (), ("Mimi checkpoint", "mimi.safetensors")),
    ],
    ids=["missing", "empty-wav", "silent-wav", "lm-config-mismatch", "tokenizer-vocabulary", "mimi-as-lm"],
)
def test_errors(tmp_path, capsys, ckpt, make, override, extra, needles):
    src = tmp_path / "user.wav"
    if make == "speech":
        src.write_bytes(SPEECH.read_bytes())
    elif make is not None:
        make(src)
    before = sorted(tmp_path.iterdir())
    files = {k: ckpt[v] for k, v in override.items()}
    code, out, err = generate_cli(capsys, ckpt, "--input", src, "--output", tmp_path / "out", "--transcript",
                                  tmp_path / "t.json", "--tokens-out", tmp_path / "k.safetensors", *extra, **files)
    assert_one_line_error(code, err, *needles)
    if make != "speech":
        assert str(src) in err
    assert out == "" and sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "argv,needle",
    [
        (("--input", SPEECH), "nothing to write"),
        (("--input", SPEECH, SPEECH, "--output", "x"), "named 'speech_en'"),
        (("--input", SPEECH, ASSETS / "speech_en_16k.ogg", "--output", "{tmp}/o.wav"), "give a folder"),
        (("--input", SPEECH, "--output", "{tmp}/nope/o.wav"), "does not exist"),
        (("--input", SPEECH, "--output", "{tmp}/o.wav", "--temp", "-1"), "temperatures must be >= 0"),
        (("--input", SPEECH, "--output", "{tmp}/o.wav", "--kv-pages", "0"), "number of pages >= 1"),
        ((SPEECH, "--input", SPEECH, "--output", "{tmp}/o.wav"), "input given twice"),
        ((SPEECH, "{tmp}/a.wav", "--output", "{tmp}/b.wav"), "output given twice"),
        (("--output", "{tmp}/o.wav"), "no input: give INFILE or --input"),
    ],
    ids=["no-output", "same-stem", "one-wav-for-two", "missing-folder", "negative-temperature", "kv-pages",
         "input-twice", "output-twice", "no-input"],
)
def test_usage_errors(tmp_path, capsys, ckpt, argv, needle):
    code, _, err = generate_cli(capsys, ckpt, *(str(a).format(tmp=tmp_path) for a in argv))
    assert_one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []


def test_mimi_must_fit_the_lm(ckpt):
    lm = fd.load_lm(ckpt["lm"], config="tiny")
    tokenizer = TextTokenizer.load(ckpt["tokenizer"])
    few = fd.Mimi(mimi_preset("tiny").with_codebooks(6))
    with pytest.raises(CheckpointError, match="holds 6 codebooks but the LM lm.safetensors uses 8"):
        check_models(few, lm, tokenizer, "lm.safetensors")
    tiny = mimi_preset("tiny")
    other_card = fd.Mimi(replace(tiny, quantizer=replace(tiny.quantizer, bins=64)))
    with pytest.raises(CheckpointError, match="64 entries but the LM lm.safetensors expects card=32"):
        check_models(other_card, lm, tokenizer, "lm.safetensors")


def test_library_progress_counts_input_frames(ckpt):
    mimi = fd.load_mimi(ckpt["mimi"], config=mimi_preset("tiny"))
    lm = fd.load_lm(ckpt["lm"], config="tiny")
    tokenizer = TextTokenizer.load(ckpt["tokenizer"])
    check_models(mimi, lm, tokenizer, "lm")
    speech = read_audio(SPEECH)
    done: list[int] = []
    results = generate([speech, speech[:, :5000]], mimi, lm, tokenizer, Sampling(seed=1), progress=done.append)
    assert sum(done) == 32 + 3 and len(done) == 32
    assert [r.audio.shape[-1] for r in results] == [60169, 5000] and results[1].tokens.shape == (9, 3)
    assert torch.equal(results[1].audio[1], speech[0, :5000])  # the right channel is the input itself
