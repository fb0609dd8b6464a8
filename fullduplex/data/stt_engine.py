"""A :class:`~fullduplex.data.annotate.Transcriber` on a Kyutai STT model (``kyutai/stt-1b-en_fr``,
``kyutai/stt-2.6b-en``): ``fullduplex data annotate --engine kyutai-stt --model MODEL``.

Each channel is transcribed as :func:`fullduplex.inference.transcribe.transcribe` does (greedy, the model's
``stt_config`` delay and silence prefix, word times in seconds of the input). The model decides the language
itself (English and French for the 1B, English for the 2.6B): ``--language`` is not passed to it. The inference
package is imported when the engine is built, as faster-whisper is: the data side does not need it otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..codec.audio import resample
from ..text.tokenizer import TextTokenizer, Word


class KyutaiStt:
    """Speech to text with word times on a Kyutai STT model already loaded (see :meth:`load`)."""

    def __init__(self, mimi: Any, lm: Any, tokenizer: TextTokenizer, stt: Any) -> None:
        from ..inference.offline import check_models
        from ..inference.transcribe import check_stt_model

        check_stt_model(lm, "--model")
        check_models(mimi, lm, tokenizer, "--model")
        self.mimi, self.lm, self.tokenizer, self.stt = mimi, lm, tokenizer, stt

    @classmethod
    def load(cls, model: str | Path, device: str = "auto") -> KyutaiStt:
        """From a model folder (``config.json`` naming its files, as released) or a Hugging Face repo
        (``OWNER/NAME`` or ``hf://OWNER/NAME``); ``device`` ``auto`` (CUDA when present), ``cpu``, ``cuda``..."""
        from ..checkpoint.lm import load_lm
        from ..checkpoint.mimi import load_mimi
        from ..checkpoint.resolve import MIMI_NAME, model_file, named_model, repo_config
        from ..codec.config import MimiConfig
        from ..inference.transcribe import SttConfig
        from ..text.tokenizer import TOKENIZER_NAME

        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        folder, repo, raw = named_model(model)
        if folder is not None:
            lm_spec: str | Path = folder
            mimi_spec: str | Path = model_file(folder, raw, "mimi_name", MIMI_NAME)
            tok_spec: str | Path = model_file(folder, raw, "tokenizer_name", TOKENIZER_NAME)
            source = str(folder / "config.json")
        else:
            raw = repo_config(repo)[0] or {}
            lm_spec = mimi_spec = tok_spec = f"hf://{repo}"
            source = f"{repo}/config.json"
        lm = load_lm(lm_spec, device=device).eval()
        mimi_config = MimiConfig.from_moshi_dict(raw["mimi_config"]) if isinstance(raw.get("mimi_config"), dict) else None
        mimi = load_mimi(mimi_spec, device=device, num_codebooks=None, config=mimi_config).eval()
        cfg = lm.config
        tokenizer = TextTokenizer.load(tok_spec, pad_id=cfg.text_pad_id, epad_id=cfg.text_epad_id)
        return cls(mimi, lm, tokenizer, SttConfig.from_config(raw, source))

    def transcribe(self, audio: np.ndarray, language: str | None, sample_rate: int = 16000) -> list[Word]:
        """Words of ``audio`` (float32 [S], mono, at ``sample_rate``; annotate gives 16 kHz) with start/end
        seconds. ``language`` is ignored: the model detects it."""
        from ..inference.transcribe import transcribe

        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).reshape(1, -1)
        wav = resample(wav, sample_rate, self.mimi.sample_rate)
        (result,) = transcribe([wav], self.mimi, self.lm, self.tokenizer, self.stt, batch_size=1)
        return result.words
