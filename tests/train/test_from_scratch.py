"""`model.from_scratch`: an LM of a preset with random weights, its text vocabulary from the tokenizer, trained and
exported like a fine-tuned one (how the demo model is made)."""

from __future__ import annotations

import torch

import fullduplex as fd
from fullduplex.cli.main import run
from fullduplex.text import train_tokenizer
from fullduplex.train.config import load_config
from fullduplex.train.export import export_run
from fullduplex.train.recipe import train
from tests.helpers import assert_one_line_error
from tests.train.helpers import make_setup

WORDS = ["hello there", "how are you", "fine thanks", "good morning", "see you later", "what is that"] * 8


def test_from_scratch_trains_and_exports(tmp_path):
    recipe = make_setup(tmp_path)
    tok = train_tokenizer(WORDS, tmp_path / "tok", 96, model_type="bpe").path
    overrides = ["model.checkpoint=null", "model.from_scratch=true", "model.config=tiny", f"model.tokenizer={tok}",
                 "optim.max_steps=6", "run.eval_every=3", "run.save_every=3", f"run.output={tmp_path / 'run'}"]
    cfg = load_config(recipe, overrides)
    result = train(cfg, progress=False)
    assert result.losses[6] < result.losses[1]
    folder, step = export_run(tmp_path / "run", tmp_path / "export", "last")
    assert step == 6
    lm = fd.load_lm(folder)
    assert lm.config.text_card == 96 and (folder / tok.name).is_file()
    # The same seed gives the same initial weights: training is reproducible from the recipe alone.
    again = train(load_config(recipe, [*overrides[:-1], f"run.output={tmp_path / 'run2'}", "optim.max_steps=2"]),
                  progress=False)
    assert again.losses[1] == result.losses[1]
    assert not torch.equal(lm.text_emb.weight, torch.zeros_like(lm.text_emb.weight))


def test_from_scratch_needs_a_config(tmp_path, capsys):
    recipe = make_setup(tmp_path)
    code = run(["train", str(recipe), "-o", "model.from_scratch=true"])
    assert_one_line_error(code, capsys.readouterr().err, "model.from_scratch", "model.config")
