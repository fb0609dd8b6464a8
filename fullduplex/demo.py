"""The demo model shipped inside the package: a small Moshi-architecture LM, codec and tokenizer.

It was trained by ``scripts/make_demo_model.sh`` on CPU in under an hour, on synthetic English dialogues spoken by
espeak-ng (``fullduplex data synth``), so that the whole system runs end to end with no download. It is a
demonstration of the machinery, not a conversational model: its words come from a few dialogue templates and its
voice is a small codec's rendering of a synthesiser. ``fullduplex generate`` and ``fullduplex serve`` use it when
no model is named; ``--hf-repo kyutai/moshiko-pytorch-bf16`` (or ``--moshi-weight``/``--mimi-weight``) loads a
released one.

>>> import fullduplex as fd
>>> mimi, lm, tokenizer = fd.load_demo()

Files (``fullduplex/assets/demo/``): ``model.safetensors`` (LM, released key format, float16), ``mimi.safetensors``
(codec, released key format, float16), ``tokenizer.model`` (SentencePiece), ``config.json`` (the LM's moshi-style
config with ``moshi_name``, ``mimi_name``, ``tokenizer_name``, the codec's ``mimi_config`` dict and ``demo``: how it
was made and what it measured).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
CONFIG_NAME = "config.json"
RELEASED_HINT = "--hf-repo kyutai/moshiko-pytorch-bf16"
NOTICE = (
    "note: no model named, so this is the small demo model bundled with fullduplex (a few million parameters "
    "trained on CPU on synthetic espeak-ng dialogues, not a real conversational model); to load a released model "
    f"pass {RELEASED_HINT} (or --moshi-weight/--mimi-weight FILE)"
)


def demo_config(folder: Path = DEMO_DIR) -> dict[str, Any]:
    """The demo folder's ``config.json``; :class:`CheckpointError` when the folder is incomplete."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"the demo model is missing or damaged ({path}: {e}); reinstall fullduplex, or "
                              f"load a released model with {RELEASED_HINT}") from None
    for key in ("moshi_name", "mimi_name", "tokenizer_name", "mimi_config"):
        if key not in config:
            raise CheckpointError(f"{path} has no {key!r}; the demo folder is damaged")
    return config


def demo_files(folder: Path = DEMO_DIR) -> dict[str, Path]:
    """Paths of the demo LM (``lm``), codec (``mimi``), tokenizer (``tokenizer``) and ``config``."""
    config = demo_config(folder)
    files = {"lm": folder / config["moshi_name"], "mimi": folder / config["mimi_name"],
             "tokenizer": folder / config["tokenizer_name"], "config": folder / CONFIG_NAME}
    for path in files.values():
        if not path.is_file():
            raise CheckpointError(f"the demo model file {path} is missing; reinstall fullduplex, or load a released "
                                  f"model with {RELEASED_HINT}")
    return files


def demo_mimi_config(folder: Path = DEMO_DIR):
    from .codec.config import MimiConfig

    return MimiConfig.from_moshi_dict(demo_config(folder)["mimi_config"])


def load_demo(
    device: str | torch.device = "cpu", dtype: torch.dtype | None = None, folder: Path = DEMO_DIR,
    quantize: str | None = None,
):
    """(Mimi, LM, tokenizer) of the bundled demo model, in eval mode. ``dtype``: the LM's (default float32 on CPU,
    bfloat16 on CUDA); Mimi stays float32. ``quantize``: "int8" / "int4" as :func:`fullduplex.quantize`."""
    from .checkpoint.lm import load_lm, read_lm_config
    from .checkpoint.mimi import load_mimi
    from .text.tokenizer import TextTokenizer

    files = demo_files(folder)
    mimi = load_mimi(files["mimi"], device=device, num_codebooks=None, config=demo_mimi_config(folder)).eval()
    lm = load_lm(
        files["lm"], config=read_lm_config(files["config"]), device=device, dtype=dtype, quantize=quantize,
    ).eval()
    return mimi, lm, TextTokenizer.load(files["tokenizer"])
