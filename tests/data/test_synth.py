"""``data synth``: espeak-ng dialogues in moshi-finetune's layout. The files must read back with the data
readers, every word's [start, end] must be exactly its audio on its speaker's channel (silence around it), the
scripted pauses, overlaps and backchannels must be audible where the script puts them, the same seed must give
the same bytes, and ``data prepare`` must take the corpus as it is."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.data.dialogue_templates import TEMPLATES
from fullduplex.data.dialogues import fill, tokens
from fullduplex.data.formats import alignments_path, read_alignments, read_manifest, read_stereo
from fullduplex.data.synth import (
    DEFAULT_VOICES,
    SILENCE_LEVEL,
    SynthConfig,
    WordAudio,
    synthesize,
)
from fullduplex.text import train_tokenizer
from tests.helpers import assert_one_line_error, randomize_

SR = 24000
LANGS = ("en", "hi", "ja")
QUANTUM = 1.5 / 32767  # 16-bit rounding of a sample written to the WAV file
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")


def synth_cli(capsys, lang: str, out: Path, *extra: str, dialogues: int = 2) -> tuple[int, str, str]:
    code = main(["data", "synth", "--lang", lang, "--dialogues", str(dialogues), "--output", str(out), "-q", *extra])
    return code, *capsys.readouterr()


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Two dialogues per language (seed 3), made by the command; language → output folder."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for lang in LANGS:
        assert main(["data", "synth", "--lang", lang, "--dialogues", "2", "--output", str(root / lang),
                     "--seed", "3", "-q"]) == 0
        out[lang] = root / lang
    return out


def read_corpus(folder: Path) -> list[tuple[np.ndarray, list]]:
    """(audio [2, S] at 24 kHz, words) per manifest line, read with the data pipeline's own readers."""
    entries, problems = read_manifest(folder / "manifest.jsonl")
    assert problems == [] and len(entries) == 2
    out = []
    for entry in entries:
        audio = read_stereo(entry.path, SR).numpy()
        assert abs(audio.shape[1] / SR - entry.duration) < 1e-3
        words = read_alignments(alignments_path(entry.path), duration=entry.duration)
        out.append((audio, words))
    return out


def test_templates_fill_and_give_espeak_readable_words() -> None:
    import random

    rng = random.Random(0)
    for lang, t in TEMPLATES.items():
        lines = [*(line for g in t.greetings for line in g), *(line for c in t.closings for line in c),
                 *(x.question for x in t.exchanges), *(a for x in t.exchanges for a in x.answers), *t.reactions,
                 *t.backchannels]
        assert len(t.exchanges) >= 20 and len(lines) > 100
        for line in lines:
            for _ in range(3):
                for token in tokens(fill(line, t.slots, rng)):
                    assert token.text and token.spoken and not re.search(r"[<>|{}]", token.text + token.spoken), line
                    if lang == "ja":  # espeak-ng's ja voice says "Chinese letter" for a kanji: kana only
                        assert not re.search(r"[\u4e00-\u9fff]", token.spoken), (line, token)
                    else:
                        assert token.spoken == token.text


@needs_espeak
@pytest.mark.parametrize("lang", LANGS)
def test_corpus_reads_back_with_the_data_readers(corpora, lang) -> None:
    folder = corpora[lang]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{lang}-0000{i}.{ext}" for i in range(2) for ext in ("wav", "json")]
        + ["manifest.jsonl", "synth.json", "transcripts.txt"])
    lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert all(line["speakers"] == [f"espeak-ng:{v.name}" for v in DEFAULT_VOICES[lang]] for line in lines)
    info = json.loads((folder / "synth.json").read_text())
    assert info["language"] == lang and info["dialogues"] == 2 and info["seed"] == 3
    total = 0
    for audio, words in read_corpus(folder):
        assert audio.shape[0] == 2 and len(words) > 20
        assert {w.left for w in words} == {True, False}  # both speakers talk
        total += len(words)
    assert info["words"] == total
    transcripts = (folder / "transcripts.txt").read_text(encoding="utf-8").splitlines()
    assert len(transcripts) >= 8
    if lang == "ja":
        assert not any(" " in line for line in transcripts)


@needs_espeak
@pytest.mark.parametrize("lang", LANGS)
def test_word_timestamps_are_exact_to_the_sample(corpora, lang) -> None:
    step = SynthConfig().step
    for audio, words in read_corpus(corpora[lang]):
        for channel in (0, 1):
            x = np.abs(audio[channel])
            mine = [w for w in words if w.left == (channel == 0)]
            spans = [(round(w.start * SR), round(w.end * SR)) for w in mine]
            for w, (s, e) in zip(mine, spans, strict=True):
                assert abs(w.start * SR - s) < 1e-6 and abs(w.end * SR - e) < 1e-6  # whole samples
                assert x[s] >= SILENCE_LEVEL - QUANTUM, (w, x[s])  # the word begins at its first loud sample
                assert x[e - step : e].max() >= SILENCE_LEVEL - QUANTUM  # ... and ends within a step of its last
                assert np.sqrt((audio[channel, s:e] ** 2).mean()) > 0.02, w  # speech inside
                assert x[s - 1] == 0 and x[e] == 0, w  # silence just outside
            for (_, e), (s, _) in zip(spans[:-1], spans[1:], strict=True):
                assert s > e and x[e:s].max() == 0  # the gaps between a speaker's words are silent


