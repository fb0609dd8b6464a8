"""Codec metrics against their libraries on known inputs, and ``fullduplex eval codec`` end to end on a tiny
random Mimi."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.codec.audio import read_audio, resample
from fullduplex.eval.codec import align, bitrate, compare, pesq_wb, reconstruct, si_sdr, stoi
from tests.eval.conftest import write_wav
from tests.helpers import ASSETS, assert_one_line_error, randomize_, speech

SPEECH = ASSETS / "speech_en.wav"


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return resample(speech(), 24000, 16000)[0, 0].numpy()  # 2.5 s at 16 kHz


@pytest.fixture(scope="module")
def noise(clean) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32) * 0.1


def test_identical_audio_scores_the_top(clean):
    assert stoi(clean, clean) == pytest.approx(1.0, abs=1e-6)
    assert pesq_wb(clean, clean) == pytest.approx(4.644, abs=0.01)
    assert si_sdr(clean, 0.37 * clean) > 100  # scale-invariant: a scaled copy is (numerically) perfect
    assert si_sdr(clean, clean + 0.25) > 100  # zero-mean: an offset changes nothing
    assert si_sdr(clean, clean) == math.inf


def test_noise_scores_low_and_ranks_below_noisy_speech(clean, noise):
    assert stoi(clean, noise) < 0.5 and pesq_wb(clean, noise) < 1.5 and si_sdr(clean, noise) < -20
    noisy = clean + 0.3 * noise
    assert stoi(clean, noise) < stoi(clean, noisy) < 1.0
    assert pesq_wb(clean, noise) < pesq_wb(clean, noisy) < 4.0
    assert si_sdr(clean, noise) < si_sdr(clean, noisy) < 30


def _si_sdr_by_correlation(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SI-SDR written another way, in float64: with rho the correlation of the zero-mean signals, the projection
    keeps rho^2 of the estimate's energy and the residual 1 - rho^2, so SI-SDR = 10 log10(rho^2 / (1 - rho^2))."""
    rho = np.corrcoef(np.asarray(reference, np.float64), np.asarray(estimate, np.float64))[0, 1]
    return float(10 * np.log10(rho**2 / (1 - rho**2)))


def test_si_sdr_matches_its_definition(clean, noise):
    # Expectations in float64, from an independent formula: the inputs are float32, and a float32 expectation
    # would test numpy's summation order (which differs between builds), not the definition.
    offset = 0.2  # a DC offset on the estimate: without the mean removal the score drops by ~10 dB
    for est, scale in ((0.8 * clean + 0.05 * noise, 0.8), (2.5 * clean + 0.3 * noise + offset, 2.5)):
        expected = _si_sdr_by_correlation(clean, est)
        assert si_sdr(clean, est) == pytest.approx(expected, rel=1e-8)  # float64; 1 - rho^2 cancels ~2 digits
        # What a wrong implementation would give is far from it: no mean removal, or no optimal scaling.
        c64, e64 = clean.astype(np.float64), est.astype(np.float64)
        no_scaling = 10 * np.log10(np.sum(c64**2) / np.sum((e64 - c64) ** 2))
        assert abs(no_scaling - expected) > 1.0
        target = c64 * np.dot(e64, c64) / np.dot(c64, c64)
        no_mean = 10 * np.log10(np.sum(target**2) / np.sum((e64 - target) ** 2))
        if offset and scale == 2.5:
            assert abs(no_mean - expected) > 1.0
    est = (0.8 * clean + 0.05 * noise).astype(np.float64)
    assert si_sdr(clean, 3.0 * est) == pytest.approx(si_sdr(clean, est), rel=1e-9)  # scale-invariant
    with pytest.raises(ValueError, match="silent reference"):
        si_sdr(np.zeros(100), np.ones(100))
    with pytest.raises(ValueError, match="one shape"):
        si_sdr(np.ones(100), np.ones(99))


def test_pesq_failures_become_messages(clean):
    with pytest.raises(ValueError, match="silent"):
        pesq_wb(np.zeros(16000, np.float32), clean[:16000])
    with pytest.raises(ValueError, match="BufferTooShortError"):
        pesq_wb(clean[:2000], clean[:2000])


