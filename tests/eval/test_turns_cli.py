"""``fullduplex eval turns`` end to end: a report folder from stereo files, bad files reported one by one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fullduplex.cli.main import main
from fullduplex.eval import plots
from fullduplex.eval.dialogue import analyse_file
from fullduplex.eval.vad import VadSettings
from tests.eval.conftest import write_wav
from tests.helpers import ASSETS, assert_one_line_error

PNG = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["eval", "turns", "--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_of_one_conversation(tmp_path, capsys, dialogue):
    out = tmp_path / "report"
    code, stdout, err = run(capsys, dialogue, "--output", out)
    assert code == 0 and err == ""
    names = sorted(p.name for p in out.iterdir())
    assert names == ["histograms.png", "report.json", "report.md", "timeline-dialogue.png"]
    assert all(str(out / n) in stdout for n in names)
    for png in ("histograms.png", "timeline-dialogue.png"):
        assert (out / png).read_bytes().startswith(PNG) and (out / png).stat().st_size > 5000
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["vad"]["method"] == "silero" and report["settings"]["vad"]["threshold"] == 0.5
    assert report["settings"]["min_silence"] == 0.2 and report["errors"] == {}
    stats = report["files"][str(dialogue)]
    for kind in ("ipu", "pause", "gap", "overlap"):
        assert {"count", "per_min", "sec_per_min", "durations"} <= set(stats[kind])
        assert report["pooled"][kind]["count"] == stats[kind]["count"]
    assert [stats[k]["count"] for k in ("ipu", "pause", "gap", "overlap")] == [4, 1, 1, 1]
    # left 0.5-2.66, right 3.0-5.16 (gap ~0.34 s), left 4.8-6.96 (overlap ~0.36 s), left 7.5-9.66 (pause ~0.54 s)
    assert stats["gap"]["durations"][0] == pytest.approx(0.34, abs=0.1)
    assert stats["overlap"]["durations"][0] == pytest.approx(0.36, abs=0.1)
    assert stats["pause"]["durations"][0] == pytest.approx(0.54, abs=0.12)
    assert stats["gap"]["per_min"] == pytest.approx(6.0) and stats["duration"] == pytest.approx(10.0)
    assert [s["turns"] for s in stats["speakers"]] == [2, 1]
    assert stats["intervals"]["gap"] == [list(g) for g in analyse_file(dialogue, VadSettings())[0].gaps]
    assert report["pooled"]["files"] == 1
    md = (out / "report.md").read_text()
    assert "| dialogue.wav |" in md and "**pooled**" in md and "silero" in md and "timeline-dialogue.png" in md


def test_folder_with_bad_files_evaluates_the_rest(tmp_path, capsys, dialogue):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.wav").write_bytes(dialogue.read_bytes())
    (corpus / "mono.wav").write_bytes((ASSETS / "speech_en.wav").read_bytes())
    write_wav(corpus / "silent.wav", np.zeros((2, 24000)))
    (corpus / "broken.wav").write_bytes(b"RIFF not really a wave file")
    write_wav(corpus / "quiet.wav", np.full((2, 24000), 1e-4), rate=8000)  # readable, any rate, but no speech
    (corpus / "notes.txt").write_text("not audio: ignored")
    out = tmp_path / "out"
    code, _, err = run(capsys, corpus, "--vad", "webrtc", "--aggressiveness", "3", "--output", out)
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("warning: skipped ") for line in lines), err
    for name, needle in (("mono", "is mono"), ("silent", "silent"), ("broken", "could not read"),
                         ("quiet", "no speech")):
        assert any(f"{name}.wav" in line and needle in line for line in lines), (name, err)
    report = json.loads((out / "report.json").read_text())
    assert list(report["files"]) == [str(corpus / "good.wav")] and len(report["errors"]) == 4
    assert report["settings"]["vad"] == {"method": "webrtc", "sample_rate": 16000, "frame_ms": 30.0,
                                         "aggressiveness": 3, "package": "webrtcvad-wheels"}
    assert "## Not evaluated" in (out / "report.md").read_text()
    # Again into the same folder: the previous report is replaced only with --overwrite; other files stay.
    (out / "notes.txt").write_text("mine")
    first = (out / "report.json").read_bytes()
    code, _, err = run(capsys, corpus / "good.wav", "--vad", "webrtc", "--output", out)
    assert_one_line_error(code, err, "report.json already exists", "--overwrite")
    assert (out / "report.json").read_bytes() == first
    code, _, err = run(capsys, corpus / "good.wav", "--vad", "webrtc", "--output", out, "--overwrite")
    assert code == 0 and json.loads((out / "report.json").read_text())["errors"] == {}
    assert (out / "notes.txt").read_text() == "mine"


def test_nothing_evaluated_is_one_error_and_no_report(tmp_path, capsys):
    mono = tmp_path / "mono.wav"
    mono.write_bytes((ASSETS / "speech_en.wav").read_bytes())
    code, out, err = run(capsys, mono, tmp_path / "missing.wav", "--output", tmp_path / "out")
    lines = err.strip().splitlines()
    assert lines[:2] == [f"warning: skipped {mono}: {mono} is mono: turn-taking needs a stereo file with one "
                         "speaker per channel", f"warning: skipped {tmp_path / 'missing.wav'}: audio file not found: "
                         f"{tmp_path / 'missing.wav'}"]
    assert_one_line_error(code, "\n".join(lines[2:]), "no file could be evaluated", "2 failed")
    assert out == "" and not (tmp_path / "out").exists()


def test_a_failed_plot_leaves_no_report(tmp_path, capsys, dialogue, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plots, "histograms", broken)
    code, _, err = run(capsys, dialogue, "--output", tmp_path / "out")
    assert_one_line_error(code, err, "disk full")
    assert list(tmp_path.iterdir()) == []


def test_usage_errors(tmp_path, capsys, dialogue):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(*run(capsys, dialogue, "--output", tmp_path / "file")[::2], "is a file")
    assert_one_line_error(*run(capsys, dialogue, "--output", tmp_path / "no" / "out")[::2], "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run(capsys, tmp_path / "empty", "--output", tmp_path / "o")[::2], "no audio files")
    code, _, err = run(capsys, dialogue, "--output", tmp_path / "o", "--min-silence", "-1")
    assert code == 2 and "must be a number >= 0" in err
    code, _, err = run(capsys, dialogue, "--output", tmp_path / "o", "--vad", "silero", "--threshold", "2")
    assert_one_line_error(code, err, "between 0 and 1")


def test_help_has_examples(capsys):
    assert main(["eval", "turns", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--min-silence" in text and "--vad" in text
