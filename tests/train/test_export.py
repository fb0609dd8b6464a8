"""`fullduplex export`: trained runs and moshi-finetune adapters → folders that load in ours and in the reference
with identical logits."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import fullduplex as fd
from fullduplex.cli.main import run
from fullduplex.train.config import load_config
from fullduplex.train.recipe import train
from tests.helpers import assert_one_line_error
from tests.train.helpers import make_setup

loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")
NOT_LM = ("moshi_name", "tokenizer_name", "lora_name", "lora", "lora_rank", "lora_scaling")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    recipe = make_setup(root)
    train(load_config(recipe, ["optim.max_steps=3", "lora.enabled=true", "lora.rank=4", "run.eval_every=0",
                               f"run.output={root / 'run'}"]), progress=False)
    return root


def codes() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    c = torch.randint(0, 32, (2, 17, 20), generator=g)
    c[:, 0] = torch.randint(0, 96, (2, 20), generator=g)
    return c


def reference(folder: Path, **kwargs) -> torch.nn.Module:
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k not in NOT_LM}
    if "lora_weights" in kwargs:
        config.update(lora=True, lora_rank=4, lora_scaling=2.0)
    return loaders.get_moshi_lm(str(folder / "model.safetensors"), lm_kwargs=config, device="cpu", dtype=torch.float32,
                                **kwargs)


def assert_same(a, b) -> None:
    assert (a.text_logits - b.text_logits).nan_to_num().abs().max() < 1e-4
    audio_b = b.audio_logits if hasattr(b, "audio_logits") else b.logits
    assert (a.audio_logits - audio_b).nan_to_num().abs().max() < 1e-4


def test_export_merged_and_kept_lora_load_everywhere(lora_run, tmp_path):
    assert run(["export", str(lora_run / "run"), "--output", str(tmp_path / "merged")]) == 0
    assert run(["export", str(lora_run / "run"), "--output", str(tmp_path / "kept"), "--keep-lora"]) == 0
    assert (tmp_path / "merged" / "tok.model").is_file()
    ours = fd.load_lm(tmp_path / "merged")  # config.json read from the folder
    base = fd.load_lm(lora_run / "model" / "model.safetensors", config="tiny")
    with torch.no_grad():
        out, ref = ours(codes()), reference(tmp_path / "merged")(codes())
        kept = reference(tmp_path / "kept", lora_weights=str(tmp_path / "kept" / "lora.safetensors"), fuse_lora=True)(codes())
        before = base(codes())
        kept_ours = fd.load_lm(tmp_path / "kept")(codes())  # config.json says lora: true -> adapters folded in
    assert_same(out, ref)
    assert_same(out, kept)
    assert_same(out, kept_ours)
    assert (out.audio_logits - before.audio_logits).nan_to_num().abs().max() > 1e-3  # LoRA changed the model


def test_export_moshi_finetune_adapters(lora_run, tmp_path):
    """Adapters in moshi-finetune's names, depth attention slices included, folded as moshi folds them."""
    folder = tmp_path / "ft"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((lora_run / "model" / "model.safetensors").read_bytes())
    config = fd.LMConfig.to_moshi_dict(fd.load_lm(folder / "model.safetensors", config="tiny").config)
    (folder / "config.json").write_text(json.dumps(config))
    ref_model = reference(folder, lora_weights=None)  # lora wrappers with random A and B
    g = torch.Generator().manual_seed(0)
    adapters = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in ref_model.state_dict().items() if "lora_" in k}
    save_file(adapters, str(tmp_path / "lora.safetensors"))
    assert run(["export", "--lora-weight", str(tmp_path / "lora.safetensors"), "--moshi-weight", str(folder),
                "--lora-scaling", "2.0", "--output", str(tmp_path / "out")]) == 0
    with torch.no_grad():
        ours = fd.load_lm(tmp_path / "out")(codes())
        ref = reference(folder, lora_weights=str(tmp_path / "lora.safetensors"), fuse_lora=True)(codes())
    assert_same(ours, ref)


