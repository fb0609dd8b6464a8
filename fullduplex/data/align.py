"""Words with times → the frame-aligned text stream of one speaker (12.5 tokens per second).

The LM's text stream (row 0 of the ``[17, T]`` codes) holds one token per 80 ms frame: the word pieces of what the
speaker says, PAD (``tokenizer.pad_id``, 3) where nothing starts, and EPAD (``tokenizer.epad_id``, 0) in the
frame just before a word that follows padding. The rules, as moshi-finetune's interleaver applies them
(reference.md 5.2), plus an explicit collision policy:

1. A word's pieces are placed one per frame starting at its *start frame* ``floor(start * frame_rate)`` (the
   frame holding its start time); its end time is not used (the frames after its pieces are PAD).
2. When the frame before the word's first piece holds PAD, it becomes EPAD. Back-to-back words (the previous
   word's last piece sits in that frame) and a word starting at frame 0 get no EPAD.
3. A word whose start frame is already taken by an earlier word's pieces collides:

   - ``"drop"``: the word is dropped (all its pieces; counted).
   - ``"shift"``: the word starts at the first free frame instead, unless that frame is at or past the start frame
     of the next word that starts in a later frame than this one (or past the window end): then it is dropped.
     So a shifted word never starts where a later word should, and text never drifts more than one word behind
     the audio; its later pieces may spill over, which makes that next word collide in turn.

4. A word starting at or past the window end is dropped (counted as ``words_outside``); pieces that would run
   past the window end are cut (counted in ``tokens_dropped`` and ``words_truncated``).

How words become pieces (:func:`word_pieces`):

- ``spaced=True`` (English, Hindi, ...: words separated by spaces): each word is encoded on its own, as
  moshi-finetune does. SentencePiece's dummy prefix gives every word a leading ``▁`` (its own piece or part of the
  first one), so the text stream marks word starts and ``TextTokenizer.words_from_stream`` recovers the words.
- ``spaced=False`` (Japanese, Chinese, Thai: no spaces between words): the words of each utterance (a run of
  words with pauses under :data:`UTTERANCE_GAP` seconds) are joined *without* spaces and encoded once, the way
  such a tokenizer was trained; each piece goes to the word holding its first character. Only an utterance's
  first word carries the ``▁`` marker, and a word whose characters all fall inside a piece begun by the previous
  word gets no pieces (``words_merged``). If SentencePiece normalises the text to a different length (rare
  compatibility characters, unknown characters), that utterance falls back to per-word encoding with the lone
  ``▁`` piece removed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Literal, Protocol

import torch

from ..text.tokenizer import FRAME_RATE, WORD_START, Word

Policy = Literal["drop", "shift"]
POLICIES: tuple[str, ...] = ("drop", "shift")
UTTERANCE_GAP = 0.5  # seconds of silence that start a new running text in spaced=False mode
_EPS = 1e-6  # a time within a microsecond below a frame boundary belongs to the next frame (float rounding)


class PieceTokenizer(Protocol):
    """What alignment needs of a tokenizer (:class:`~fullduplex.text.TextTokenizer` fits)."""

    pad_id: int
    epad_id: int

    def encode(self, text: str) -> list[int]: ...

    def piece(self, token: int) -> str: ...


@dataclass
class AlignStats:
    """Counts of one alignment (or, summed with ``+``, of many)."""

    frames: int = 0  # length of the stream
    words: int = 0  # words given
    words_placed: int = 0  # words with at least one piece in the stream
    words_shifted: int = 0  # placed later than their start frame ("shift")
    words_dropped: int = 0  # dropped by a collision
    words_outside: int = 0  # starting at or past the window end
    words_truncated: int = 0  # placed, but pieces cut at the window end
    words_merged: int = 0  # no pieces of their own (spaced=False: covered by the previous word's piece)
    tokens_placed: int = 0  # word pieces in the stream
    tokens_dropped: int = 0  # pieces of dropped or outside words, and pieces cut at the window end
    tokens_shifted: int = 0  # pieces of shifted words
    epad: int = 0  # EPAD frames
    pad: int = 0  # PAD frames

    def __add__(self, other: AlignStats) -> AlignStats:
        return AlignStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def pad_ratio(self) -> float:
        """Fraction of frames holding no word piece (PAD or EPAD); 0 for an empty stream."""
        return (self.pad + self.epad) / self.frames if self.frames else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "pad_ratio": round(self.pad_ratio, 6)}


@dataclass
class Alignment:
    """The text stream ``tokens`` [T] (int64) and its :class:`AlignStats`."""

    tokens: torch.Tensor
    stats: AlignStats


def start_frame(seconds: float, frame_rate: float = FRAME_RATE) -> int:
    """The frame holding time ``seconds``: ``floor(seconds * frame_rate)``, robust to float rounding."""
    return math.floor(seconds * frame_rate + _EPS)


def align_pieces(
    starts: Sequence[float],
    pieces: Sequence[Sequence[int]],
    num_frames: int,
    pad_id: int,
    epad_id: int,
    policy: Policy = "drop",
    frame_rate: float = FRAME_RATE,
) -> Alignment:
    """Place each word's ``pieces`` from its start time (seconds, sorted, >= 0) on a stream of ``num_frames``
    frames, by the rules of the module docstring. Returns the stream [num_frames] and its counts."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if len(starts) != len(pieces):
        raise ValueError(f"{len(starts)} start times for {len(pieces)} words")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    frames = [start_frame(s, frame_rate) for s in starts]
    for i, (s, f) in enumerate(zip(starts, frames, strict=True)):
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"word {i}: start {s!r} s is not a time >= 0")
        if i and f < frames[i - 1]:
            raise ValueError(f"word {i} starts at {s} s, before word {i - 1} ({starts[i - 1]} s): sort words by start")
    # next_later[i]: the start frame of the first later word that starts in a later frame than word i.
    next_later = [num_frames] * len(frames)
    for i in range(len(frames) - 2, -1, -1):
        later = frames[i + 1] if frames[i + 1] > frames[i] else next_later[i + 1]
        next_later[i] = min(later, num_frames)

    stream = [pad_id] * num_frames
    stats = AlignStats(frames=num_frames, words=len(frames))
    cursor = 0  # first frame after the last placed piece
    for i, (frame, word) in enumerate(zip(frames, pieces, strict=True)):
        n = len(word)
        if n == 0:
            stats.words_merged += 1
            continue
        if frame >= num_frames:
            stats.words_outside += 1
            stats.tokens_dropped += n
            continue
        at = frame
        if frame < cursor:  # collision
            if policy == "drop" or cursor >= next_later[i]:
                stats.words_dropped += 1
                stats.tokens_dropped += n
                continue
            at = cursor
            stats.words_shifted += 1
            stats.tokens_shifted += n
        if at >= 1 and at - 1 >= cursor:  # the frame before holds PAD (rule 2); no later word writes there
            stream[at - 1] = epad_id
            stats.epad += 1
        kept = min(n, num_frames - at)
        stream[at : at + kept] = word[:kept]
        if kept < n:
            stats.words_truncated += 1
            stats.tokens_dropped += n - kept
        stats.words_placed += 1
        stats.tokens_placed += kept
        cursor = at + kept
    stats.pad = num_frames - stats.tokens_placed - stats.epad
    return Alignment(torch.tensor(stream, dtype=torch.long), stats)


