"""``fullduplex codec encode|decode`` end to end on a tiny random Mimi, plus the audio reader/writer it relies on.

Every bad input must exit with status 2 and one ``error:`` line on stderr, never a traceback, and leave no
output file behind.
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import sphn
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import fullduplex as fd
from fullduplex.checkpoint.state import write_safetensors
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.codec.audio import read_audio, resample, write_wav
from fullduplex.errors import AudioError
from tests.helpers import ASSETS, assert_one_line_error, randomize_

SPEECH = ASSETS / "speech_en.wav"  # 24 kHz mono, 60169 samples
STEREO_44K = ASSETS / "speech_en_stereo_44k.flac"  # 44.1 kHz stereo, 1.2 s
OGG_16K = ASSETS / "speech_en_16k.ogg"  # 16 kHz mono vorbis, 1.2 s


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = randomize_(fd.Mimi(mimi_preset("tiny")).eval())
    return fd.save_mimi(model, tmp_path_factory.mktemp("ckpt") / "tiny-mimi.safetensors")


@pytest.fixture(scope="module")
def tiny(tiny_ckpt) -> fd.Mimi:
    return fd.load_mimi(tiny_ckpt, config=mimi_preset("tiny"), num_codebooks=4)


def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    """Run ``fullduplex ARGV`` in-process; returns (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def codec(capsys, action: str, src: Path, dst: Path, ckpt: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "codec", action, src, dst, "--mimi-weight", ckpt, "--mimi-config", "tiny", "--device", "cpu",
                   "--quiet", *extra)


def read_codes(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("codes"), dict(f.metadata())


def write_float_wav(path: Path, data: np.ndarray, sample_rate: int) -> None:
    """A mono IEEE-float WAV (format 3), which can hold NaN; ``wave`` and ``sphn.write_wav`` write PCM only."""
    raw = np.asarray(data, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(raw)) + raw
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# --- round trips --------------------------------------------------------------------------------------------
def test_round_trip_matches_in_process_model(tmp_path, capsys, tiny_ckpt, tiny):
    codes_path, wav_path = tmp_path / "speech.codes.safetensors", tmp_path / "speech.wav"
    code, out, err = codec(capsys, "encode", SPEECH, codes_path, tiny_ckpt, "--num-codebooks", "4")
    assert code == 0, err
    assert str(codes_path) in out and "[4, 32]" in out
    codes, meta = read_codes(codes_path)
    source = read_audio(SPEECH)  # [1, S]
    samples = source.shape[-1]
    assert codes.dtype == torch.int16 and codes.shape == (4, math.ceil(samples / 1920))
    with torch.no_grad():
        expected = tiny.encode(source[None])[0]  # batch encode: [K, T]
    assert torch.equal(codes.long(), expected)
    assert meta["num_codebooks"] == "4" and meta["num_frames"] == str(codes.shape[1])
    assert meta["sample_rate"] == "24000" and meta["frame_rate"] == "12.5"
    assert meta["source_samples"] == str(samples) and float(meta["source_duration"]) == pytest.approx(samples / 24000)
    assert meta["source_sample_rate"] == "24000" and meta["source_channels"] == "1"
    assert meta["codec"] == tiny_ckpt.name and meta["fullduplex_version"] == fd.__version__
    assert meta["source_file"] == str(SPEECH)

    code, out, err = codec(capsys, "decode", codes_path, wav_path, tiny_ckpt)
    assert code == 0, err
    assert str(wav_path) in out
    data, sr = sphn.read(str(wav_path))
    assert sr == 24000 and data.shape == (1, samples)
    with torch.no_grad():
        batch = tiny.decode(expected[None])[0, :, :samples].clamp(-1, 1)
    assert np.abs(data - batch.numpy()).max() < 2e-4  # 16-bit PCM


def test_long_input_is_chunked_like_batch(tmp_path, capsys, tiny_ckpt, tiny):
    """9 s spans three 4 s encode chunks and several decode chunks: streaming equals batch."""
    speech = read_audio(SPEECH)
    long = speech.repeat(1, 4)[:, : 9 * 24000 + 123]
    src, codes_path, wav_path = tmp_path / "long.wav", tmp_path / "long.sft", tmp_path / "long_out.wav"
    write_float_wav(src, long[0].numpy(), 24000)
    assert codec(capsys, "encode", src, codes_path, tiny_ckpt, "--num-codebooks", "3")[0] == 0
    codes, _ = read_codes(codes_path)
    tiny.num_codebooks = 3
    try:
        with torch.no_grad():
            expected = tiny.encode(long[None])[0]
            audio = tiny.decode(expected[None])[0, :, : long.shape[-1]].clamp(-1, 1)
    finally:
        tiny.num_codebooks = 4
    assert codes.shape == (3, math.ceil(long.shape[-1] / 1920)) and torch.equal(codes.long(), expected)
    assert codec(capsys, "decode", codes_path, wav_path, tiny_ckpt)[0] == 0
    data, _ = sphn.read(str(wav_path))
    assert data.shape == (1, long.shape[-1]) and np.abs(data - audio.numpy()).max() < 2e-4


@pytest.mark.parametrize("path,rate,channels", [(STEREO_44K, 44100, 2), (OGG_16K, 16000, 1)])
def test_other_rates_and_channels(tmp_path, capsys, tiny_ckpt, path, rate, channels):
    codes_path = tmp_path / "c.safetensors"
    code, _, err = codec(capsys, "encode", path, codes_path, tiny_ckpt, "--num-codebooks", "2")
    assert code == 0, err
    if channels > 1:
        assert "warning:" in err and f"{channels} channels" in err and str(path) in err
    else:
        assert "warning" not in err
    codes, meta = read_codes(codes_path)
    assert meta["source_samples"] == "28800"  # 1.2 s at 24 kHz after resampling
    assert codes.shape == (2, 15)
    assert meta["source_sample_rate"] == str(rate) and meta["source_channels"] == str(channels)
    assert codec(capsys, "decode", codes_path, tmp_path / "o.wav", tiny_ckpt)[0] == 0
    assert sphn.read(str(tmp_path / "o.wav"))[0].shape == (1, 28800)


# --- bad inputs ---------------------------------------------------------------------------------------------
def make_empty(path: Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(b"")


def make_nan(path: Path) -> None:
    data = np.zeros(4800, np.float32)
    data[100] = np.nan
    write_float_wav(path, data, 24000)


@pytest.mark.parametrize(
    "make,needle",
    [
        (make_empty, "no samples"),
        (make_nan, "NaN"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)), "could not read"),
        (lambda p: p.write_bytes(b""), "empty"),
        (None, "not found"),
    ],
    ids=["empty-wav", "nan", "random-bytes", "zero-bytes", "missing"],
)
def test_bad_audio(tmp_path, capsys, tiny_ckpt, make, needle):
    src, dst = tmp_path / "x.wav", tmp_path / "x.safetensors"
    if make is not None:
        make(src)
    code, _, err = codec(capsys, "encode", src, dst, tiny_ckpt)
    assert_one_line_error(code, err, needle, str(src))
    assert not dst.exists() and list(tmp_path.iterdir()) == ([src] if make else [])


def test_missing_output_folder(tmp_path, capsys, tiny_ckpt):
    code, _, err = codec(capsys, "encode", SPEECH, tmp_path / "nope" / "c.safetensors", tiny_ckpt)
    assert_one_line_error(code, err, "does not exist")
    codes_path = tmp_path / "c.safetensors"
    write_safetensors({"codes": torch.zeros(2, 3, dtype=torch.int16)}, codes_path)
    code, _, err = codec(capsys, "decode", codes_path, tmp_path / "nope" / "o.wav", tiny_ckpt)
    assert_one_line_error(code, err, "does not exist")


def test_lm_checkpoint_is_refused(tmp_path, capsys):
    lm = tmp_path / "model.safetensors"
    save_file({"text_emb.weight": torch.zeros(4, 2), "emb.0.weight": torch.zeros(4, 2)}, str(lm))
    code, _, err = run_cli(capsys, "codec", "encode", SPEECH, tmp_path / "c.sft", "--mimi-weight", lm, "--quiet")
    assert_one_line_error(code, err, "LM", str(lm))
    assert not (tmp_path / "c.sft").exists()


@pytest.mark.parametrize(
    "content,needle",
    [
        ({"codes": torch.tensor([[0, 5, 32]], dtype=torch.int16)}, "outside the codebook"),
        ({"codes": torch.tensor([[0, -1], [3, 4]], dtype=torch.int16)}, "outside the codebook"),
        ({"codes": torch.zeros(11, 3, dtype=torch.int16)}, "11 codebooks"),
        ({"codes": torch.zeros(1, 2, 3, dtype=torch.int16)}, "[codebooks, frames]"),
        ({"codes": torch.zeros(2, 3)}, "integers"),
        ({"codes": torch.zeros(2, 0, dtype=torch.int16)}, "no codes"),
        ({"tokens": torch.zeros(2, 3, dtype=torch.int16)}, "no tensor 'codes'"),
        (b"not a safetensors file at all", "not a safetensors"),
        (None, "not found"),
    ],
    ids=["too-big", "negative", "too-many-books", "3d", "float", "no-frames", "no-codes", "garbage", "missing"],
)
def test_bad_codes_leave_no_output(tmp_path, capsys, tiny_ckpt, content, needle):
    src, dst = tmp_path / "codes.safetensors", tmp_path / "out.wav"
    if isinstance(content, dict):
        write_safetensors(content, src)
    elif content is not None:
        src.write_bytes(content)
    dst.write_bytes(b"previous")  # a failed decode must leave an existing output untouched
    code, _, err = codec(capsys, "decode", src, dst, tiny_ckpt)
    assert_one_line_error(code, err, needle)
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({dst.name} | ({src.name} if content else set()))


def test_usage_errors_and_help(capsys, tmp_path):
    assert run_cli(capsys, "codec", "decode", "a.sft", tmp_path / "o.mp3")[0] == 2
    code, _, err = run_cli(capsys, "codec", "encode", "a.wav", "b.sft", "--num-codebooks", "0")
    assert code == 2 and "usage:" in err
    assert run_cli(capsys, "codec")[0] == 2
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"fullduplex {fd.__version__}"
    for argv in ([], ["codec"], ["codec", "encode"], ["codec", "decode"]):
        code, out, _ = run_cli(capsys, *argv, "--help")
        assert code == 0 and "usage: fullduplex" in out and "examples:" in out, argv


@pytest.mark.parametrize("entry", ["console-script", "python-m"])
def test_entry_points(entry):
    if entry == "console-script":
        exe = shutil.which("fullduplex") or str(Path(sys.executable).with_name("fullduplex"))
        cmd = [exe, "codec", "encode", "--help"]
    else:
        cmd = [sys.executable, "-m", "fullduplex", "--version"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("--num-codebooks" in result.stdout) if entry == "console-script" else (fd.__version__ in result.stdout)


# --- the audio module ---------------------------------------------------------------------------------------
def test_read_audio_downmixes_with_warning_and_resamples():
    with pytest.warns(UserWarning, match="2 channels"):
        wav = read_audio(STEREO_44K)
    assert wav.dtype == torch.float32 and wav.shape == (1, 28800)
    data, _ = sphn.read(str(STEREO_44K))
    direct = resample(torch.from_numpy(data).mean(0, keepdim=True), 44100, 24000)
    assert torch.allclose(wav, direct)
    assert read_audio(OGG_16K, sample_rate=16000).shape == (1, 19200)


@pytest.mark.parametrize("src", [16000, 44100, 48000, 22050, 8000])
def test_resample_is_aligned_and_accurate(src):
    """A 1 kHz sine stays a 1 kHz sine with no delay, and the length is ceil(S * dst / src)."""
    t = torch.arange(src, dtype=torch.float64) / src
    y = resample(torch.sin(2 * math.pi * 1000 * t).float()[None], src, 24000)
    assert y.shape == (1, 24000)
    ref = torch.sin(2 * math.pi * 1000 * torch.arange(24000, dtype=torch.float64) / 24000)
    assert (y[0].double() - ref)[300:-300].abs().max() < 2e-3
    assert resample(torch.zeros(2, 1001), src, 24000).shape == (2, math.ceil(1001 * 24000 / src))


def test_write_wav_clips_and_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "o.wav"
    write_wav(path, torch.tensor([[0.5, 2.0, -3.0, float("nan")]]), 24000)
    data, sr = sphn.read(str(path))
    assert sr == 24000 and np.allclose(data[0], [0.5, 1.0, -1.0, 0.0], atol=1e-4)

    def broken(name, data, rate):
        Path(name).write_bytes(b"RIFF half")
        raise ValueError("disk full")

    monkeypatch.setattr(sphn, "write_wav", broken)
    with pytest.raises(AudioError, match="disk full"):
        write_wav(path, np.zeros(10, np.float32), 24000)
    assert [p.name for p in tmp_path.iterdir()] == ["o.wav"] and sphn.read(str(path))[0].shape == (1, 4)
    with pytest.raises(AudioError, match="does not exist"):
        write_wav(tmp_path / "nope" / "o.wav", np.zeros(10, np.float32), 24000)
