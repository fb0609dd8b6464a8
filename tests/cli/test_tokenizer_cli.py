"""``fullduplex tokenizer train`` / ``report`` on tiny corpora in Latin, Devanagari and Japanese (no spaces)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fullduplex.cli.main import main
from fullduplex.text import TextTokenizer
from tests.helpers import assert_one_line_error
from tests.text.corpora import ENGLISH, HINDI, JAPANESE

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("lines", "vocab", "model_type", "spaced"),
    [(ENGLISH, 90, "bpe", True), (HINDI, 56, "unigram", True), (JAPANESE, 80, "bpe", False)],
    ids=["english", "hindi", "japanese"],
)
def test_train_any_script(capsys, tmp_path, lines, vocab, model_type, spaced):
    corpus = write(tmp_path / "corpus.txt", lines)
    code, out, err = run(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", vocab, "--output",
                         tmp_path / "tok", "--model-type", model_type, "--threads", 1, "--json")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.model", "tokenizer.vocab"]
    tok = TextTokenizer.load(tmp_path / "tok" / "tokenizer.model")
    assert tok.vocab_size == vocab and [tok.piece(i) for i in range(4)] == SPECIALS
    vocab_file = (tmp_path / "tok" / "tokenizer.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab_file) == vocab and [line.split("\t")[0] for line in vocab_file[:4]] == SPECIALS
    for line in lines:
        ids = tok.encode(line)
        assert tok.decode(ids) == line
        assert tok.pad_id not in ids and tok.epad_id not in ids  # text never looks like PAD/EPAD
    report = json.loads(out)
    chars = sum(len(line.replace(" ", "")) for line in lines)
    words = sum(len(line.split()) for line in lines)
    tokens = sum(len(tok.encode(w)) for line in lines for w in line.split())
    assert (report["lines"], report["characters"], report["words"], report["tokens"]) == (len(lines), chars, words, tokens)
    assert report["character_coverage"] == 1.0 and report["word_coverage"] == 1.0
    assert report["tokens_per_character"] == pytest.approx(tokens / chars)
    assert report["tokens_per_word"] == pytest.approx(tokens / words)
    assert report["spaced"] is spaced and report["vocab_size"] == vocab


def test_report_of_a_foreign_tokenizer_and_the_unspaced_note(capsys, tmp_path):
    ja = write(tmp_path / "ja.txt", JAPANESE)
    hi = write(tmp_path / "hi.txt", HINDI)
    assert run(capsys, "tokenizer", "train", "--corpus", ja, "--vocab-size", 78, "-o", tmp_path / "ja", "--threads", 1)[0] == 0
    code, out, _ = run(capsys, "tokenizer", "report", "--tokenizer", tmp_path / "ja" / "tokenizer.model", "--corpus", hi, "--json")
    report = json.loads(out)
    assert code == 0 and report["character_coverage"] == 0.0 and report["word_coverage"] == 0.0
    assert report["uncovered"][0][0] == "ा"  # the most frequent Devanagari sign of the corpus
    code, out, _ = run(capsys, "tokenizer", "report", "--tokenizer", tmp_path / "ja" / "tokenizer.model", "--corpus", ja,
                       "--max-lines", 3)
    assert code == 0 and "measured on 3 lines" in out and "written without spaces" in out and "tokens per character" in out


def test_several_files_and_byte_fallback(capsys, tmp_path):
    files = [write(tmp_path / "en.txt", ENGLISH), write(tmp_path / "hi.txt", HINDI)]
    code, out, err = run(capsys, "tokenizer", "train", "--corpus", *files, "--vocab-size", 330, "-o", tmp_path / "tok",
                         "--byte-fallback", "--threads", 1)
    assert code == 0, err
    tok = TextTokenizer.load(tmp_path / "tok" / "tokenizer.model")
    ids = tok.encode("नमस्ते hello 東京")  # kanji never seen: UTF-8 byte pieces, not <unk> (= EPAD)
    assert tok.epad_id not in ids and any(tok.processor.is_byte(i) for i in ids)
    assert tok.decode(ids) == "नमस्ते hello 東京"


def test_bad_input_is_one_line_and_leaves_nothing(capsys, tmp_path):
    corpus = write(tmp_path / "en.txt", ENGLISH)
    out = tmp_path / "tok"
    code, _, err = run(capsys, "tokenizer", "train", "--corpus", tmp_path / "missing.txt", "--vocab-size", 50, "-o", out)
    assert_one_line_error(code, err, "corpus file not found", "missing.txt")
    code, _, err = run(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 5000, "-o", out, "--threads", 1)
    assert_one_line_error(code, err, "Vocabulary size too high", "en.txt")
    assert not out.exists()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    code, _, err = run(capsys, "tokenizer", "train", "--corpus", tmp_path / "latin1.txt", "--vocab-size", 50, "-o", out)
    assert_one_line_error(code, err, "latin1.txt is not UTF-8")
    (tmp_path / "empty.txt").write_text("\n\n")
    code, _, err = run(capsys, "tokenizer", "train", "--corpus", tmp_path / "empty.txt", "--vocab-size", 50, "-o", out)
    assert_one_line_error(code, err, "empty.txt is empty")
    assert run(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 60, "-o", out, "--threads", 1)[0] == 0
    first = (out / "tokenizer.model").read_bytes()
    code, _, err = run(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 70, "-o", out, "--threads", 1)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert (out / "tokenizer.model").read_bytes() == first
    code, _, err = run(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 70, "-o", out, "--threads", 1,
                       "--force")  # the old name of --overwrite
    assert code == 0 and TextTokenizer.load(out / "tokenizer.model").vocab_size == 70
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.model", "tokenizer.vocab"]  # no temporary left
    code, _, err = run(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 60, "-o", corpus)
    assert_one_line_error(code, err, "is a file")


def test_help_has_examples(capsys):
    for argv in (["tokenizer", "train", "--help"], ["tokenizer", "report", "--help"]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "examples:" in out and "fullduplex tokenizer" in out
