"""`fullduplex train` on a tiny model: loss falls, exact resume, LoRA touches only adapters, torchrun = one
process, bad recipes give one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fullduplex.cli.main import run
from fullduplex.train.config import load_config
from fullduplex.train.recipe import train
from tests.helpers import assert_one_line_error
from tests.train.helpers import make_setup

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    return make_setup(tmp_path_factory.mktemp("train"))


class FakeWriter:  # torch.utils.tensorboard.SummaryWriter, without tensorboard installed
    scalars: list[tuple[str, float, int]] = []

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        pass


def test_loss_falls_and_run_folder(recipe, tmp_path, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    out = tmp_path / "run"
    result = train(load_config(recipe, [f"run.output={out}"]), progress=False)
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")  # the operator's loss curve
    tags = {tag for tag, _, _ in FakeWriter.scalars}
    assert {"train/loss", "train/seconds", "valid/loss"} <= tags
    assert [s for tag, _, s in FakeWriter.scalars if tag == "valid/loss"] == [10, 20, 30]
    losses = [result.losses[s] for s in range(1, 31)]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert sorted(result.valid) == [10, 20, 30] and result.valid[30] < result.valid[10]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 31))
    assert {"loss", "text_loss", "audio_loss", "grad_norm", "lr_temporal", "lr_depth", "frames_per_s"} <= set(records[0])
    assert records[0]["lr_depth"] == pytest.approx(2 * records[0]["lr_temporal"])  # split learning rates
    best = json.loads((out / "best.json").read_text())
    assert best["valid_loss"] == min(result.valid.values())
    assert (out / "checkpoints" / f"step_{best['step']:06d}" / "state.json").is_file()


def test_resume_after_kill_matches_uninterrupted(recipe, tmp_path):
    overrides = ["optim.max_steps=8", "run.save_every=4", "run.eval_every=0"]
    whole = train(load_config(recipe, [*overrides, f"run.output={tmp_path / 'a'}"]), progress=False)
    cut = load_config(recipe, [*overrides, f"run.output={tmp_path / 'b'}"])
    train(cut, stop_after=6, progress=False)  # killed after step 6: the last checkpoint is step 4
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "split": "train", "lo')  # killed while writing a line: torn, no newline
    with pytest.warns(UserWarning, match="torn last line"):
        resumed = train(cut, progress=False)
    assert resumed.resumed_from == 4
    assert [resumed.losses[s] for s in range(5, 9)] == [whole.losses[s] for s in range(5, 9)]  # exactly
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == list(range(1, 9))  # steps 5-6 of the killed run were dropped, not duplicated


def test_metrics_line_torn_in_the_middle_names_the_file(tmp_path):
    from fullduplex.errors import FullduplexError
    from fullduplex.train.curve import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(FullduplexError, match=r"metrics.jsonl: line 2 .*fix or delete that line"):
        read_metrics(path)
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    with pytest.warns(UserWarning, match="line 2"):
        assert read_metrics(path) == [{"step": 1, "loss": 2.0}]


def test_loss_curve_without_matplotlib_is_one_line(tmp_path, monkeypatch, capsys):
    from fullduplex.train.curve import draw_loss_curve

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 2.0}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert draw_loss_curve(tmp_path, tmp_path / "metrics.jsonl") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib is not installed" in err and "fullduplex[eval]" in err
    assert not (tmp_path / "loss.png").exists()


def test_run_output_holding_other_files_is_refused(recipe, tmp_path, capsys):
    """A run.output that holds a user's files is not a run to resume: refused before anything is written."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("keep me")
    code = run(["train", str(recipe), "--no-progress", f"--override=run.output={out}"])
    assert_one_line_error(code, capsys.readouterr().err, "run.output", "notes.txt", "nothing was deleted")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    assert (out / "config.json").read_text() == '{"mine": true}'


def test_resume_after_sigkill_of_the_process(recipe, tmp_path):
    """A real kill: `fullduplex train` in its own process gets SIGKILL once step 6's checkpoint is on disk (possibly
    while it writes a later one); resuming continues from the newest complete checkpoint with exactly the losses of
    an uninterrupted run."""
    import signal
    import time

    overrides = ["optim.schedule=constant", "run.save_every=2", "run.eval_every=0"]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "fullduplex", "train", str(recipe), "--no-progress", "--override=optim.max_steps=400",
           *[f"--override={o}" for o in overrides], f"--override=run.output={out}"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step_000006").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    last = max(int(p.name.removeprefix("step_")) for p in (out / "checkpoints").glob("step_*"))
    end = f"optim.max_steps={last + 4}"  # a constant schedule: the step count changes nothing else
    resumed = train(load_config(recipe, [*overrides, end, f"run.output={out}"]), progress=False)
    assert resumed.resumed_from is not None and resumed.resumed_from >= 6
    whole = train(load_config(recipe, [*overrides, end, f"run.output={tmp_path / 'whole'}"]), progress=False)
    steps = range(resumed.resumed_from + 1, last + 5)
    assert [resumed.losses[s] for s in steps] == [whole.losses[s] for s in steps]  # exactly


