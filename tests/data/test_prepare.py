"""``data prepare`` end to end: a tiny random Mimi, a tokenizer trained on a few sentences, and stereo files built
from the English sample with hand-written alignments. The shards must hold exactly Mimi's codes of each channel
and the aligned text of the chosen speaker; every bad conversation must be reported with its manifest line while
the others are still prepared and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.data.align import AlignStats, align_words
from fullduplex.data.formats import LEFT_SPEAKER, RIGHT_SPEAKER, read_alignments, read_stereo, side_words
from fullduplex.data.shards import ShardDataset
from fullduplex.text import TextTokenizer, train_tokenizer
from tests.data.samples import alignments, manifest, mono, stereo
from tests.helpers import assert_one_line_error, randomize_

MAIN, OTHER = LEFT_SPEAKER, RIGHT_SPEAKER
SENTENCES = ["hello there how are you", "i am fine thank you", "what a lovely morning it is",
             "see you later my friend", "good night and sleep well"] * 6


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    mimi = fd.save_mimi(randomize_(fd.Mimi(mimi_preset("tiny")).eval()), root / "mimi.safetensors")
    tok = train_tokenizer(SENTENCES, root / "tok", 64, model_type="bpe").path
    return {"mimi": mimi, "tokenizer": tok}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two good conversations and six bad ones; returns the manifest."""
    root = tmp_path_factory.mktemp("corpus")
    stereo(root / "a.wav", 6.0, 0.5, 3.2)
    alignments(root / "a.json", [
        ("hello", 0.52, 0.9, MAIN), ("there", 0.9, 1.3, MAIN), ("how", 1.5, 1.7, MAIN), ("are", 1.7, 1.9, MAIN),
        ("you", 1.9, 2.3, MAIN), ("i", 3.25, 3.3, OTHER), ("am", 3.3, 3.5, OTHER), ("fine", 3.5, 4.0, OTHER),
    ])
    (root / "sub").mkdir()
    stereo(root / "sub" / "b.wav", 4.0, 0.0, 1.5)
    alignments(root / "sub" / "b.json", [  # "good" and "night" start in the same frame: a collision
        ("good", 0.1, 0.3, MAIN), ("night", 0.13, 0.5, MAIN), ("see", 1.6, 1.8, OTHER), ("you", 1.8, 2.0, OTHER),
        ("later", 2.0, 2.5, OTHER),
    ])
    mono(root / "c.wav", 2.0)
    alignments(root / "c.json", [("hello", 0.1, 0.3, MAIN)])
    stereo(root / "e.wav", 2.0, 0.0, 0.0)
    alignments(root / "e.json", [("hello", 0.8, 0.9, MAIN), ("there", 0.2, 0.4, MAIN)])
    stereo(root / "f.wav", 2.0, 0.0, 0.0)
    alignments(root / "f.json", [("hello", 0.1, 0.3, MAIN), ("there", 2.5, 2.9, OTHER)])
    stereo(root / "g.wav", 2.0, 0.0, 0.0)
    return manifest(root / "train.jsonl", [
        {"path": "a.wav", "duration": 6.0, "speakers": ["ann", "bob"]},  # line 1
        {"path": "c.wav", "duration": 2.0},  # 2: mono
        {"path": "missing.wav", "duration": 2.0},  # 3: no such file
        '{"path": "x.wav", "duration": ',  # 4: malformed JSON
        {"path": "e.wav", "duration": 2.0},  # 5: alignments out of order
        {"path": "f.wav", "duration": 2.0},  # 6: a word past the end of the audio
        {"path": "g.wav", "duration": 2.0},  # 7: no alignments
        {"path": "sub/b.wav", "duration": 4.0, "speakers": ["bob", "cat"]},  # 8
    ])


def prepare_cli(capsys, models, manifest_path, out, *extra):
    code = main(["data", "prepare", str(manifest_path), "--mimi-weight", str(models["mimi"]), "--mimi-config", "tiny",
                 "--tokenizer", str(models["tokenizer"]), "--output", str(out), "--device", "cpu", "-q", *extra])
    return code, *capsys.readouterr()


