"""A tiny training setup: a random tiny LM checkpoint, shards of learnable random codes, a recipe."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

import fullduplex as fd
from fullduplex.data.shards import write_shard
from fullduplex.lm import lm_preset

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train" / "tiny_cpu.yaml"


def _item(g: torch.Generator, frames: int) -> dict:
    codes = torch.randint(0, 32, (17, frames), generator=g)
    codes[1:9] = torch.roll(codes[9:17], 1, dims=1)  # the model's audio echoes the other speaker's a frame late
    words = torch.randint(4, 96, (frames,), generator=g)
    codes[0] = torch.where(torch.rand(frames, generator=g) < 0.6, 3, words)  # mostly PAD, like real text streams
    codes[0, 5] = 0  # an EPAD
    return {"codes": codes, "info": {"source": "random", "side": "left", "frames": frames}}


def make_setup(root: Path) -> Path:
    """Write model/, train/, valid/ and recipe.yaml (examples/train/tiny_cpu.yaml on these files) under ``root``."""
    torch.manual_seed(0)
    (root / "model").mkdir(parents=True)
    fd.save_lm(fd.LMModel(lm_preset("tiny")), root / "model" / "model.safetensors")
    (root / "tok.model").write_bytes(b"not a real tokenizer: export only copies it")
    g = torch.Generator().manual_seed(0)
    for split, shards in (("train", 2), ("valid", 1)):
        (root / split).mkdir()
        for s in range(shards):
            write_shard(root / split / f"{split}-{s}.safetensors", [_item(g, 60), _item(g, 45)], {"split": split})
    recipe = yaml.safe_load(EXAMPLE.read_text())
    recipe["model"].update(checkpoint="model/model.safetensors", tokenizer="tok.model")
    recipe["data"].update(train=["train"], valid=["valid"])
    recipe["run"]["output"] = str(root / "run")
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root / "recipe.yaml"
