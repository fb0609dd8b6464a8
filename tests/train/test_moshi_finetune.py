"""moshi-finetune's recipe as it is: ``fullduplex train moshi_7B.yaml`` on tiny local files (a random tiny LM and
Mimi in the released layout, a tokenizer, a few seconds of stereo speech with word alignments) trains on CPU, and
the native recipe it writes gives the same losses step by step; OneCycle as torch's; keys and errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.data.formats import LEFT_SPEAKER, RIGHT_SPEAKER
from fullduplex.lm import lm_preset
from fullduplex.text import train_tokenizer
from tests.data.samples import alignments, manifest, stereo
from tests.helpers import assert_one_line_error, randomize_

WORDS = ["hello there how are you", "i am fine thank you", "what a lovely morning it is", "see you later"] * 8

# kyutai-labs/moshi-finetune example/moshi_7B.yaml, key for key; the test fills in the paths ("Fill" there).
EXAMPLE = """\
# data
data:
  eval_data: '' # Optional Fill
  shuffle: true
  train_data: '' # Fill

# model
moshi_paths:
  hf_repo_id: "kyutai/moshiko-pytorch-bf16"

full_finetuning: false # Activate lora.enable if partial finetuning
lora:
  enable: true # Set to False if full_finetuning is True
  rank: 128
  scaling: 2.
  ft_embed: false # Optional, set to True if you want to finetune the embedding layer

first_codebook_weight_multiplier: 100.
text_padding_weight: .5

# optim
duration_sec: 100
batch_size: 16
max_steps: 2000
gradient_checkpointing: true
optim:
  lr: 2e-6
  weight_decay: 0.1
  pct_start: 0.05

# other
seed: 0
log_freq: 1
eval_freq: 100
do_eval: false
do_ckpt: true
ckpt_freq: 100

save_adapters: true # Must be False if full_finetuning is True

run_dir: "" # Fill

# wandb
wandb:
  project: "" # Optional Fill
  offline: false
  key: "" # Optional Fill
  run_name: "" # Optional Fill