def expected_item(models, wav_path: Path, side: str, policy: str = "drop") -> tuple[torch.Tensor, AlignStats]:
    """The [17, T] item computed here step by step: batch Mimi encode of each channel, text by align_words."""
    mimi = fd.load_mimi(models["mimi"], config=mimi_preset("tiny"), num_codebooks=8)
    tok = TextTokenizer.load(models["tokenizer"])
    wav = read_stereo(wav_path, 24000)
    with torch.no_grad():
        codes = mimi.encode(wav[:, None])  # [2, 8, T]
    own, other = (0, 1) if side == "left" else (1, 0)
    words = side_words(read_alignments(wav_path.with_suffix(".json")), side)
    text = align_words(words, tok, codes.shape[-1], policy)
    return torch.cat([text.tokens[None], codes[own], codes[other]]), text.stats


def test_prepare_both_sides_with_bad_inputs(tmp_path, capsys, models, corpus):
    out = tmp_path / "shards"
    code, stdout, stderr = prepare_cli(capsys, models, corpus, out, "--both-sides", "--shard-size", "3")
    assert code == 0, stderr

    # each bad conversation is named with its manifest line and why; the good ones are prepared
    warnings = {int(line.split(" line ")[1].split(":")[0]): line for line in stderr.splitlines()}
    assert sorted(warnings) == [2, 3, 4, 5, 6, 7]
    assert all(line.startswith(f"warning: skipped {corpus} line ") for line in warnings.values())
    assert "1 channel; expected stereo" in warnings[2]
    assert "audio file not found" in warnings[3] and "missing.wav" in warnings[3]
    assert "not valid JSON" in warnings[4]
    assert "e.json: word 1 ('there') starts at 0.2 s, before word 0" in warnings[5]
    assert "f.json: word 1 ('there') at [2.5, 2.9] s is past the end of the audio" in warnings[6]
    assert "alignments not found" in warnings[7] and "g.json" in warnings[7]
    assert "2 conversations" in stdout and "3 speakers" in stdout and "skipped 6" in stdout

    data = ShardDataset(out)
    # --shard-size 3 with both sides: one conversation (2 items) per shard, named by its place among the manifest's
    # 7 usable lines; the groups whose conversations were all skipped have no file
    assert [f.name for f in data.files] == ["shard-00000.safetensors", "shard-00006.safetensors"]
    assert len(data) == 4 and data.frames == [75, 75, 50, 50]  # ceil(6 s / 80 ms), ceil(4 s / 80 ms)
    total = AlignStats()
    for j, (wav, side, speakers) in enumerate([
        (corpus.parent / "a.wav", "left", ["ann", "bob"]), (corpus.parent / "a.wav", "right", ["bob", "ann"]),
        (corpus.parent / "sub" / "b.wav", "left", ["bob", "cat"]), (corpus.parent / "sub" / "b.wav", "right", ["cat", "bob"]),
    ]):
        item = data[j]
        codes, stats = expected_item(models, wav, side)
        total = total + stats
        assert torch.equal(item["codes"], codes), (j, side)
        info = item["info"]
        assert (info["source"], info["side"], info["frames"], info["speakers"]) == (str(wav), side, codes.shape[1], speakers)
    # the text is the chosen speaker's own words, at their times
    tok = TextTokenizer.load(models["tokenizer"])
    assert tok.stream_text(data[0]["codes"][0]) == "hello there how are you"
    assert tok.stream_text(data[1]["codes"][0]) == "i am fine"
    assert [round(w.start, 2) for w in tok.words_from_stream(data[1]["codes"][0])] == [3.2, 3.28, 3.44]
    assert tok.stream_text(data[2]["codes"][0]) == "good"  # "night" collided and was dropped
    # the right-side item is the left-side item with the speakers swapped
    assert torch.equal(data[1]["codes"][1:9], data[0]["codes"][9:]) and torch.equal(data[1]["codes"][9:], data[0]["codes"][1:9])

    report = json.loads((out / "report.json").read_text())
    assert report["conversations"] == 2 and report["items"] == 4 and report["speakers"] == 3
    assert report["hours"] == pytest.approx(10 / 3600, abs=1e-6)
    assert report["text"] == total.to_dict()
    assert report["text"]["words_dropped"] == 1 and report["text"]["tokens_dropped"] == len(tok.encode("night"))
    assert report["text"]["pad_ratio"] == pytest.approx(1 - report["text"]["tokens_placed"] / 250, abs=1e-6)
    assert report["skipped"] == 6 and [p["line"] for p in report["skipped_files"]] == [2, 3, 4, 5, 6, 7]
    index = json.loads((out / "index.json").read_text())
    assert (index["items"], index["frames"], index["conversations"]) == (4, 250, 2)
    assert [s["items"] for s in index["shards"]] == [2, 2]
    assert data.index == index
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "report.json", "shard-00000.safetensors",
                                                     "shard-00006.safetensors"]
    assert not list(tmp_path.glob(".*partial"))