def test_lora_changes_only_adapters(recipe, tmp_path):
    out = tmp_path / "lora"
    cfg = load_config(recipe, ["optim.max_steps=4", "lora.enabled=true", "lora.rank=4", f"run.output={out}",
                               "lora.target_modules=[transformer.*, depformer_in.*]"])
    train(cfg, progress=False)
    trainable = load_file(str(out / "checkpoints" / "step_000004" / "trainable.safetensors"))
    assert trainable and all(k.endswith((".lora_A", ".lora_B")) for k in trainable)
    assert all(k.startswith(("transformer.", "depformer_in.")) for k in trainable)
    assert any(k.endswith(".lora_B") and v.abs().max() > 0 for k, v in trainable.items())  # it did learn
    optimizer = torch.load(out / "checkpoints" / "step_000004" / "optimizer.pt", weights_only=False)
    assert set(optimizer["state"]) == set(trainable)  # AdamW saw the adapters only
    assert run(["export", str(out), "--output", str(tmp_path / "kept"), "--keep-lora"]) == 0
    base = load_file(str(recipe.parent / "model" / "model.safetensors"))
    kept = load_file(str(tmp_path / "kept" / "model.safetensors"))
    assert kept.keys() == base.keys() and all(torch.equal(kept[k], base[k]) for k in base)  # bit-identical


def test_torchrun_two_processes_equal_one(recipe, tmp_path):
    """Global batch 4: one process x 4 windows, and two FSDP2 ranks x 1 window x 2 micro-batches (gloo)."""
    overrides = ["optim.max_steps=4", "run.eval_every=2", "run.save_every=0"]
    single = train(load_config(recipe, [*overrides, f"run.output={tmp_path / 'one'}"]), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fullduplex", "train", str(recipe), "--no-progress",
           *[f"--override={o}" for o in overrides], f"--override=run.output={tmp_path / 'two'}",
           "--override=run.batch_size=1", "--override=run.grad_accumulation=2", "--override=run.fsdp=true"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    train_losses = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    valid_losses = {r["step"]: r["loss"] for r in records if r["split"] == "valid"}
    for step in range(1, 5):
        assert train_losses[step] == pytest.approx(single.losses[step], rel=1e-5, abs=1e-5)
    assert valid_losses == pytest.approx(single.valid, rel=1e-5)
    assert single.losses[4] < single.losses[1] - 0.1  # the steps did something


@pytest.mark.parametrize(
    "override, needles",
    [
        ("optim.lr=1e-4", ["unknown key 'optim.lr'"]),
        ("data.train=[nowhere]", ["data.train", "nowhere", "does not exist"]),
        ("run.batch_size=two", ["run.batch_size", "integer"]),
        ("optim.schedule=linear", ["optim.schedule", "cosine"]),
        ("lora.enabled=maybe", ["lora.enabled", "true or false"]),
    ],
)
def test_bad_recipe_one_line_error(recipe, capsys, override, needles):
    code = run(["train", str(recipe), "--override", override])
    assert_one_line_error(code, capsys.readouterr().err, *needles)


def test_bad_recipe_file(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("model: {checkpoint: m.safetensors}\nrun: {output: x}\n")
    assert_one_line_error(run(["train", str(tmp_path / "r.yaml")]), capsys.readouterr().err, "data.train", "required")
    assert_one_line_error(run(["export", str(tmp_path), "--output", str(tmp_path / "o")]), capsys.readouterr().err,
                          "config.json")


@pytest.mark.parametrize("name", ["human1_stage1.yaml", "human1_stage2.yaml", "lora.yaml", "tiny_cpu.yaml"])
def test_example_recipes_are_valid(name):
    cfg = load_config(ROOT / "examples" / "train" / name, check_paths=False)
    assert cfg.optim.max_steps > 0 and cfg.loss.semantic_weight in (100.0, 1.0)