def test_alignment_and_bitrate(clean):
    late = np.concatenate([np.zeros(37, np.float32), clean])[: len(clean)]
    ref, est, lag = align(clean, late, 800)
    assert lag == 37 and np.array_equal(ref, est)
    assert align(late, clean, 800)[2] == -37
    scores = compare(clean, late, 16000)
    assert scores["lag_ms"] == pytest.approx(37 / 16, abs=1e-3) and scores["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["si_sdr_db"] is None and "exact" in scores["errors"]["si_sdr_db"]
    assert bitrate(8, 2048, 12.5) == 1100.0 and bitrate(32, 2048, 12.5) == 4400.0


@pytest.fixture(scope="module")
def tiny_mimi(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(fd.Mimi(mimi_preset("tiny")).eval())
    return fd.save_mimi(model, tmp_path_factory.mktemp("ckpt") / "tiny-mimi.safetensors")


def test_streaming_reconstruction_equals_batch(tiny_mimi):
    mimi = fd.load_mimi(tiny_mimi, config=mimi_preset("tiny"), num_codebooks=10)
    wav = speech(9.0)[0]  # [1, S]: more than one 4 s chunk, not a whole number of frames
    wav = wav[:, : wav.shape[-1] - 333]
    recon = reconstruct(mimi, wav, 6)
    assert recon.shape == wav.shape and mimi.num_codebooks == 6
    with torch.no_grad():
        frames = -(-wav.shape[-1] // 1920)
        padded = torch.nn.functional.pad(wav, (0, frames * 1920 - wav.shape[-1]))[None]
        batch = mimi.decode(mimi.encode(padded))[0, :, : wav.shape[-1]]
    assert torch.allclose(recon, batch, atol=1e-4)


def run(capsys, ckpt, *argv):
    code = main(["eval", "codec", "--mimi-weight", str(ckpt), "--mimi-config", "tiny", "--device", "cpu", "--quiet",
                 *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_round_trip_end_to_end(tmp_path, capsys, tiny_mimi):
    corpus = tmp_path / "audio"
    corpus.mkdir()
    (corpus / "speech.wav").write_bytes(SPEECH.read_bytes())
    (corpus / "stereo.flac").write_bytes((ASSETS / "speech_en_stereo_44k.flac").read_bytes())
    write_wav(corpus / "short.wav", speech()[0, 0, :3000].numpy())  # 0.125 s: too short for PESQ
    write_wav(corpus / "silent.wav", np.zeros(24000))
    (corpus / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    out = tmp_path / "report"
    code, stdout, err = run(capsys, tiny_mimi, corpus, "--codebooks", "10", "4", "--output", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["codec.png", "report.json", "report.md"]
    warnings = err.strip().splitlines()
    assert any("skipped" in w and "silent.wav" in w and "silent" in w for w in warnings)
    assert any("skipped" in w and "broken.wav" in w for w in warnings)
    assert any("short.wav, 4 codebooks: pesq_wb" in w and "BufferTooShortError" in w for w in warnings)
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["codebooks"] == [4, 10] and report["settings"]["cardinality"] == 32
    assert set(report["files"]) == {str(corpus / n) for n in ("speech.wav", "stereo.flac", "short.wav")}
    assert set(report["errors"]) == {str(corpus / "silent.wav"), str(corpus / "broken.wav")}
    one = report["files"][str(corpus / "speech.wav")]["codebooks"]["4"]
    assert one["bitrate_bps"] == 4 * 5 * 12.5
    # The CLI's numbers are the library's on the same reconstruction.
    mimi = fd.load_mimi(tiny_mimi, config=mimi_preset("tiny"), num_codebooks=10)
    wav = read_audio(SPEECH)
    again = compare(wav[0].numpy(), reconstruct(mimi, wav, 4)[0].numpy(), 24000)
    for key in ("stoi", "pesq_wb", "si_sdr_db", "lag_ms"):
        assert one[key] == pytest.approx(again[key], abs=1e-3), key
    # A random codec is far from the original: it scores like noise, not like a copy.
    assert one["stoi"] < 0.9 and one["si_sdr_db"] < 0
    short = report["files"][str(corpus / "short.wav")]["codebooks"]["4"]
    assert short["pesq_wb"] is None and short["stoi"] is not None
    mean = report["mean"]["4"]
    assert mean["n_pesq_wb"] == 2 and mean["n_stoi"] == 3
    values = [r["codebooks"]["4"]["stoi"] for r in report["files"].values()]
    assert mean["stoi"] == pytest.approx(np.mean(values), abs=1e-4)
    md = (out / "report.md").read_text()
    assert "| **mean** | 4 |" in md and "speech.wav" in md and "codec.png" in md


def test_cli_errors(tmp_path, capsys, tiny_mimi):
    code, out, err = run(capsys, tiny_mimi, SPEECH, "--codebooks", "11", "--output", tmp_path / "o")
    assert_one_line_error(code, err, "--codebooks 11", "holds 10 codebooks")
    code, out, err = run(capsys, tiny_mimi, tmp_path / "nope.wav", "--output", tmp_path / "o")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no file could be evaluated")
    assert not (tmp_path / "o").exists()
    code, _, err = run(capsys, tiny_mimi, SPEECH, "--codebooks", "0", "--output", tmp_path / "o")
    assert code == 2 and "must be at least 1" in err


def test_trained_codec_round_trip_of_speech_scores_above_noise(clean, noise):
    """The bundled demo Mimi (trained on espeak-ng speech by scripts/make_demo_model.sh) reconstructs held-out
    speech far better than noise scores: what `eval codec` is for, on a codec that has learnt something."""
    from fullduplex.demo import demo_files, demo_mimi_config

    mimi = fd.load_mimi(demo_files()["mimi"], config=demo_mimi_config(), num_codebooks=None).eval()
    wav = read_audio(SPEECH)
    got = compare(wav[0].numpy(), reconstruct(mimi, wav, mimi.num_codebooks)[0].numpy(), 24000)
    assert got["stoi"] > stoi(clean, noise) + 0.2
    assert got["pesq_wb"] > pesq_wb(clean, noise)
    assert got["si_sdr_db"] > si_sdr(clean, noise) + 10