@needs_espeak
@pytest.mark.parametrize("lang", LANGS)
def test_pauses_overlaps_and_backchannels_are_where_the_script_puts_them(corpora, lang) -> None:
    config = SynthConfig()
    cache = WordAudio(SR, config.step)
    on_disk = read_corpus(corpora[lang])
    for index, (audio, words) in enumerate(on_disk):
        dialogue = synthesize(lang, index, 3, DEFAULT_VOICES[lang], config, cache)
        # the library's dialogue is the file's (up to 16-bit rounding): its events describe the file
        assert np.abs(dialogue.audio - audio).max() <= QUANTUM
        assert [w.text for w in dialogue.words] == [w.text for w in words]
        script, events = dialogue.script, dialogue.events
        kinds = [e.kind for e in events]
        assert kinds.count("pause") == sum(t.pause_after is not None for t in script.turns) >= 1
        assert 1 <= kinds.count("overlap") <= sum(t.overlap for t in script.turns)
        assert 1 <= kinds.count("backchannel") <= sum(bool(t.backchannel) for t in script.turns)
        loud = np.abs(dialogue.audio) >= SILENCE_LEVEL
        for e in events:
            s, t = round(e.start * SR), round(e.end * SR)
            if e.kind == "pause":
                assert e.end - e.start >= config.pause[0] - 1e-9
                assert not loud[e.channel, s:t].any()  # silence inside the turn...
                before = [w for w in words if w.left == (e.channel == 0) and abs(w.end - e.start) < 1e-6]
                after = [w for w in words if w.left == (e.channel == 0) and abs(w.start - e.end) < 1e-6]
                assert before and after  # ...between two words of the same speaker
            else:  # both channels active at once inside the event
                assert (loud[0, s:t] & loud[1, s:t]).any(), e
            if e.kind == "backchannel":
                said = {w.text for w in words if w.left == (e.channel == 0) and e.start <= w.start < e.end}
                backchannels = {" ".join(tok.text for tok in t.backchannel) for t in script.turns if t.backchannel}
                assert any(set(b.split()) <= said for b in backchannels), (said, backchannels)


@needs_espeak
def test_same_seed_same_bytes_other_seed_other_dialogues(corpora, tmp_path, capsys) -> None:
    assert synth_cli(capsys, "en", tmp_path / "again", "--seed", "3")[0] == 0
    for path in corpora["en"].iterdir():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    assert synth_cli(capsys, "en", tmp_path / "other", "--seed", "4", dialogues=1)[0] == 0
    assert (tmp_path / "other" / "en-00000.json").read_bytes() != (corpora["en"] / "en-00000.json").read_bytes()
    assert synth_cli(capsys, "en", tmp_path / "other", "--seed", "3", "--overwrite", dialogues=1)[0] == 0
    assert (tmp_path / "other" / "en-00000.json").read_bytes() == (corpora["en"] / "en-00000.json").read_bytes()


@needs_espeak
@pytest.mark.parametrize(("lang", "vocab", "extra"), [("en", 200, ()), ("ja", 300, ("--no-spaces",))])
def test_prepare_takes_the_corpus_without_dropping_words(corpora, tmp_path, capsys, lang, vocab, extra) -> None:
    torch.manual_seed(0)
    mimi = fd.save_mimi(randomize_(fd.Mimi(mimi_preset("tiny")).eval()), tmp_path / "mimi.safetensors")
    lines = (corpora[lang] / "transcripts.txt").read_text(encoding="utf-8").splitlines()
    tok = train_tokenizer(lines * 5, tmp_path / "tok", vocab, model_type="bpe",
                          split_by_whitespace=lang != "ja").path
    code = main(["data", "prepare", str(corpora[lang] / "manifest.jsonl"), "--mimi-weight", str(mimi),
                 "--mimi-config", "tiny", "--tokenizer", str(tok), "--output", str(tmp_path / "shards"),
                 "--both-sides", "--device", "cpu", "-q", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "shards" / "report.json").read_text())
    words = sum(len(w) for _, w in read_corpus(corpora[lang]))
    assert report["conversations"] == 2 and report["items"] == 4 and report["skipped"] == 0
    assert report["speakers"] == 2
    assert report["text"]["words"] == words and report["text"]["words_dropped"] == 0
    assert report["text"]["words_outside"] == 0 and report["text"]["words_truncated"] == 0


@needs_espeak
def test_bad_input_is_one_line_and_writes_nothing(corpora, tmp_path, capsys, monkeypatch) -> None:
    code, _, err = synth_cli(capsys, "hi", tmp_path / "a", "--voices", "en-us,hi")
    assert_one_line_error(code, err, "no voice 'en-us' for language 'hi'", "--voices=hi")
    code, _, err = synth_cli(capsys, "ja", tmp_path / "b", "--voices", "ja+nosuch,ja")
    assert_one_line_error(code, err, "variant 'nosuch'")
    code, _, err = synth_cli(capsys, "en", tmp_path / "c", "--voices", "en-us")
    assert_one_line_error(code, err, "LEFT,RIGHT")
    code, _, err = synth_cli(capsys, "en", corpora["en"])
    assert_one_line_error(code, err, "previous `fullduplex data synth` output", "--overwrite")
    assert main(["data", "synth", "--lang", "fr", "--dialogues", "2", "--output", str(tmp_path / "d")]) == 2
    assert "invalid choice: 'fr'" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, _, err = synth_cli(capsys, "en", tmp_path / "e")
    assert_one_line_error(code, err, "espeak-ng not found", "apt-get install espeak-ng")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no leftover temporary folder


def test_help_explains_itself(capsys) -> None:
    assert main(["data", "synth", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--lang" in out and "--voices" in out and "examples:" in out and "apt-get install espeak-ng" in out
