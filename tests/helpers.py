"""Helpers shared by the tests: the speech sample and random weights that make parity tests meaningful."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).parent / "assets"


def speech(seconds: float | None = None) -> torch.Tensor:
    """The espeak-ng English sample at 24 kHz, [1, 1, S]; repeated or cut to ``seconds`` when given."""
    import sphn

    data, sr = sphn.read(str(ASSETS / "speech_en.wav"))
    assert sr == 24000
    wav = torch.from_numpy(np.ascontiguousarray(data[:1]))[None]
    if seconds is not None:
        n = int(seconds * 24000)
        reps = -(-n // wav.shape[-1])
        wav = wav.repeat(1, 1, reps)[..., :n]
    return wav


def randomize_(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give layer scales, codebooks and usage counts non-trivial random values (in place).

    Default initialisation leaves layer scales at 0.01 and codebooks degenerate, which would make parity tests
    blind to the transformers and the quantizer.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "layer_scale" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.5 + 0.1)
            elif "cluster_usage" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif "embedding_sum" in name or name.endswith("codebooks"):
                tensor.copy_(torch.randn(tensor.shape, generator=g))
            elif "_initialized" in name:
                tensor.fill_(1)
    return model


def random_reference_lm(kwargs: dict, seed: int = 1) -> torch.nn.Module:
    """The reference's ``LMModel`` (moshi 0.2.13, the test oracle) of ``kwargs`` with every weight counting: the
    default initialisation leaves norms at one, biases at zero and paddings small, to which parity tests are blind."""
    from moshi.models import loaders

    torch.manual_seed(seed)
    model = loaders.get_moshi_lm(None, kwargs, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "norm.weight", "norm_cross.weight")) or name.startswith("depformer_norms."):
                p.copy_(torch.rand_like(p) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            elif name.endswith("learnt_padding"):
                p.copy_(torch.randn_like(p))
    return model.eval()


def write_released_lm(model: torch.nn.Module, config: dict, folder: Path) -> Path:
    """A model folder as released: ``model.safetensors`` in the reference's names and ``config.json``."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A CLI failure as users should see it: exit status 2, one ``error:`` line holding ``needles``, no traceback."""
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tiny_models(folder: Path):
    """(Mimi, LM, tokenizer) of the tiny presets with random weights (seed 0) and a 96-piece tokenizer trained in
    ``folder``: a whole model that runs in milliseconds, for engine and server tests."""
    import fullduplex as fd
    from fullduplex.codec import mimi_preset
    from fullduplex.lm import lm_preset
    from fullduplex.text import train_tokenizer

    torch.manual_seed(0)
    mimi = fd.Mimi(mimi_preset("tiny")).eval()
    lm = fd.LMModel(lm_preset("tiny")).eval()
    words = ["hello there", "how are you", "fine thanks", "good morning", "see you later", "what is that"] * 8
    return mimi, lm, train_tokenizer(words, folder / "tok", 96, model_type="bpe")
