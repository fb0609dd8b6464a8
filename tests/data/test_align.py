"""The alignment of words to the 12.5 Hz text stream, on hand-made cases whose answers are written out by hand.

Frame f covers [0.08 f, 0.08 (f + 1)) seconds. ``P`` is PAD (3), ``E`` is EPAD (0); a word's pieces are the ids
of a toy tokenizer, so every expected stream below can be checked by eye.
"""

from __future__ import annotations

import pytest

from fullduplex.data.align import AlignStats, align_pieces, align_words, start_frame, word_pieces
from fullduplex.text import TEXT_EPAD_ID, TEXT_PAD_ID, Word, train_tokenizer

P, E = TEXT_PAD_ID, TEXT_EPAD_ID


class ToyTokenizer:
    """Each word is a fixed list of pieces (ids >= 10); ``piece`` names them."""

    pad_id, epad_id = P, E
    table = {"a": [10], "be": [11, 12], "seven": [13, 14, 15], "extraordinary": [16, 17, 18, 19], "x": [20], "y": [21]}

    def encode(self, text: str) -> list[int]:
        return list(self.table[text])

    def piece(self, token: int) -> str:
        return f"p{token}"


TOY = ToyTokenizer()


def at(frame: int) -> float:
    """A time inside frame ``frame`` (a third of the way in)."""
    return 0.08 * frame + 0.08 / 3


def align(spec: list[tuple[str, float]], frames: int, policy: str = "drop"):
    words = [Word(text, start, start + 0.5) for text, start in spec]
    return align_words(words, TOY, frames, policy=policy)


def test_start_frame_is_floor_and_robust_to_rounding():
    for f in range(2000):
        assert start_frame(0.08 * f) == f  # 0.08 * f is not exact in binary; it still lands in frame f
        assert start_frame(0.08 * f + 0.079) == f
    assert start_frame(0.0) == 0


def test_single_word_gets_epad_before_it():
    a = align([("be", at(3))], 8)
    assert a.tokens.tolist() == [P, P, E, 11, 12, P, P, P]
    assert a.stats == AlignStats(frames=8, words=1, words_placed=1, tokens_placed=2, epad=1, pad=5)
    assert a.stats.pad_ratio == 6 / 8


def test_word_at_time_zero_has_no_epad():
    assert align([("be", 0.0)], 4).tokens.tolist() == [11, 12, P, P]
    assert align([("be", 0.08)], 4).tokens.tolist() == [E, 11, 12, P]


def test_back_to_back_words_have_no_epad_between():
    a = align([("be", at(1)), ("seven", at(3)), ("a", at(7))], 10)
    assert a.tokens.tolist() == [E, 11, 12, 13, 14, 15, E, 10, P, P]
    assert a.stats.epad == 2 and a.stats.tokens_placed == 6


@pytest.mark.parametrize("policy", ["drop", "shift"])
def test_overlapping_words(policy):
    # "a" starts in the same frame as "be" (overlapping speech, or two words within 80 ms)
    a = align([("be", at(2)), ("a", at(2) + 0.01), ("x", at(8))], 10, policy)
    if policy == "drop":
        assert a.tokens.tolist() == [P, E, 11, 12, P, P, P, E, 20, P]
        assert (a.stats.words_dropped, a.stats.tokens_dropped, a.stats.words_shifted) == (1, 1, 0)
    else:  # shifted to the first free frame (4), before "x" at 8
        assert a.tokens.tolist() == [P, E, 11, 12, 10, P, P, E, 20, P]
        assert (a.stats.words_dropped, a.stats.words_shifted, a.stats.tokens_shifted) == (0, 1, 1)
    assert a.stats.tokens_placed + a.stats.tokens_dropped == 4


