"""The text tokenizer: loading (file, folder, file://, hf:// through the cache), special ids, decoding the LM's text
stream into timed words, and training a tokenizer with the Moshi special layout."""

from __future__ import annotations

import pytest
import torch

from fullduplex.errors import CheckpointError
from fullduplex.text import TOKENIZER_NAME, TextTokenizer, TokenizerTrainingError, Word, train_tokenizer

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "hello there how are you doing today",
    "i would like a cup of coffee please",
    "we went to the market on saturday morning",
    "she said the weather was lovely in the park",
    "can you tell me the way to the station",
    "my brother plays the guitar every evening",
    "they are building a new bridge across the river",
    "the children laughed at the funny clown",
    "please close the window before you leave",
    "it is raining again so take an umbrella",
    "he reads the newspaper with his breakfast",
    "our teacher gave us a lot of homework",
    "the train was late because of the snow",
    "do you want to watch a movie tonight",
    "i think we should talk about the plan",
    "the cat is sleeping on the warm sofa",
    "there are seven days in a week",
    "she bought fresh bread and some cheese",
    "let us meet at the library after lunch",
    "the music was too loud at the party",
    "he forgot his keys at the office",
    "we need more chairs for the guests",
    "the garden is full of beautiful flowers",
    "what time does the concert start",
    "i have never seen such a big dog",
    "the doctor told him to rest for a week",
    "they walked along the beach at sunset",
    "the phone rang while we were eating dinner",
    "could you help me carry these boxes",
    "the museum opens at ten in the morning",
    "my sister is learning to speak french",
    "the soup tastes better with a little salt",
    "we stayed at a small hotel near the sea",
    "the baby finally fell asleep after midnight",
    "he runs five kilometers every single day",
    "the shop on the corner sells cheap shoes",
    "i am sorry but i did not hear you",
    "the meeting has been moved to thursday",
    "she painted the kitchen a bright yellow",
    "the students listened carefully to the lecture",
    "there is a small problem with the computer",
    "we should leave early to avoid the traffic",
    "the old man feeds the birds in the square",
    "thank you very much for your kind words",
    "the mountains look amazing in the winter",
    "he wrote a long letter to his grandmother",
    "the restaurant was closed on monday",
    "i like to drink tea in the afternoon",
    "the zebra and the giraffe live at the zoo",
]
VOCAB = 96  # the tiny LM preset's text_card


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TextTokenizer:
    return train_tokenizer(SENTENCES, tmp_path_factory.mktemp("spm") / "tiny", VOCAB, model_type="bpe")


def test_training_reserves_the_moshi_special_ids(trained, tmp_path):
    assert trained.vocab_size == VOCAB
    assert [trained.piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (trained.pad_id, trained.epad_id, trained.initial_id) == (3, 0, VOCAB)
    assert trained.piece(trained.initial_id) == "<initial>"
    produced = {t for s in SENTENCES for t in trained.encode(s)}
    assert trained.pad_id not in produced and trained.epad_id not in produced
    with pytest.raises(IndexError, match="outside the tokenizer's vocabulary"):
        trained.piece(VOCAB + 1)
    # From a text file, as a unigram model.
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(SENTENCES) + "\n")
    unigram = train_tokenizer(text_file, tmp_path / "out" / "uni", 120)
    assert unigram.vocab_size == 120 and unigram.piece(3) == "<pad>"
    assert unigram.decode(unigram.encode(SENTENCES[5])) == SENTENCES[5]
    with pytest.raises(TokenizerTrainingError, match="Vocabulary size too high"):
        train_tokenizer(SENTENCES[:2], tmp_path / "big", 5000, model_type="bpe")
    with pytest.raises(TokenizerTrainingError, match="no text to train on"):
        train_tokenizer(["", "  "], tmp_path / "empty", 100)
    with pytest.raises(TokenizerTrainingError, match="not found"):
        train_tokenizer(str(tmp_path / "missing.txt"), tmp_path / "x", 100)


def test_load_from_file_folder_and_file_url(trained, tmp_path):
    assert trained.path is not None
    direct = TextTokenizer.load(trained.path)
    assert direct.vocab_size == VOCAB and direct.path == trained.path
    (tmp_path / TOKENIZER_NAME).write_bytes(trained.path.read_bytes())
    from_folder = TextTokenizer.load(tmp_path)
    assert from_folder.path == tmp_path / TOKENIZER_NAME
    from_url = TextTokenizer.load(f"file://{trained.path}")
    assert from_url.encode(SENTENCES[0]) == trained.encode(SENTENCES[0])
    custom = TextTokenizer.load(trained.path, pad_id=1, epad_id=2, initial_id=500)
    assert (custom.pad_id, custom.epad_id, custom.initial_id) == (1, 2, 500)