def word_pieces(
    words: Sequence[Word],
    tokenizer: PieceTokenizer,
    spaced: bool = True,
) -> list[list[int]]:
    """The pieces of each word (see the module docstring for ``spaced``)."""
    if spaced:
        return [tokenizer.encode(w.text.strip()) for w in words]
    out: list[list[int]] = []
    run: list[Word] = []
    for w in words:
        if run and w.start - run[-1].end >= UTTERANCE_GAP:
            out.extend(_running_text_pieces(run, tokenizer))
            run = []
        run.append(w)
    if run:
        out.extend(_running_text_pieces(run, tokenizer))
    return out


def _running_text_pieces(words: Sequence[Word], tokenizer: PieceTokenizer) -> list[list[int]]:
    """Pieces of words written without spaces: the joined text encoded once, each piece to the word holding its
    first character; per-word encoding without the lone ``▁`` when the piece surfaces do not add up."""
    texts = ["".join(w.text.split()) for w in words]
    ids = tokenizer.encode("".join(texts))
    positions = _piece_positions(ids, tokenizer)
    total = sum(len(t) for t in texts)
    if positions is None or positions[1] != total:
        return [_without_lone_marker(tokenizer.encode(t), tokenizer) for t in texts]
    starts, _ = positions
    ends, acc = [], 0
    for t in texts:
        acc += len(t)
        ends.append(acc)
    out: list[list[int]] = [[] for _ in words]
    k = 0
    for token, at in zip(ids, starts, strict=True):
        while k < len(words) - 1 and at >= ends[k]:
            k += 1
        out[k].append(token)
    return out


def _piece_positions(ids: Sequence[int], tokenizer: PieceTokenizer) -> tuple[list[int], int] | None:
    """Character offset (in the text without the dummy-prefix space) where each piece begins, and the text's
    length; ``None`` when a piece's surface is unknown (the unk piece)."""
    starts: list[int] = []
    at = 0
    first = True
    for token in ids:
        piece = tokenizer.piece(token)
        starts.append(at)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # byte-fallback piece
            if int(piece[3:5], 16) & 0xC0 == 0x80:  # a UTF-8 continuation byte: part of the previous character
                starts[-1] = max(at - 1, 0)
            else:  # a lead byte begins a character
                at += 1
            first = False
            continue
        if piece.startswith("<") and piece.endswith(">"):
            return None  # unk or a control piece: its surface length is unknown
        length = len(piece)
        if first and piece.startswith(WORD_START):
            length -= 1  # the dummy prefix is not part of the text
        first = False
        at += length
    return starts, at


def _without_lone_marker(ids: list[int], tokenizer: PieceTokenizer) -> list[int]:
    """``ids`` without a leading piece that is only the word-start mark ``▁`` (it spends a frame on nothing)."""
    if len(ids) > 1 and tokenizer.piece(ids[0]) == WORD_START:
        return ids[1:]
    return ids


def align_words(
    words: Sequence[Word],
    tokenizer: PieceTokenizer,
    num_frames: int,
    policy: Policy = "drop",
    spaced: bool = True,
    frame_rate: float = FRAME_RATE,
) -> Alignment:
    """The text stream [num_frames] of one speaker's ``words`` (sorted by start, times in seconds from the
    stream's first frame). See the module docstring for the rules, ``policy`` and ``spaced``."""
    pieces = word_pieces(words, tokenizer, spaced=spaced)
    return align_pieces(
        [w.start for w in words], pieces, num_frames, tokenizer.pad_id, tokenizer.epad_id, policy, frame_rate
    )
