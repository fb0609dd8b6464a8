"""How well a tokenizer fits a corpus: character and word coverage, tokens per word and per character.

Definitions (whitespace = what ``str.split`` splits on):

- a *character* is a non-whitespace character of the text;
- a *word* is a maximal run of non-whitespace characters. For scripts written without spaces (Japanese, Chinese,
  Thai) a "word" is then a whole phrase or sentence, so tokens per word says little there: read tokens per
  character instead (:attr:`CoverageReport.spaced` tells the two cases apart);
- a character is *covered* when the tokenizer spells it with a piece of its own, neither the unknown piece
  (id 0, which the LM would read as EPAD) nor UTF-8 byte pieces (``byte_fallback``);
- a word is *encodable* when none of its pieces is the unknown piece or a byte piece;
- *tokens per word* counts the pieces of each word encoded on its own (SentencePiece never merges across spaces
  unless trained with ``split_by_whitespace=False``), the leading ``▁`` included, as the LM's text stream holds them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from .tokenizer import TextTokenizer

# Scripts written without spaces between words: kana, CJK ideographs, Thai, Lao, Myanmar, Khmer (code point ranges).
UNSPACED_SCRIPTS = (
    (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF66, 0xFF9F),
    (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF),
)
# Above this many characters per whitespace-separated word, text is taken as unspaced whatever its script.
UNSPACED_CHARS_PER_WORD = 12.0


def is_unspaced_script(char: str) -> bool:
    """Whether ``char`` belongs to a script written without spaces between words."""
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in UNSPACED_SCRIPTS)


@dataclass(frozen=True)
class CoverageReport:
    """Counts over the measured lines; the ratios are properties."""

    lines: int
    characters: int
    words: int
    tokens: int
    uncovered_characters: int
    unencodable_words: int
    unspaced_characters: int = 0  # characters of scripts written without spaces
    uncovered: list[tuple[str, int]] = field(default_factory=list)  # the most frequent uncovered characters

    @property
    def character_coverage(self) -> float:
        """Share of characters (occurrences) with a piece of their own."""
        return 1.0 - self.uncovered_characters / self.characters if self.characters else 1.0

    @property
    def word_coverage(self) -> float:
        """Share of words (occurrences) encoded without unknown or byte pieces."""
        return 1.0 - self.unencodable_words / self.words if self.words else 1.0

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words if self.words else 0.0

    @property
    def tokens_per_character(self) -> float:
        return self.tokens / self.characters if self.characters else 0.0

    @property
    def characters_per_word(self) -> float:
        return self.characters / self.words if self.words else 0.0

    @property
    def spaced(self) -> bool:
        """Whether the text separates words with spaces (else tokens per character is the figure to read): false
        when most characters are of a script written without spaces (kana, kanji, Thai, ...) or words average more
        than 12 characters."""
        mostly_unspaced = 2 * self.unspaced_characters > self.characters
        return not mostly_unspaced and self.characters_per_word <= UNSPACED_CHARS_PER_WORD

    def summary(self) -> list[str]:
        """Human-readable lines, as ``fullduplex tokenizer`` prints them."""
        out = [
            f"measured on {self.lines} lines: {self.characters} characters, {self.words} words "
            f"(whitespace-separated), {self.tokens} tokens",
            f"character coverage {100 * self.character_coverage:.3f}% "
            f"({self.uncovered_characters} characters without a piece of their own)",
            f"word coverage {100 * self.word_coverage:.3f}% ({self.unencodable_words} words with unknown or byte pieces)",
            f"tokens per word {self.tokens_per_word:.3f}; tokens per character {self.tokens_per_character:.3f}",
        ]
        if not self.spaced:
            out.append(
                f"note: the text is written without spaces ({self.characters_per_word:.1f} characters per "
                "whitespace-separated word), so a 'word' here is a phrase: read tokens per character"
            )
        if self.uncovered:
            shown = ", ".join(f"{c!r} ({n})" for c, n in self.uncovered)
            out.append(f"most frequent uncovered characters: {shown}")
        return out

    def to_dict(self) -> dict[str, float | int | bool | list]:
        return {
            "lines": self.lines, "characters": self.characters, "words": self.words, "tokens": self.tokens,
            "uncovered_characters": self.uncovered_characters, "unencodable_words": self.unencodable_words,
            "unspaced_characters": self.unspaced_characters,
            "character_coverage": self.character_coverage, "word_coverage": self.word_coverage,
            "tokens_per_word": self.tokens_per_word, "tokens_per_character": self.tokens_per_character,
            "spaced": self.spaced, "uncovered": [list(x) for x in self.uncovered],
        }


def _not_covering(tokenizer: TextTokenizer, ids: list[int]) -> bool:
    """Whether ``ids`` hold the unknown piece or a byte piece."""
    proc = tokenizer.processor
    return any(proc.is_unknown(i) or proc.is_byte(i) for i in ids)


def measure_coverage(tokenizer: TextTokenizer, lines: Iterable[str], max_lines: int | None = None) -> CoverageReport:
    """Coverage and token counts of ``tokenizer`` on ``lines`` (the first ``max_lines`` non-empty ones, if given).

    See the module docstring for the definitions.
    """
    proc = tokenizer.processor
    chars: Counter[str] = Counter()
    n_lines = n_words = n_tokens = bad_words = 0
    for line in lines:
        words = line.split()
        if not words:
            continue
        if max_lines is not None and n_lines >= max_lines:
            break
        n_lines += 1
        n_words += len(words)
        for word in words:
            chars.update(word)
        for ids in proc.encode(words, out_type=int):
            n_tokens += len(ids)
            bad_words += _not_covering(tokenizer, ids)
    distinct = sorted(chars)
    uncovered = [c for c, ids in zip(distinct, proc.encode(distinct, out_type=int), strict=True) if _not_covering(tokenizer, ids)]
    ranked = sorted(((c, chars[c]) for c in uncovered), key=lambda x: (-x[1], x[0]))
    return CoverageReport(
        lines=n_lines, characters=sum(chars.values()), words=n_words, tokens=n_tokens,
        uncovered_characters=sum(n for _, n in ranked), unencodable_words=bad_words,
        unspaced_characters=sum(n for c, n in chars.items() if is_unspaced_script(c)), uncovered=ranked[:10],
    )