def test_load_errors_name_the_file(trained, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        TextTokenizer.load(tmp_path / "missing.model")
    with pytest.raises(CheckpointError, match="has no " + TOKENIZER_NAME):
        TextTokenizer.load(tmp_path)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"not a sentencepiece model" * 8)
    with pytest.raises(CheckpointError, match="corrupt.model is not a SentencePiece tokenizer model"):
        TextTokenizer.load(corrupt)
    with pytest.raises(ValueError, match="pad_id=200 is outside"):
        TextTokenizer(trained.processor, pad_id=200)


def test_hf_reference_through_the_cache(trained, tmp_path, monkeypatch):
    """hf://owner/repo finds the tokenizer in huggingface_hub's cache layout, offline."""
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tok-test"
    snapshot = repo / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / TOKENIZER_NAME).write_bytes(trained.path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for spec in ("hf://someone/tok-test", f"hf://someone/tok-test/{TOKENIZER_NAME}"):
        loaded = TextTokenizer.load(spec)
        assert loaded.vocab_size == VOCAB and loaded.path.name == TOKENIZER_NAME
    assert TextTokenizer.load(hf_repo="someone/tok-test").vocab_size == VOCAB
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        TextTokenizer.load("hf://someone/not-there")


def test_encode_decode_round_trip_and_skipped_ids(trained):
    for sentence in SENTENCES[:10]:
        ids = trained.encode(sentence)
        assert all(0 <= t < VOCAB for t in ids)
        assert trained.decode(ids) == sentence
    ids = trained.encode("hello there")
    noisy = [trained.initial_id, trained.pad_id, *ids[:1], trained.epad_id, trained.pad_id, *ids[1:], -1, -2]
    assert trained.decode(noisy) == "hello there"
    assert trained.decode(torch.tensor(noisy)) == "hello there"
    assert trained.decode([trained.pad_id, trained.epad_id, trained.initial_id]) == ""


def test_check_vocabulary(trained):
    trained.check_vocabulary(VOCAB, "tiny-lm")
    with pytest.raises(CheckpointError) as err:
        trained.check_vocabulary(32000, "kyutai/moshiko-pytorch-bf16")
    message = str(err.value)
    assert f"has {VOCAB} pieces" in message and "(text_card)" in message and "32000" in message
    assert str(trained.path) in message and "--tokenizer" in message


def _word_ids(tok: TextTokenizer, word: str) -> list[int]:
    ids = tok.encode(word)
    assert tok.piece(ids[0]).startswith("\u2581"), (word, [tok.piece(i) for i in ids])
    return ids


def test_words_from_stream_gives_words_and_times(trained):
    pad, epad = trained.pad_id, trained.epad_id
    the, giraffe, zoo = (_word_ids(trained, w) for w in ("the", "giraffe", "zoo"))
    assert len(the) == 1 and len(giraffe) > 1, [trained.piece(i) for i in giraffe]
    # frame: 0 "the" at the very start; pads; "giraffe" from frame 4 with an EPAD before it; "zoo" at the end.
    stream = [*the, pad, pad, epad, *giraffe, pad, pad, epad, *zoo]
    giraffe_end = 4 + len(giraffe)
    zoo_start = giraffe_end + 3
    words = trained.words_from_stream(stream)
    assert words == [
        Word("the", 0.0, 1 / 12.5),
        Word("giraffe", 4 / 12.5, giraffe_end / 12.5),
        Word("zoo", zoo_start / 12.5, len(stream) / 12.5),
    ]
    assert trained.words_from_stream(torch.tensor(stream)) == words
    assert trained.stream_text(stream) == "the giraffe zoo"
    assert trained.words_from_stream(stream, frame_rate=25.0)[1].start == pytest.approx(4 / 25.0)


def test_words_from_stream_pads_inside_a_word_and_non_text(trained):
    pad, epad, initial = trained.pad_id, trained.epad_id, trained.initial_id
    giraffe = _word_ids(trained, "giraffe")
    # Tokens pushed to later free frames (NF alignment): the pads between pieces do not end the word.
    stream = [initial, pad, giraffe[0], pad, pad, *giraffe[1:], epad, -1, -2, pad]
    words = trained.words_from_stream(stream)
    assert words == [Word("giraffe", 2 / 12.5, (5 + len(giraffe) - 1) / 12.5)]
    # A stream that starts mid-word: the continuation pieces form a word of their own.
    tail = trained.words_from_stream(giraffe[1:] + [pad] + _word_ids(trained, "zoo"))
    assert [w.text for w in tail] == [trained.decode(giraffe[1:]), "zoo"]
    assert trained.words_from_stream([pad, epad, initial]) == []
    assert trained.stream_text([]) == ""
    with pytest.raises(ValueError, match="1-D"):
        trained.words_from_stream(torch.zeros(2, 3, dtype=torch.long))
