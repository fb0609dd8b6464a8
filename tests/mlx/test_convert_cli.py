"""``fullduplex convert``: released PyTorch ⇄ MLX bf16 / q8 / q4, with config.json, tokenizer and Mimi beside."""

from __future__ import annotations

import json

import pytest
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.lm import LMConfig
from tests.helpers import assert_one_line_error

CONFIG = LMConfig(
    dim=256, num_heads=4, num_layers=1, context=24, text_card=96, card=32, depformer_dim=64,
    depformer_num_heads=2, depformer_num_layers=1, depformer_dim_feedforward=192,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A released-format folder: model.safetensors, config.json, tokenizer and Mimi files (contents opaque)."""
    root = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    lm = fd.LMModel(CONFIG).eval()
    fd.save_lm(lm, root / "model.safetensors")
    (root / "config.json").write_text(json.dumps({**CONFIG.to_moshi_dict(), "tokenizer_name": "tok.model", "mimi_name": "mimi.safetensors"}))
    (root / "tok.model").write_bytes(b"tokenizer bytes")
    (root / "mimi.safetensors").write_bytes(b"mimi bytes")
    return root, lm


@pytest.mark.parametrize("fmt", ["mlx-q8", "mlx-q4", "mlx-bf16"])
def test_released_to_mlx_and_back(source, fmt, tmp_path, capsys):
    root, lm = source
    out = tmp_path / fmt
    assert main(["convert", "--moshi-weight", str(root), "--format", fmt, "--output", str(out), "-q"]) == 0
    name = {"mlx-q8": "model.q8.safetensors", "mlx-q4": "model.q4.safetensors", "mlx-bf16": "model.safetensors"}[fmt]
    assert f"wrote {out / name}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["moshi_name"] == name and config["dim"] == 256
    assert (out / "tok.model").read_bytes() == b"tokenizer bytes" and (out / "mimi.safetensors").read_bytes() == b"mimi bytes"
    back = tmp_path / "back"
    assert main(["convert", "--moshi-weight", str(out), "--format", "moshi", "--output", str(back), "-q", "--dtype", "float32"]) == 0
    reloaded = fd.load_lm(back)  # config.json of the folder
    tol = {"mlx-q8": 0.02, "mlx-q4": 0.3, "mlx-bf16": 0.01}[fmt]
    for key, value in lm.state_dict().items():
        got = reloaded.state_dict()[key]
        assert got.dtype == torch.float32
        assert ((got - value).abs() <= tol * value.abs().amax() + 1e-6).all(), key


def test_errors_are_one_line(source, tmp_path, capsys):
    root, _ = source
    code = main(["convert", "--format", "mlx-q8", "--output", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "--moshi-weight")
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (root / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 3])
    code = main(["convert", "--moshi-weight", str(bad / "model.safetensors"), "--config", str(root / "config.json"),
                 "--format", "mlx-q4", "--output", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "model.safetensors")
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("x")
    code = main(["convert", "--moshi-weight", str(root), "--format", "mlx-q4", "--output", str(tmp_path / "file")])
    assert_one_line_error(code, capsys.readouterr().err, "is a file")
    code = main(["convert", "--moshi-weight", str(root), "--config", "tiny", "--format", "mlx-q4", "--output", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "does not match")


def test_never_replaces_the_input_or_a_foreign_folder(source, tmp_path, capsys):
    root, _ = source
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    out = tmp_path / "q8"
    assert main(["convert", "--moshi-weight", str(root), "--format", "mlx-q8", "--output", str(out), "-q"]) == 0
    # The input folder, even when it looks like one of ours: refused before any work, with or without --overwrite.
    for source_folder in (root, out):
        code = main(["convert", "--moshi-weight", str(source_folder), "--format", "mlx-q4", "--output",
                     str(source_folder), "--overwrite", "-q"])
        assert_one_line_error(code, capsys.readouterr().err, str(source_folder), "nothing was")
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    code = main(["convert", "--moshi-weight", str(root), "--format", "mlx-q4", "--output", str(out), "-q"])
    assert_one_line_error(code, capsys.readouterr().err, "previous `fullduplex convert` output", "--overwrite")
    assert main(["convert", "--moshi-weight", str(root), "--format", "mlx-q4", "--output", str(out), "-q",
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "mimi.safetensors", "model.q4.safetensors", "tok.model"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_architecture_moshi_mlx_cannot_build_is_refused(tmp_path):
    lm = fd.LMModel(LMConfig(**{**CONFIG.to_dict(), "depformer_dim_feedforward": 256}))  # 4 x 64: MLX uses 11/4
    with pytest.raises(ValueError, match="moshi_mlx would build feed-forward widths"):
        fd.save_mlx(lm, tmp_path, "mlx-q8")


def test_convert_shows_its_stages_unless_quiet(source, tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:  # tqdm draws only on a terminal
            return True

    root, _ = source
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["convert", "--moshi-weight", str(root), "--format", "moshi", "--output", str(tmp_path / "a")]) == 0
    shown = sys.stderr.getvalue()
    assert "convert: " in shown and "/2 stages" in shown and "loading model.safetensors" in shown
    assert f"writing {tmp_path / 'a'} (moshi)" in shown
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["convert", "--moshi-weight", str(root), "--format", "moshi", "--output", str(tmp_path / "b"), "-q"]) == 0
    assert sys.stderr.getvalue() == ""
