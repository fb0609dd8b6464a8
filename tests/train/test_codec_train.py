"""Codec training (`task: codec`): the RVQ training path agrees with inference, a step lowers the loss, the recipe
resumes exactly and exports a file every command loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import fullduplex as fd
from fullduplex.cli.main import run
from fullduplex.codec import mimi_preset
from fullduplex.codec.audio import write_wav
from fullduplex.codec.quantizer import EmaSettings
from fullduplex.train.codec import CodecLossConfig, ReconstructionLoss, codec_step, load_codec_config, train_codec
from tests.helpers import assert_one_line_error, randomize_, speech

ROOT = Path(__file__).resolve().parents[2]


def tiny_mimi(seed: int = 0) -> fd.Mimi:
    torch.manual_seed(seed)
    return randomize_(fd.Mimi(mimi_preset("tiny")), seed)


def test_training_path_matches_inference_and_keeps_the_state_dict():
    mimi = tiny_mimi().eval()
    wav = speech(0.8)
    keys = set(mimi.state_dict())
    with torch.no_grad():
        reference_codes = mimi.encode(wav)  # inference, before the training path was ever used
        latent = mimi.encode_latent(wav)
        q = mimi.quantizer.quantize(latent, mimi.num_codebooks)
        assert torch.equal(q.codes, reference_codes)
        torch.testing.assert_close(q.z, mimi.quantizer.decode(q.codes))  # forward value: the codebook entries
        torch.testing.assert_close(mimi.decode_latent(q.z), mimi.decode(reference_codes))
        assert torch.equal(mimi.encode(wav), reference_codes)  # using the training path changed nothing
        # With EMA updates the codebooks move, the state dict keeps the released keys, and inference uses the
        # new codebooks exactly as the training path looks them up.
        mimi.quantizer.quantize(latent, mimi.config.quantizer.n_q, update=True, settings=EmaSettings(0.5))
    assert set(mimi.state_dict()) == keys
    with torch.no_grad():
        again = mimi.quantizer.quantize(latent, mimi.num_codebooks)
        assert torch.equal(again.codes, mimi.encode(wav))


def test_straight_through_gradient_reaches_the_encoder():
    mimi = tiny_mimi()
    z = mimi.encode_latent(speech(0.4))
    q = mimi.quantizer.quantize(z, 4)
    (mimi.decode_latent(q.z).square().mean() + q.commitment).backward()
    assert mimi.encoder.model[0].weight.grad is not None and mimi.encoder.model[0].weight.grad.abs().sum() > 0
    assert q.commitment > 0


def test_codec_step_lowers_the_loss_on_a_tiny_batch():
    mimi = tiny_mimi()
    wav = torch.cat([speech(0.48), speech(1.0)[..., 12000:12000 + 11520]])  # [2, 1, 6 frames]
    loss_fn = ReconstructionLoss(CodecLossConfig(scales=[128, 256], mel_bins=16), 24000)
    optimizer = torch.optim.Adam(mimi.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(16):
        loss, _ = codec_step(mimi, wav, loss_fn, update=True, generator=generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("codec")
    for split, start in (("train", 0), ("valid", 24000)):
        (root / split).mkdir()
        wav = speech(3.0)[0, :, start:]
        write_wav(root / split / "a.wav", wav, 24000)
    recipe = {
        "task": "codec", "model": {"preset": "tiny"},
        "data": {"train": ["train"], "valid": ["valid"], "segment_seconds": 0.32, "valid_windows": 2},
        "optim": {"lr": 3e-3, "warmup": 2, "max_steps": 8},
        "loss": {"scales": [128, 256], "mel_bins": 16},
        "run": {"output": str(root / "run"), "batch_size": 2, "eval_every": 4, "save_every": 4, "log_every": 1},
    }
    (root / "codec.yaml").write_text(yaml.safe_dump(recipe))
    return root / "codec.yaml"


def test_recipe_resumes_exactly_and_exports(recipe, tmp_path):
    whole = train_codec(load_codec_config(recipe, [f"run.output={tmp_path / 'a'}"]), progress=False)
    cut = load_codec_config(recipe, [f"run.output={tmp_path / 'b'}"])
    train_codec(cut, stop_after=6, progress=False)  # killed after step 6: the last checkpoint is step 4
    resumed = train_codec(cut, progress=False)
    assert resumed.resumed_from == 4
    assert [resumed.losses[s] for s in range(5, 9)] == [whole.losses[s] for s in range(5, 9)]
    assert sorted(whole.valid) == [4, 8]
    mimi = fd.load_mimi(whole.exported, config=mimi_preset("tiny"), num_codebooks=None)
    assert mimi.config.quantizer.n_q == 10
    config = json.loads((tmp_path / "a" / "mimi_config.json").read_text())["mimi_config"]
    assert fd.MimiConfig.from_moshi_dict(config) == mimi_preset("tiny")


def test_cli_dispatches_on_task_and_reports_bad_keys(recipe, tmp_path, capsys):
    code = run(["train", str(recipe), "--no-progress", "-o", f"run.output={tmp_path / 'c'}", "-o", "optim.max_steps=2"])
    assert code == 0 and "trained the codec to step 2" in capsys.readouterr().out
    assert (tmp_path / "c" / "mimi.safetensors").is_file()
    assert_one_line_error(run(["train", str(recipe), "-o", "optim.lr_temporal=1"]), capsys.readouterr().err,
                          "unknown key", "optim.lr_temporal")
    assert_one_line_error(run(["train", str(recipe), "-o", "model.preset=huge"]), capsys.readouterr().err,
                          "model.preset", "huge")
    assert_one_line_error(run(["train", str(recipe), "-o", "task=speech"]), capsys.readouterr().err, "task")


def test_codec_recipe_under_torchrun_is_refused(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = run(["train", str(recipe), "-o", f"run.output={tmp_path / 'd'}"])
    assert_one_line_error(code, capsys.readouterr().err, "one process", "without torchrun")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", ["codec.yaml", "lm.yaml"])
def test_demo_recipes_are_valid(name, tmp_path):
    path = ROOT / "examples" / "demo" / name
    raw = yaml.safe_load(path.read_text())
    if name == "codec.yaml":
        (tmp_path / "d").mkdir()
        cfg = load_codec_config(path, [f"data.train=[{tmp_path / 'd'}]", f"data.valid=[{tmp_path / 'd'}]"])
        assert cfg.model.preset == "demo" and cfg.optim.max_steps == raw["optim"]["max_steps"]
    else:
        from fullduplex.train.config import load_config

        cfg = load_config(path, check_paths=False)
        assert cfg.model.from_scratch and cfg.model.config == "demo"