"""
# A few steps on CPU: short windows, small batches (their keys, given as --override as a user would).
SMALL = ["max_steps=4", "batch_size=2", "num_microbatches=2", "duration_sec=3", "optim.lr=1e-3", "optim.pct_start=0.3",
         "seed=1"]  # seed 1: step 1's micro-batches hold different numbers of valid targets


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is several times faster than several competing on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mft")
    torch.manual_seed(0)
    lm_config, mimi_config = lm_preset("tiny"), mimi_preset("tiny")
    model = root / "model"
    model.mkdir()
    fd.save_lm(fd.LMModel(lm_config), model / "model.safetensors")
    fd.save_mimi(randomize_(fd.Mimi(mimi_config).eval()), model / "mimi.safetensors")
    tok = train_tokenizer(WORDS, model / "tok", lm_config.text_card, model_type="bpe").path
    (model / "mimi_config.json").write_text(json.dumps(mimi_config.to_moshi_dict()))
    config = {**lm_config.to_moshi_dict(), "mimi_config_name": f"file://{model / 'mimi_config.json'}"}
    (model / "config.json").write_text(json.dumps(config))
    data = root / "data"
    stereo(data / "a.wav", 4.0, 0.2, 1.5)
    alignments(data / "a.json", [("hello", 0.25, 0.6, LEFT_SPEAKER), ("there", 0.6, 1.0, LEFT_SPEAKER),
                                 ("fine", 1.6, 2.0, RIGHT_SPEAKER), ("see", 2.4, 2.6, LEFT_SPEAKER)])
    stereo(data / "b.wav", 2.0, 1.0, 0.0)  # shorter than a window: its windows end in padding
    alignments(data / "b.json", [("what", 1.05, 1.3, LEFT_SPEAKER), ("a", 1.3, 1.4, LEFT_SPEAKER),
                                 ("lovely", 1.4, 1.9, LEFT_SPEAKER)])
    manifest(data / "train.jsonl", [{"path": "a.wav", "duration": 4.0}, {"path": "b.wav", "duration": 2.0}])
    manifest(data / "eval.jsonl", [{"path": "b.wav", "duration": 2.0}])
    return {"root": root, "model": model / "model.safetensors", "mimi": model / "mimi.safetensors",
            "tokenizer": tok, "config": model / "config.json", "train": data / "train.jsonl",
            "eval": data / "eval.jsonl"}


def recipe(files, tmp_path: Path, **changes) -> Path:
    """The example with its paths on the tiny files (and ``changes`` of top-level keys / sections)."""
    raw = yaml.safe_load(EXAMPLE)
    raw["data"]["train_data"] = str(files["train"])
    raw["moshi_paths"].update(moshi_path=str(files["model"]), mimi_path=str(files["mimi"]),
                              tokenizer_path=str(files["tokenizer"]), config_path=str(files["config"]))
    raw["run_dir"] = str(tmp_path / "run")
    for key, value in changes.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path = tmp_path / "moshi_7B.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def losses(run: Path) -> list[tuple[int, float, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr_temporal"]) for r in records if r["split"] == "train"]


def test_example_recipe_trains_and_native_recipe_matches(files, tmp_path, capsys):
    path = recipe(files, tmp_path)
    assert main(["train", str(path), "--no-progress", *[f"--override={o}" for o in SMALL]]) == 0
    out = capsys.readouterr()
    run = tmp_path / "run"
    written = (run / "recipe.yaml").read_text()
    assert "the equivalent native recipe" in out.out and yaml.safe_load(written) == yaml.safe_load(
        out.out.split("recipe.yaml):\n", 1)[1].split("trained to step", 1)[0])
    assert "save_adapters" in out.err  # a key without an exact equivalent, named with what to do
    native = yaml.safe_load(written)
    assert native["lora"] == {"enabled": True, "rank": 128, "scaling": 2.0, "target_modules": ["*"],
                              "train_embeddings": False}
    assert native["optim"]["schedule"] == "onecycle" and native["optim"]["pct_start"] == 0.3
    assert native["loss"]["semantic_weight"] == 100 and native["loss"]["pad_weight"] == native["loss"]["epad_weight"] == 0.5
    assert native["wandb"] == {"project": None, "run_name": None, "offline": False}  # their empty strings: unset
    assert native["run"]["grad_accumulation"] == 2 and native["data"]["segment_seconds"] == 3
    cache = tmp_path / "run.prepared"
    (prepared,) = native["data"]["train"]
    assert Path(prepared).parent == cache and (Path(prepared) / "report.json").is_file()
    first = losses(run)
    assert [s for s, _, _ in first] == [1, 2, 3, 4]

    # OneCycle exactly as torch's, with moshi-finetune's arguments (peak lr, total_steps, pct_start).
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=4, pct_start=0.3)
    expected = []
    for _ in range(4):
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert [lr for _, _, lr in first] == pytest.approx(expected, rel=1e-12)

    # Step 1's loss is moshi-finetune's formula, computed here from the prepared windows (LoRA's B starts at zero, so
    # the model of step 1 is the base): per micro-batch, text and audio CE each averaged with their weights (PAD and
    # EPAD 0.5, codebook 0 x100) over the valid positions and summed; then the mean over the micro-batches.
    assert first[0][1] == pytest.approx(their_first_loss(files, native), rel=2e-6)

    # The written native recipe, run into another folder: the same losses, step by step.
    assert main(["train", str(run / "recipe.yaml"), "--no-progress", f"--override=run.output={tmp_path / 'native'}"]) == 0
    assert losses(tmp_path / "native") == first

    # Again with the same run_dir: refused (their run folder must be new) unless overwrite_run_dir; data cached.
    capsys.readouterr()
    code = main(["train", str(path), "--no-progress", *[f"--override={o}" for o in SMALL]])
    assert_one_line_error(code, capsys.readouterr().err, "already exists", "overwrite_run_dir")
    assert main(["train", str(path), "--no-progress", *[f"--override={o}" for o in SMALL],
                 "--override=overwrite_run_dir=true"]) == 0
    assert "(cached;" in capsys.readouterr().out
    assert losses(run) == first


def their_first_loss(files, native) -> float:
    import torch.nn.functional as F

    from fullduplex.data.shards import ShardDataset
    from fullduplex.train.data import TrainWindows

    model = fd.load_lm(files["model"], config=lm_preset("tiny"))
    config = model.config
    windows = TrainWindows(ShardDataset(native["data"]["train"]), 38, native["run"]["seed"])
    losses = []
    with torch.no_grad():
        for micro in range(2):
            codes = windows.batch(1, micro, 0, 1, 2)
            out = model(codes)
            text = codes[:, 0]
            w_text = torch.where((text == config.text_pad_id) | (text == config.text_epad_id), 0.5, 1.0)
            w_text = w_text * out.text_mask[:, 0]
            ce_text = F.cross_entropy(out.text_logits[:, 0].nan_to_num().transpose(1, 2), text.clamp(min=0),
                                      reduction="none")
            audio = codes[:, 1 : 1 + config.dep_q]
            w_audio = torch.ones(audio.shape) * out.audio_mask
            w_audio[:, 0] *= 100
            ce_audio = F.cross_entropy(out.audio_logits.nan_to_num().permute(0, 3, 1, 2), audio.clamp(min=0),
                                       reduction="none")
            losses.append(float((w_text * ce_text).sum() / w_text.sum() + (w_audio * ce_audio).sum() / w_audio.sum()))
    return sum(losses) / len(losses)


def test_full_finetuning_eval_and_wandb(files, tmp_path, capsys, monkeypatch):
    """full_finetuning + ft_embed-free full run with eval data; wandb logged through the wandb module when it is
    importable, one line when it is not."""
    logged: list[dict] = []

    class FakeRun:
        def log(self, values, step):
            logged.append({"step": step, **values})

        def finish(self):
            logged.append({"finished": True})

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: logged.append({"init": kw}) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    path = recipe(files, tmp_path, full_finetuning=True, lora={"enable": False}, do_eval=True, eval_freq=2,
                  data={"eval_data": str(files["eval"])}, wandb={"project": "ft", "run_name": "tiny", "key": ""})
    assert main(["train", str(path), "--no-progress", *[f"--override={o}" for o in SMALL]]) == 0
    capsys.readouterr()
    assert logged[0]["init"]["project"] == "ft" and logged[0]["init"]["name"] == "tiny"
    assert [r["step"] for r in logged if "valid/loss" in r] == [2, 4] and logged[-1] == {"finished": True}
    native = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert not native["lora"]["enabled"] and native["run"]["eval_every"] == 2 and native["data"]["valid"]

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    assert main(["train", str(path), "--no-progress", *[f"--override={o}" for o in SMALL], "--override=max_steps=1",
                 "--override=overwrite_run_dir=true"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "wandb" in line and "not installed" in line]
    assert len(lines) == 1 and "pip install wandb" in lines[0]


@pytest.mark.parametrize(("changes", "needles"), [
    ({"lora": {"enable": True, "rank": 8, "dropout": 0.1}}, ("unknown moshi-finetune key 'lora.dropout'",)),
    ({"full_finetuning": True}, ("exactly one of full_finetuning", "lora.enable")),
    ({"data": {"train_data": "nowhere.jsonl"}}, ("data.train_data", "nowhere.jsonl", "does not exist")),
    ({"max_steps": "many"}, ("max_steps must be an integer",)),
    ({"max_steps": 0}, ("moshi-finetune recipe, translated", "max_steps must be > 0")),
    ({"run_dir": ""}, ("run_dir is required",)),
])
def test_bad_recipes_one_line(files, tmp_path, capsys, changes, needles):
    code = main(["train", str(recipe(files, tmp_path, **changes)), "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "run").exists()


def test_ft_embed_trains_embeddings_and_exports(files, tmp_path, capsys):
    """lora.ft_embed: the embeddings train beside the adapters, are checkpointed with them, and export folds both."""
    from safetensors.torch import load_file

    path = recipe(files, tmp_path, lora={"ft_embed": True})
    assert main(["train", str(path), "--no-progress", *[f"--override={o}" for o in SMALL], "--override=max_steps=1"]) == 0
    (step,) = sorted((tmp_path / "run" / "checkpoints").iterdir())
    saved = load_file(str(step / "trainable.safetensors"))
    base = fd.load_lm(files["model"], config=lm_preset("tiny")).state_dict()
    embeddings = [k for k in saved if "emb" in k]
    assert embeddings and all(k.endswith((".lora_A", ".lora_B")) or "emb" in k for k in saved)
    assert any(not torch.equal(saved[k], base[k]) for k in embeddings)  # they were trained
    assert main(["export", str(tmp_path / "run"), "--output", str(tmp_path / "out"), "--checkpoint", "last"]) == 0
    exported = fd.load_lm(tmp_path / "out", config=lm_preset("tiny")).state_dict()
    assert all(torch.equal(exported[k], saved[k]) for k in embeddings)
    capsys.readouterr()
