"""Load and save Mimi checkpoints in the released format (``tokenizer-e351c8d8-checkpoint125.safetensors``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..codec.config import MimiConfig
from ..codec.mimi import Mimi
from ..errors import CheckpointError
from ..nn.conv import StreamingConvTranspose1d
from .mimi_keys import LM_MARKERS, from_released, to_released
from .resolve import DEFAULT_REPO, MIMI_NAME, resolve_file
from .state import assign_weights, check_state_dict, read_state_dict, write_safetensors


def resolve_mimi(path_or_hf: str | Path | None = None, hf_repo: str | None = None) -> Path:
    """The local Mimi file for a path, folder, ``hf://`` reference, or a repo name (``--hf-repo``)."""
    if path_or_hf is not None:
        return resolve_file(path_or_hf, MIMI_NAME, config_key="mimi_name")
    return resolve_file(f"hf://{hf_repo or DEFAULT_REPO}", MIMI_NAME, config_key="mimi_name")


def load_mimi(
    path_or_hf: str | Path | None = None,
    device: str | torch.device = "cpu",
    num_codebooks: int | None = 8,
    dtype: torch.dtype | None = None,
    config: MimiConfig | None = None,
    hf_repo: str | None = None,
) -> Mimi:
    """Build Mimi from a released-format checkpoint.

    ``path_or_hf``: a file, a folder holding ``tokenizer-e351c8d8-checkpoint125.safetensors``, ``hf://OWNER/REPO``
    or ``hf://OWNER/REPO/FILE``; ``None`` uses ``hf_repo`` (default ``kyutai/moshiko-pytorch-bf16``). fp32 and bf16
    files load; the model is kept in ``dtype`` (default float32). ``config`` defaults to the released architecture;
    the number of codebooks always comes from the file. ``num_codebooks`` None: 8, or all if the file has fewer. Raises :class:`CheckpointError` naming missing, unexpected or
    mis-shaped keys when the file does not fit.
    """
    path = resolve_mimi(path_or_hf, hf_repo)
    raw = read_state_dict(path)
    if any(k in raw for k in LM_MARKERS):
        raise CheckpointError(
            f"{path} is a Moshi LM checkpoint, not Mimi; pass the codec file ({MIMI_NAME}) or --hf-repo instead"
        )
    state, unknown = from_released(raw, source=str(path))
    if not state:
        sample = ", ".join(list(raw)[:3]) or "no tensors"
        raise CheckpointError(
            f"{path} does not look like a Mimi checkpoint: none of its {len(raw)} keys ({sample}, ...) is a Mimi key "
            "such as encoder.model.0.conv.conv.weight"
        )
    config = config or MimiConfig()
    if "quantizer.rvq_rest.codebooks" in state:  # the file decides how many codebooks there are
        config = config.with_codebooks(state["quantizer.rvq_rest.codebooks"].shape[0] + 1)
    with torch.device("meta"):
        model = Mimi(config, num_codebooks=1)
    check_state_dict(
        model, state, unknown, str(path), "Mimi",
        "is it a Mimi checkpoint of this architecture? Pass its mimi_config (--mimi-config) if it is not the released one",
    )
    if num_codebooks is None:
        num_codebooks = min(8, config.quantizer.n_q)
    if not 1 <= num_codebooks <= config.quantizer.n_q:
        raise CheckpointError(f"num_codebooks={num_codebooks} but {path} holds {config.quantizer.n_q} codebooks")
    model.num_codebooks = num_codebooks
    target = dtype or torch.float32
    state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    return assign_weights(model, state, device)


def mimi_released_state_dict(model: Mimi) -> dict[str, torch.Tensor]:
    """The model's weights under the released checkpoint's names."""
    transposed = {name for name, m in model.named_modules() if isinstance(m, StreamingConvTranspose1d)}
    transposed.discard("upsample")
    return to_released(model.state_dict(), transposed)


def save_mimi(model: Mimi, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a released-format safetensors file (atomically); ``dtype`` e.g. torch.bfloat16."""
    state = mimi_released_state_dict(model)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return write_safetensors(state, path, metadata={"format": "pt", "model": "mimi"})