def test_word_longer_than_its_gap():
    # "extraordinary" (4 pieces, frames 2..5) runs over the start of "a" (frame 4); "x" starts at 8
    spec = [("extraordinary", at(2)), ("a", at(4)), ("x", at(8))]
    drop = align(spec, 10, "drop")
    assert drop.tokens.tolist() == [P, E, 16, 17, 18, 19, P, E, 20, P]
    assert drop.stats.words_dropped == 1 and drop.stats.tokens_dropped == 1
    shift = align(spec, 10, "shift")
    # "a" moves to frame 6, right after the long word: back to back, so no EPAD; "x" keeps its frame
    assert shift.tokens.tolist() == [P, E, 16, 17, 18, 19, 10, E, 20, P]
    assert shift.stats.words_shifted == 1 and shift.stats.words_dropped == 0


def test_shift_never_moves_a_word_onto_a_later_words_frame():
    # "a" (frame 3) would move to frame 6, but "x" starts at frame 5: "a" is dropped; "x" then shifts to 6
    a = align([("extraordinary", at(2)), ("a", at(3)), ("x", at(5))], 10, "shift")
    assert a.tokens.tolist() == [P, E, 16, 17, 18, 19, 20, P, P, P]
    assert (a.stats.words_dropped, a.stats.words_shifted, a.stats.words_placed) == (1, 1, 2)


def test_shift_spreads_words_of_one_frame():
    a = align([("x", at(4)), ("y", at(4)), ("a", at(4))], 8, "shift")
    assert a.tokens.tolist() == [P, P, P, E, 20, 21, 10, P]
    assert a.stats.words_shifted == 2
    d = align([("x", at(4)), ("y", at(4)), ("a", at(4))], 8, "drop")
    assert d.tokens.tolist() == [P, P, P, E, 20, P, P, P] and d.stats.words_dropped == 2


def test_window_end():
    # last frame: one piece fits, two are cut; a word starting exactly at the end (0.8 s = frame 10) is outside
    a = align([("seven", at(9)), ("be", 0.8)], 10)
    assert a.tokens.tolist() == [P] * 8 + [E, 13]
    s = a.stats
    assert (s.words_placed, s.words_truncated, s.words_outside, s.tokens_placed, s.tokens_dropped) == (1, 1, 1, 1, 4)
    # shifting never goes past the end either
    b = align([("seven", at(7)), ("a", at(8))], 10, "shift")
    assert b.tokens.tolist() == [P] * 6 + [E, 13, 14, 15] and b.stats.words_dropped == 1


def test_empty_window_and_no_words():
    assert align([("a", 0.0)], 0).tokens.tolist() == []
    a = align([], 5)
    assert a.tokens.tolist() == [P] * 5 and a.stats.pad_ratio == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="sort words by start"):
        align([("a", at(5)), ("x", at(2))], 10)
    with pytest.raises(ValueError, match="word 0"):
        align([("a", -0.5)], 10)
    with pytest.raises(ValueError, match="policy"):
        align([("a", 0.0)], 10, "squeeze")


def test_stats_add_up():
    a = align([("be", at(1))], 5).stats + align([("a", at(0)), ("x", at(0))], 5).stats
    assert (a.frames, a.words, a.words_placed, a.words_dropped, a.tokens_placed) == (10, 3, 2, 1, 3)
    assert a.pad_ratio == (10 - 3) / 10


def test_align_pieces_takes_ids_directly():
    a = align_pieces([0.0, 0.5], [[7], [8, 9]], 9, pad_id=P, epad_id=E)
    assert a.tokens.tolist() == [7, P, P, P, P, E, 8, 9, P]


# --- real SentencePiece tokenizers ----------------------------------------------------------------------------
EN = ["hello there how are you", "i am fine thank you", "what a lovely morning it is", "see you later my friend"] * 6
JA = ["こんにちは今日はいい天気ですね", "ありがとうございます", "私は学生です", "東京に行きました", "お元気ですか",
      "今日は東京に行きます", "天気がいいですね", "学生は元気です"] * 6


