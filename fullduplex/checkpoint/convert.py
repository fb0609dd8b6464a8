"""Write a Moshi LM in any checkpoint format, with its tokenizer and Mimi beside it.

=============  ==========================  =====================================================================
format         LM file                     loads in
=============  ==========================  =====================================================================
``moshi``      ``model.safetensors``       moshi (PyTorch) ``--moshi-weight``, fullduplex; bf16 or fp32
``mlx-bf16``   ``model.safetensors``       moshi_mlx (no ``-q``), fullduplex
``mlx-q8``     ``model.q8.safetensors``    moshi_mlx ``-q 8`` (8 bits, groups of 64), fullduplex
``mlx-q4``     ``model.q4.safetensors``    moshi_mlx ``-q 4`` (4 bits, groups of 32), fullduplex
=============  ==========================  =====================================================================

Every folder also gets a moshi-style ``config.json`` (the architecture, ``moshi_name``, and ``tokenizer_name`` /
``mimi_name`` for the copies), so ``--hf-repo``-style folder loading finds everything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..atomic import OutputKind, atomic_output
from ..lm.model import LMModel
from .lm import MOSHI_NAME, save_lm
from .mlx import MLX_FORMATS, MLX_NAMES, save_mlx

FORMATS = ("moshi", *MLX_FORMATS)


def checkpoint_folder_files(folder: Path) -> set[str] | None:
    """The files of a checkpoint folder written by :func:`save_checkpoint` (or ``adapt``), as its ``config.json``
    names them; None when ``folder`` is not such a folder."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("moshi_name"), str):
        return None
    names = (config.get(key) for key in ("moshi_name", "tokenizer_name", "mimi_name", "lora_name"))
    return {"config.json", *(name for name in names if isinstance(name, str))}


def checkpoint_folder(command: str) -> OutputKind:
    """The output folder of ``command`` when it writes a checkpoint folder (export, convert, adapt)."""
    return OutputKind(command, checkpoint_folder_files)


def model_file_name(fmt: str) -> str:
    return MOSHI_NAME if fmt == "moshi" else MLX_NAMES[fmt]


def write_companions(
    folder: Path, lm: LMModel, moshi_name: str, tokenizer: str | Path | None, mimi: str | Path | None
) -> None:
    """Copy the tokenizer and Mimi files into ``folder`` and write its ``config.json`` (each atomically)."""
    config = lm.config.to_moshi_dict()
    config["moshi_name"] = moshi_name
    if lm.config.model_type != "moshi" or not lm.config.user_audio:  # Hibiki's EOS, TTS's streams (as released)
        config["model_type"] = lm.config.model_type if lm.config.user_audio else "tts"
    for key, source in (("tokenizer_name", tokenizer), ("mimi_name", mimi)):
        if source is None:
            continue
        source = Path(source)
        target = folder / source.name
        if source.resolve() != target.resolve():
            with atomic_output(target) as tmp:
                shutil.copyfile(source, tmp)
        config[key] = source.name
    with atomic_output(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(
    lm: LMModel,
    folder: str | Path,
    fmt: str = "moshi",
    tokenizer: str | Path | None = None,
    mimi: str | Path | None = None,
    dtype: torch.dtype | None = torch.bfloat16,
    progress: bool = False,
) -> Path:
    """Write ``lm`` (float or quantized) to ``folder`` in ``fmt`` (see :data:`FORMATS`), plus ``config.json``
    and copies of ``tokenizer`` / ``mimi`` when given. ``dtype``: the float type of the ``moshi`` format (None:
    the model's own; MLX files are bf16). Returns the LM file's path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fmt != "moshi":
        return save_mlx(lm, folder, fmt, tokenizer, mimi, progress=progress)
    path = save_lm(lm, folder / MOSHI_NAME, dtype=dtype)
    write_companions(folder, lm, path.name, tokenizer, mimi)
    return path
