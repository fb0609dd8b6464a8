"""Word timestamps of the model's speech, for Full-Duplex-Bench's word-based rules (optional).

    transcribe = faster_whisper_transcriber("/models/faster-whisper-tiny.en")
    words = transcribe(model_channel, 16000)          # [Word("hello", 0.52, 0.81), ...], seconds

A *transcriber* is any callable ``(audio float32 [S], sample_rate) -> list[Word]``; tests pass a fake one.
The bundled one wraps `faster-whisper <https://github.com/SYSTRAN/faster-whisper>`_ (not a dependency: install it
with ``pip install faster-whisper``) on a CTranslate2 Whisper model folder that is already on disk; nothing is
downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import FullduplexError
from ..text.tokenizer import Word

Transcriber = Callable[[np.ndarray, int], list[Word]]
ASR_RATE = 16000  # Whisper's input rate


def faster_whisper_transcriber(model: str | os.PathLike[str], device: str = "cpu", compute_type: str = "int8",
                               language: str | None = None) -> Transcriber:
    """A transcriber over the faster-whisper model folder ``model`` (holding ``model.bin``), with word
    timestamps. :class:`FullduplexError` when faster-whisper is not installed or the folder is not a model."""
    path = Path(model)
    if not path.is_dir():
        raise FullduplexError(f"--asr-model {path}: not a folder; give a faster-whisper (CTranslate2) model folder "
                              "holding model.bin")
    if not (path / "model.bin").is_file():
        raise FullduplexError(f"--asr-model {path}: no model.bin inside; give a faster-whisper (CTranslate2) model "
                              "folder, e.g. Systran/faster-whisper-tiny.en downloaded beforehand")
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise FullduplexError("--asr-model needs the faster-whisper package: pip install faster-whisper") from None
    whisper = WhisperModel(str(path), device=device, compute_type=compute_type, local_files_only=True)

    def transcribe(audio: np.ndarray, sample_rate: int) -> list[Word]:
        if sample_rate != ASR_RATE:
            raise ValueError(f"faster-whisper takes {ASR_RATE} Hz audio, got {sample_rate} Hz")
        segments, _ = whisper.transcribe(np.asarray(audio, dtype=np.float32), language=language,
                                         word_timestamps=True, vad_filter=False, condition_on_previous_text=False)
        return [Word(w.word.strip(), float(w.start), float(w.end)) for seg in segments for w in (seg.words or [])
                if w.word.strip()]

    return transcribe
