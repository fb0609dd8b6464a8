"""The text tokenizer of the inner monologue: SentencePiece with the Moshi special ids named.

The LM's text stream carries one token per 80 ms frame (12.5 Hz). Between words it holds PAD (3,
``existing_text_padding_id``) and, optionally just before a word, EPAD (0, ``existing_text_end_padding_id``). The
token fed before the first frame is ``text_card`` (32000 for moshiko), an extra embedding row that is not a
SentencePiece id. Moshiko, J-Moshi (Japanese, rinna's SentencePiece) and Human-1 (Hindi) ship their tokenizers under
the same file name, ``tokenizer_spm_32k_3.model``; :meth:`TextTokenizer.check_vocabulary` catches a mix-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch

from ..errors import CheckpointError

TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
TEXT_PAD_ID = 3  # existing_text_padding_id
TEXT_EPAD_ID = 0  # existing_text_end_padding_id
FRAME_RATE = 12.5  # text tokens per second (one per Mimi frame)
WORD_START = "\u2581"  # "▁": SentencePiece's mark of a piece that begins a word


@dataclass(frozen=True)
class Word:
    """A word of the text stream with its time span in seconds: ``[start, end)``."""

    text: str
    start: float
    end: float


def _as_ids(tokens: Sequence[int] | torch.Tensor) -> list[int]:
    """A plain list of ints from a list or a 1-D tensor [T]."""
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1:
            raise ValueError(f"expected a 1-D text stream [T], got a tensor of shape {tuple(tokens.shape)}")
        return [int(t) for t in tokens.tolist()]
    return [int(t) for t in tokens]


class TextTokenizer:
    """A ``SentencePieceProcessor`` with the Moshi special ids.

    ``pad_id`` (default 3) and ``epad_id`` (default 0) are the LM's padding tokens; ``initial_id`` (default
    ``vocab_size``) is the text token fed before the first frame. ``path`` is the file it came from, if any.
    """

    def __init__(
        self,
        processor: spm.SentencePieceProcessor,
        pad_id: int = TEXT_PAD_ID,
        epad_id: int = TEXT_EPAD_ID,
        initial_id: int | None = None,
        path: Path | None = None,
    ) -> None:
        self.processor = processor
        self.path = path
        self.vocab_size: int = processor.get_piece_size()
        for name, value in (("pad_id", pad_id), ("epad_id", epad_id)):
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the tokenizer's vocabulary [0, {self.vocab_size})")
        self.pad_id = pad_id
        self.epad_id = epad_id
        self.initial_id = self.vocab_size if initial_id is None else initial_id
        self._special = frozenset((pad_id, epad_id, self.initial_id))

    @classmethod
    def load(
        cls,
        path_or_hf: str | Path | None = None,
        hf_repo: str | None = None,
        pad_id: int = TEXT_PAD_ID,
        epad_id: int = TEXT_EPAD_ID,
        initial_id: int | None = None,
    ) -> TextTokenizer:
        """Load a SentencePiece ``.model``.

        ``path_or_hf``: a file, a folder holding ``tokenizer_spm_32k_3.model``, ``file://path``, ``hf://OWNER/REPO``
        (the repo's ``config.json`` ``tokenizer_name``, else the default name) or ``hf://OWNER/REPO/FILE``; ``None``
        uses ``hf_repo`` (default ``kyutai/moshiko-pytorch-bf16``). Raises :class:`CheckpointError` when the file
        cannot be found or is not a SentencePiece model.
        """
        # Imported here: the checkpoint package builds on text, not the other way round.
        from ..checkpoint.resolve import DEFAULT_REPO, resolve_file

        spec = path_or_hf if path_or_hf is not None else f"hf://{hf_repo or DEFAULT_REPO}"
        path = resolve_file(spec, TOKENIZER_NAME, config_key="tokenizer_name")
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(str(path))
        except (RuntimeError, OSError) as e:
            raise CheckpointError(
                f"{path} is not a SentencePiece tokenizer model ({e}); pass the tokenizer .model file "
                f"({TOKENIZER_NAME}) that came with the checkpoint"
            ) from None
        return cls(processor, pad_id=pad_id, epad_id=epad_id, initial_id=initial_id, path=Path(path))

    @property
    def source(self) -> str:
        """How to name this tokenizer in a message: its file, or ``the tokenizer`` when built in memory."""
        return str(self.path) if self.path is not None else "the tokenizer"

    def __repr__(self) -> str:
        return (
            f"TextTokenizer({self.source}, vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"epad_id={self.epad_id}, initial_id={self.initial_id})"
        )

    def encode(self, text: str) -> list[int]:
        """SentencePiece ids of ``text`` (no BOS/EOS). Characters outside the vocabulary become the unk id."""
        return self.processor.encode(text, out_type=int)

    def is_text(self, token: int) -> bool:
        """Whether ``token`` is a real piece: in the vocabulary and not PAD, EPAD, the initial token or a control
        piece such as ``<s>``."""
        return 0 <= token < self.vocab_size and token not in self._special and not self.processor.is_control(token)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids`` [T], skipping PAD, EPAD, the initial token and ids outside the vocabulary (such as -1)."""
        return self.processor.decode([t for t in _as_ids(ids) if self.is_text(t)])

    def piece(self, token: int) -> str:
        """The SentencePiece piece of ``token`` (e.g. ``▁hello``); ``<initial>`` for the initial token."""
        if token == self.initial_id:
            return "<initial>"
        if not 0 <= token < self.vocab_size:
            raise IndexError(f"text token {token} is outside the tokenizer's vocabulary [0, {self.vocab_size})")
        return self.processor.id_to_piece(token)

    def check_vocabulary(self, text_card: int, source: str) -> None:
        """Raise :class:`CheckpointError` unless the tokenizer has exactly ``text_card`` pieces, the model's text
        vocabulary. ``source`` names the model (a file or repo) in the message."""
        if self.vocab_size != text_card:
            raise CheckpointError(
                f"tokenizer {self.source} has {self.vocab_size} pieces but the model's text vocabulary (text_card) "
                f"of {source} is {text_card}: pass the tokenizer that came with the checkpoint (--tokenizer)"
            )

    def words_from_stream(self, tokens: Sequence[int] | torch.Tensor, frame_rate: float = FRAME_RATE) -> list[Word]:
        """Words of an inner-monologue stream [T] (one token per frame) with their times in seconds.

        A piece starting with ``▁`` begins a word and later pieces join it; PAD, EPAD and other non-text frames end
        nothing but belong to no word. ``start`` is the first piece's frame / ``frame_rate``; ``end`` is the last
        piece's frame + 1, over ``frame_rate``. Words that decode to nothing (a lone ``▁``) are left out.
        """
        words: list[Word] = []
        pieces: list[int] = []  # ids of the word being read
        first = last = 0  # its first and last frame

        def close() -> None:
            text = self.processor.decode(pieces).strip()
            if text:
                words.append(Word(text, first / frame_rate, (last + 1) / frame_rate))

        for frame, token in enumerate(_as_ids(tokens)):
            if not self.is_text(token):
                continue
            if pieces and self.processor.id_to_piece(token).startswith(WORD_START):
                close()
                pieces = []
            if not pieces:
                first = frame
            pieces.append(token)
            last = frame
        if pieces:
            close()
        return words

    def stream_text(self, tokens: Sequence[int] | torch.Tensor) -> str:
        """The text of an inner-monologue stream [T] as the server shows it: words joined by single spaces."""
        return " ".join(word.text for word in self.words_from_stream(tokens))
