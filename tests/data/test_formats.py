"""moshi-finetune's manifest and alignments formats: what is read, and how each malformed input is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fullduplex.data.formats import (
    LEFT_SPEAKER,
    RIGHT_SPEAKER,
    AlignedWord,
    DataError,
    alignments_path,
    read_alignments,
    read_manifest,
    read_stereo,
    side_words,
    write_alignments,
)
from tests.data.samples import alignments, manifest, mono, stereo


def test_manifest_lines_and_their_problems(tmp_path):
    m = manifest(tmp_path / "train.jsonl", [
        {"path": "a.wav", "duration": 4.0},
        "",
        "{not json",
        {"duration": 3.0},
        {"path": "b.wav", "duration": -1},
        ["a", 1],
        {"path": "/abs/c.wav", "duration": 2, "speakers": ["ann", "bob"]},
        {"path": "d.wav", "duration": 2, "speakers": "ann"},
    ])
    entries, problems = read_manifest(m)
    assert [(e.path, e.duration, e.line, e.speakers) for e in entries] == [
        (tmp_path / "a.wav", 4.0, 1, None), (Path("/abs/c.wav"), 2.0, 7, ("ann", "bob")),
    ]
    assert [(p.line, p.file) for p in problems] == [(3, str(m)), (4, str(m)), (5, str(m)), (6, str(m)), (8, str(m))]
    reasons = [p.reason for p in problems]
    assert "not valid JSON" in reasons[0] and '"path"' in reasons[1] and '"duration"' in reasons[2]
    assert "JSON object" in reasons[3] and '"speakers"' in reasons[4]
    assert str(problems[0]).startswith(f"{m} line 3: ")


def test_manifest_itself_missing_or_a_folder(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        read_manifest(tmp_path)


def test_alignments_round_trip_sorted(tmp_path):
    words = [AlignedWord("there", 1.0, 1.4, LEFT_SPEAKER), AlignedWord("hi", 0.2, 0.5, RIGHT_SPEAKER),
             AlignedWord("hello", 0.2, 0.6, LEFT_SPEAKER)]
    path = write_alignments(tmp_path / "x.json", words)
    data = json.loads(path.read_text())
    assert data == {"alignments": [["hello", [0.2, 0.6], LEFT_SPEAKER], ["hi", [0.2, 0.5], RIGHT_SPEAKER],
                                   ["there", [1.0, 1.4], LEFT_SPEAKER]]}
    back = read_alignments(path, duration=2.0)
    assert [w.text for w in side_words(back, "left")] == ["hello", "there"]
    assert [w.text for w in side_words(back, "right")] == ["hi"]
    other = alignments(tmp_path / "y.json", [("a", 0.0, 0.1, "A"), ("b", 0.2, 0.3, LEFT_SPEAKER)])
    assert [w.text for w in side_words(read_alignments(other), "right")] == ["a"]  # any other label is the right


@pytest.mark.parametrize("words, needle", [
    ([("a", 0.5, 0.7, LEFT_SPEAKER), ("b", 0.2, 0.4, LEFT_SPEAKER)], "word 1 ('b') starts at 0.2 s, before word 0"),
    ([("a", 0.5, 0.7, LEFT_SPEAKER), ("b", 3.1, 3.3, LEFT_SPEAKER)], "word 1 ('b') at [3.1, 3.3] s is past the end"),
    ([("a", 0.5, 3.5, LEFT_SPEAKER)], "word 0 ('a') at [0.5, 3.5] s is past the end"),
    ([("a", 0.5, 0.4, LEFT_SPEAKER)], "word 0 ('a'): times must satisfy 0 <= start <= end"),
    ([("a", -0.1, 0.4, LEFT_SPEAKER)], "word 0 ('a'): times must satisfy"),
])
def test_bad_alignments_name_file_and_word(tmp_path, words, needle):
    path = alignments(tmp_path / "x.json", words)
    with pytest.raises(DataError) as e:
        read_alignments(path, duration=3.0)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_malformed_alignments(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"alignments": [["a", [0.1, 0.2], "SPEAKER_MAIN"], ["b", 0.3, "SPEAKER_MAIN"]]}')
    with pytest.raises(DataError, match="word 1: expected"):
        read_alignments(bad)
    bad.write_text("[1, 2")
    with pytest.raises(DataError, match="not valid JSON"):
        read_alignments(bad)
    bad.write_text('{"words": []}')
    with pytest.raises(DataError, match="expected"):
        read_alignments(bad)
    with pytest.raises(DataError, match="alignments not found"):
        read_alignments(tmp_path / "none.json")


def test_alignments_path(tmp_path):
    audio = tmp_path / "calls" / "a" / "x.wav"
    assert alignments_path(audio) == tmp_path / "calls" / "a" / "x.json"
    assert alignments_path(audio, tmp_path / "calls", tmp_path / "out") == tmp_path / "out" / "a" / "x.json"
    assert alignments_path(audio, tmp_path / "elsewhere", tmp_path / "out") == tmp_path / "out" / "x.json"


def test_read_stereo(tmp_path):
    wav = read_stereo(stereo(tmp_path / "s.wav", 2.0, 0.0, 1.0, rate=16000), 24000)
    assert wav.shape == (2, 48000)
    assert wav[0, :12000].abs().max() > 0.05 and wav[1, :12000].abs().max() == 0  # right starts at 1 s
    with pytest.raises(DataError, match="has 1 channel; expected stereo"):
        read_stereo(mono(tmp_path / "m.wav", 1.0), 24000)
    with pytest.raises(DataError, match="audio file not found"):
        read_stereo(tmp_path / "none.wav", 24000)
