"""Train a SentencePiece tokenizer whose special ids fit the Moshi LM's text stream.

Special ids. A SentencePiece trainer left at its defaults gives ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 and *no* pad piece
(pad id -1), so id 3 becomes an ordinary piece (``he``, ``▁t``, ...). The LM reads 3 as PAD
(``existing_text_padding_id``) and 0 as EPAD (``existing_text_end_padding_id``), so such a tokenizer would make a
word indistinguishable from silence. We therefore train with the layout of moshiko's ``tokenizer_spm_32k_3.model``:

    0 ``<unk>``   (doubles as EPAD in the text stream)
    1 ``<s>``     2 ``</s>``   (control pieces, never produced by ``encode``; Hibiki uses 2 as EOS)
    3 ``<pad>``   (a control piece: PAD in the text stream)
    4 ...         ordinary pieces

so ``encode`` never gives 3 for text, and gives 0 only for characters the model has never seen. To keep the
latter rare, ``character_coverage`` defaults to 1.0 (every character of the training text gets a piece), and
``byte_fallback=True`` (off by default: it spends 256 ids) spells unseen characters as UTF-8 byte pieces instead.
The LM's initial text token is ``vocab_size`` itself, outside the SentencePiece vocabulary, so the LM's
``text_card`` must equal ``vocab_size``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm

from ..errors import FullduplexError
from .tokenizer import TEXT_EPAD_ID, TEXT_PAD_ID, TextTokenizer

UNK_ID = TEXT_EPAD_ID
BOS_ID = 1
EOS_ID = 2
PAD_ID = TEXT_PAD_ID


class TokenizerTrainingError(FullduplexError, ValueError):
    """SentencePiece could not train a tokenizer from the given text with the given settings."""


def train_tokenizer(
    texts: Iterable[str] | str | os.PathLike[str] | list[os.PathLike[str]],
    output_prefix: str | os.PathLike[str],
    vocab_size: int,
    model_type: Literal["unigram", "bpe"] = "unigram",
    character_coverage: float = 1.0,
    byte_fallback: bool = False,
    max_sentence_length: int = 16384,
    **options: Any,
) -> TextTokenizer:
    """Train a SentencePiece model with the Moshi special ids and write ``{output_prefix}.model`` and ``.vocab``.

    ``texts``: sentences (one string each; an iterable is read once), or the path of a UTF-8 text file with one
    sentence per line (a single ``str`` is always taken as a path), or a list of such paths as ``Path`` objects. ``vocab_size`` counts the four special pieces
    and becomes the LM's ``text_card``. ``options`` go to ``SentencePieceTrainer.train`` as they are (e.g.
    ``split_by_whitespace=False`` for Japanese, ``input_sentence_size``, ``num_threads``). Returns the trained
    tokenizer, loaded from the written file. Raises :class:`TokenizerTrainingError` with SentencePiece's reason
    (most often: the text is too small for ``vocab_size``).
    """
    if model_type not in ("unigram", "bpe"):
        raise TokenizerTrainingError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    if vocab_size <= PAD_ID + 1:
        raise TokenizerTrainingError(f"vocab_size={vocab_size} leaves no room beside the 4 special pieces")
    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    source: dict[str, Any]
    if isinstance(texts, (str, os.PathLike)):
        texts = [Path(texts)]
    if isinstance(texts, (list, tuple)) and texts and all(isinstance(t, os.PathLike) for t in texts):
        paths = [Path(t) for t in texts]
        for path in paths:
            if not path.is_file():
                raise TokenizerTrainingError(f"training text file not found: {path}")
            if "," in str(path):  # SentencePiece reads its input as a comma-separated list of files
                raise TokenizerTrainingError(f"{path}: SentencePiece cannot read a file whose path holds a comma")
        source = {"input": ",".join(str(p) for p in paths)}
        described = ", ".join(str(p) for p in paths)
    else:
        # Newlines inside an item would be read as one long sentence; the trainer wants one sentence per item.
        source = {"sentence_iterator": (line for text in texts for line in text.splitlines() if line.strip())}
        described = "the given sentences"
    settings: dict[str, Any] = dict(
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        max_sentence_length=max_sentence_length,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        pad_piece="<pad>",
        minloglevel=2,  # SentencePiece logs every step to stderr otherwise
    )
    settings.update(options)
    try:
        spm.SentencePieceTrainer.train(**source, **settings)
    except (RuntimeError, OSError) as e:
        reason = str(e)
        if "sentences_.empty()" in reason:
            reason = "there is no text to train on"
        else:  # drop SentencePiece's source location and the assertion's code: "INTERNAL: x.cc(744) [...] "
            reason = re.sub(r"^\w+: \S+\(\d+\) \[.*\] ", "", reason)
            if "Vocabulary size too high" in reason:
                reason += " (or give more text)"
        raise TokenizerTrainingError(
            f"SentencePiece could not train a {model_type} tokenizer of {vocab_size} pieces from {described}: {reason}"
        ) from None
    return TextTokenizer.load(prefix.with_name(prefix.name + ".model"))