def test_export_errors(lora_run, tmp_path, capsys):
    code = run(["export", str(lora_run / "run"), "--output", str(tmp_path / "o"), "--checkpoint", "7"])
    assert_one_line_error(code, capsys.readouterr().err, "--checkpoint '7'", "[3]")
    bad = tmp_path / "bad.safetensors"
    save_file({"text_linear.lora_A.weight": torch.zeros(4, 64)}, str(bad))
    code = run(["export", "--lora-weight", str(bad), "--moshi-weight", str(lora_run / "model" / "model.safetensors"),
                "--config", "tiny", "--output", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "text_linear", "lora_B")
    assert not (tmp_path / "o").exists()


def test_export_to_mlx_loads_back(lora_run, tmp_path, capsys):
    """`export --format mlx-bf16`: the run's merged weights as moshi_mlx's file, with tokenizer and Mimi beside;
    loaded back, every weight is the PyTorch export's in bf16. (q8 / q4 go through the same writer, tested on a
    group-sized model in tests/mlx; this tiny model's 176-wide feed-forward is refused with a clear error.)"""
    mimi = tmp_path / "mimi.safetensors"
    save_file({"x": torch.zeros(1)}, str(mimi))
    assert run(["export", str(lora_run / "run"), "--output", str(tmp_path / "pt")]) == 0
    assert run(["export", str(lora_run / "run"), "--output", str(tmp_path / "mlx"), "--format", "mlx-bf16",
                "--mimi-weight", str(mimi)]) == 0
    folder = tmp_path / "mlx"
    config = json.loads((folder / "config.json").read_text())
    assert config["moshi_name"] == "model.safetensors" and config["mimi_name"] == "mimi.safetensors"
    assert (folder / "tok.model").is_file() and (folder / "mimi.safetensors").is_file()
    assert not list(tmp_path.glob(".*.tmp"))
    merged = fd.load_lm(tmp_path / "pt").state_dict()
    back = fd.load_lm(folder, dtype=torch.float32).state_dict()
    for key, value in merged.items():
        assert torch.equal(back[key], value.to(torch.bfloat16).float()), key
    code = run(["export", str(lora_run / "run"), "--output", str(tmp_path / "o"), "--format", "mlx-q8"])
    assert_one_line_error(code, capsys.readouterr().err, "group size 64")
    code = run(["export", str(lora_run / "run"), "--output", str(tmp_path / "o"), "--format", "mlx-bf16", "--keep-lora"])
    assert_one_line_error(code, capsys.readouterr().err, "--keep-lora", "mlx-bf16")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".*.tmp"))


def test_export_never_deletes_what_it_did_not_write(lora_run, tmp_path, capsys):
    """Issue 16.1: a folder holding a user's file is refused and kept; the run's own folder is refused even with
    --overwrite; a previous export is replaced only with --overwrite."""
    run_dir = lora_run / "run"
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code = run(["export", str(run_dir), "--output", str(mine), *extra])
        assert_one_line_error(code, capsys.readouterr().err, "notes.txt", "not a previous `fullduplex export` output",
                              "nothing was deleted")
        assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
        for target in (run_dir, lora_run):  # the run itself, or a folder above it
            code = run(["export", str(run_dir), "--output", str(target), *extra])
            assert_one_line_error(code, capsys.readouterr().err, "an input of this command", "choose another folder")
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before  # the run is whole

    out = tmp_path / "out"
    assert run(["export", str(run_dir), "--output", str(out)]) == 0
    first = sorted(p.name for p in out.iterdir())
    code = run(["export", str(run_dir), "--output", str(out), "--checkpoint", "last"])
    assert_one_line_error(code, capsys.readouterr().err, "previous `fullduplex export` output", "--overwrite")
    assert run(["export", str(run_dir), "--output", str(out), "--keep-lora", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*first, "lora.safetensors"])
    (out / "README.md").write_text("my notes on this model")  # now it holds a file export did not write
    code = run(["export", str(run_dir), "--output", str(out), "--overwrite"])
    assert_one_line_error(code, capsys.readouterr().err, "README.md", "nothing was deleted")
    assert (out / "README.md").is_file() and (out / "lora.safetensors").is_file()
    assert not list(tmp_path.glob(".*")) and not list(lora_run.glob(".*"))  # no staging folder left behind


class Terminal(io.StringIO):
    def isatty(self) -> bool:  # tqdm draws only on a terminal
        return True


def test_export_shows_its_stages_unless_quiet(lora_run, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert run(["export", str(lora_run / "run"), "--output", str(tmp_path / "a")]) == 0
    shown = sys.stderr.getvalue()
    assert "export: " in shown and "/3 stages" in shown
    for stage in ("loading the base model", "applying step 3 and folding LoRA in", f"writing {tmp_path / 'a'}"):
        assert stage in shown, shown
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert run(["--quiet", "export", str(lora_run / "run"), "--output", str(tmp_path / "b")]) == 0
    assert sys.stderr.getvalue() == ""