def test_shift_policy_and_alignments_folder(tmp_path, capsys, models, corpus):
    # alignments kept in their own folder, at the audio's relative path under the manifest's folder
    folder = tmp_path / "aligned"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "b.json").write_text((corpus.parent / "sub" / "b.json").read_text())
    m = manifest(tmp_path / "b.jsonl", [{"path": str(corpus.parent / "sub" / "b.wav"), "duration": 4.0}])
    out = tmp_path / "shards"
    code, stdout, stderr = prepare_cli(capsys, models, m, out, "--policy", "shift", "--alignments", str(folder))
    # the manifest holds an absolute path outside its folder: the alignments are looked up by name
    assert code == 2 and "b.json" in stderr
    (folder / "b.json").write_text((corpus.parent / "sub" / "b.json").read_text())
    code, stdout, stderr = prepare_cli(capsys, models, m, out, "--policy", "shift", "--alignments", str(folder))
    assert code == 0, stderr
    item = ShardDataset(out)[0]
    codes, stats = expected_item(models, corpus.parent / "sub" / "b.wav", "left", "shift")
    assert torch.equal(item["codes"], codes)
    tok = TextTokenizer.load(models["tokenizer"])
    assert tok.stream_text(item["codes"][0]) == "good night"  # shifted, not dropped
    report = json.loads((out / "report.json").read_text())
    assert (report["text"]["words_shifted"], report["text"]["words_dropped"]) == (1, 0) and stats.words_shifted == 1
    assert report["speakers"] is None and "speakers not named" in stdout


def test_nothing_usable_or_output_taken(tmp_path, capsys, models, corpus):
    bad = manifest(tmp_path / "bad.jsonl", [{"path": str(corpus.parent / "c.wav"), "duration": 2.0}, "nope"])
    out = tmp_path / "shards"
    code, _, err = prepare_cli(capsys, models, bad, out)
    assert_one_line_error(code, err, "no conversation could be prepared", "2 skipped", "line 1")
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
    out.mkdir()
    (out / "old.txt").write_text("x")
    for extra in ((), ("--overwrite",)):  # a user's file: refused, and kept, even with --overwrite
        code, _, err = prepare_cli(capsys, models, corpus, out, *extra)
        assert_one_line_error(code, err, "not a previous `fullduplex data prepare` output", "'old.txt'",
                              "nothing was deleted")
        assert [p.name for p in out.iterdir()] == ["old.txt"]
    (out / "old.txt").unlink()
    assert prepare_cli(capsys, models, corpus, out)[0] == 0
    code, _, err = prepare_cli(capsys, models, corpus, out)
    assert_one_line_error(code, err, "previous `fullduplex data prepare` output", "--overwrite")
    assert prepare_cli(capsys, models, corpus, out, "--overwrite", "--shard-size", "1")[0] == 0
    index = json.loads((out / "index.json").read_text())
    assert len(index["shards"]) == index["items"] > 1  # the second run's shards, one item each
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.json", "report.json", *(s["file"] for s in index["shards"])])
    code, _, err = prepare_cli(capsys, models, corpus, tmp_path / "new", "--tokenizer", str(tmp_path / "none.model"))
    assert_one_line_error(code, err, "none.model")