def test_spaced_words_round_trip_through_the_stream(tmp_path):
    tok = train_tokenizer(EN, tmp_path / "en", 60, model_type="bpe")
    text = "hello there how are you".split()
    words = [Word(w, 0.2 + 0.6 * i, 0.6 + 0.6 * i) for i, w in enumerate(text)]
    a = align_words(words, tok, 50)
    # every word starts with the word-start mark, so the words and their start frames come back out
    back = tok.words_from_stream(a.tokens)
    assert [w.text for w in back] == text
    assert [round(w.start * 12.5) for w in back] == [start_frame(w.start) for w in words]
    assert a.stats.tokens_placed == sum(len(tok.encode(w)) for w in text)


def test_unspaced_script_uses_running_text_pieces(tmp_path):
    tok = train_tokenizer(JA, tmp_path / "ja", 90, model_type="bpe", split_by_whitespace=False)
    text = ["私", "は", "東京", "に", "行き", "ました"]
    words = [Word(w, 0.4 * i, 0.4 * i + 0.3) for i, w in enumerate(text)]
    pieces = word_pieces(words, tok, spaced=False)
    # the words' pieces, in order, are exactly the tokenizer's pieces for the sentence written without spaces
    assert [p for word in pieces for p in word] == tok.encode("".join(text))
    marked = [tok.piece(p).startswith("▁") for word in pieces for p in word]
    assert marked[0] and not any(marked[1:])  # only the utterance's first piece carries the word-start mark
    # each piece went to the word holding its first character
    offset = 0
    for word, ps in zip(text, pieces, strict=True):
        for p in ps:
            surface = tok.piece(p).lstrip("▁")
            assert "".join(text)[offset : offset + len(surface)] == surface
            assert text.index(word) == _word_at(text, offset)
            offset += len(surface)
    a = align_words(words, tok, 40, spaced=False)
    assert tok.decode(a.tokens) == "".join(text)
    assert a.stats.words_merged == sum(1 for p in pieces if not p)
    # encoding word by word instead would spend a frame on a lone "▁" for most words
    assert sum(map(len, word_pieces(words, tok, spaced=True))) > sum(map(len, pieces))


def _word_at(text: list[str], offset: int) -> int:
    end = 0
    for i, word in enumerate(text):
        end += len(word)
        if offset < end:
            return i
    raise AssertionError(offset)


def test_unspaced_pause_starts_a_new_utterance(tmp_path):
    tok = train_tokenizer(JA, tmp_path / "ja", 90, model_type="bpe", split_by_whitespace=False)
    words = [Word("ありがとう", 0.0, 0.5), Word("ございます", 0.5, 1.0), Word("学生", 3.0, 3.4), Word("です", 3.4, 3.8)]
    pieces = word_pieces(words, tok, spaced=False)
    assert pieces[:2] == word_pieces(words[:2], tok, spaced=False)
    assert pieces[2:] == word_pieces(words[2:], tok, spaced=False)
    assert tok.piece(pieces[2][0]).startswith("▁")  # after a pause the running text starts again


def test_unspaced_byte_fallback_characters(tmp_path):
    tok = train_tokenizer(JA, tmp_path / "jab", 340, model_type="bpe", split_by_whitespace=False, byte_fallback=True)
    words = [Word("犬", 0.0, 0.3), Word("は", 0.3, 0.5), Word("元気", 0.5, 0.9)]  # 犬 is not in the training text
    pieces = word_pieces(words, tok, spaced=False)
    assert [p for w in pieces for p in w] == tok.encode("犬は元気")
    assert tok.processor.decode(pieces[0]) == "犬" and tok.processor.decode(pieces[2]) == "元気"


def test_unspaced_unknown_character_falls_back_to_word_by_word(tmp_path):
    tok = train_tokenizer(JA, tmp_path / "ja", 90, model_type="bpe", split_by_whitespace=False)
    words = [Word("犬", 0.0, 0.3), Word("は", 0.3, 0.5), Word("元気", 0.5, 0.9)]  # 犬 is unknown: unk, length unknown
    pieces = word_pieces(words, tok, spaced=False)
    for word, ps in zip(words, pieces, strict=True):
        expected = tok.encode(word.text)
        assert ps == (expected[1:] if tok.piece(expected[0]) == "▁" and len(expected) > 1 else expected)
    assert pieces[0] == [tok.processor.unk_id()]
