"""Text side of the LM: the SentencePiece tokenizer with named special ids, and training a new one."""

from .coverage import CoverageReport, measure_coverage
from .tokenizer import FRAME_RATE, TEXT_EPAD_ID, TEXT_PAD_ID, TOKENIZER_NAME, TextTokenizer, Word
from .train import TokenizerTrainingError, train_tokenizer

__all__ = [
    "CoverageReport",
    "FRAME_RATE",
    "TEXT_EPAD_ID",
    "TEXT_PAD_ID",
    "TOKENIZER_NAME",
    "TextTokenizer",
    "TokenizerTrainingError",
    "Word",
    "measure_coverage",
    "train_tokenizer",
]
