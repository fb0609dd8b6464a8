"""``data annotate`` with a fake transcriber that "hears" speech by its energy, on stereo files built from the
English sample placed at known times: each channel must be transcribed on its own, at 16 kHz, and its words
tagged with that channel's speaker; finished files are skipped; a bad file is reported and the rest go on."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fullduplex.cli.main import main
from fullduplex.data.annotate import SAMPLE_RATE, annotate, plan
from fullduplex.data.formats import LEFT_SPEAKER, RIGHT_SPEAKER, read_alignments
from fullduplex.errors import FullduplexError
from fullduplex.text import Word
from tests.data.samples import manifest, mono, stereo
from tests.helpers import assert_one_line_error

BLOCK = 0.1  # seconds per energy block


class EnergyTranscriber:
    """One word per run of loud 0.1 s blocks, named by its order: ``w0 w1 ...`` (with a leading space, as
    Whisper gives them). Records each call's sample count and language."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str | None]] = []

    def transcribe(self, audio: np.ndarray, language: str | None) -> list[Word]:
        assert audio.dtype == np.float32 and audio.ndim == 1
        self.calls.append((audio.shape[0], language))
        n = int(BLOCK * SAMPLE_RATE)
        loud = [float(np.sqrt(np.mean(audio[i : i + n] ** 2))) > 0.01 for i in range(0, audio.shape[0], n)]
        words, start = [], None
        for i, on in enumerate(loud + [False]):
            if on and start is None:
                start = i
            elif not on and start is not None:
                words.append(Word(f" w{len(words)}", start * BLOCK, i * BLOCK))
                start = None
        return words[::-1]  # in no particular order: annotate sorts


def sample_span() -> tuple[float, float]:
    """Where the fake hears speech in the sample alone (seconds): first start, last end."""
    from fullduplex.codec.audio import resample
    from tests.helpers import speech

    words = EnergyTranscriber().transcribe(resample(speech()[0, 0], 24000, SAMPLE_RATE).numpy(), None)
    return min(w.start for w in words), max(w.end for w in words)


def test_each_channel_transcribed_and_tagged(tmp_path):
    audio = tmp_path / "calls"
    stereo(audio / "a.wav", 7.0, 0.5, 3.5, rate=44100)
    stereo(audio / "sub" / "b.wav", 4.0, None, 1.0)
    fake = EnergyTranscriber()
    tasks, problems = plan(audio, tmp_path / "out")
    assert not problems and [t.output for t in tasks] == [tmp_path / "out" / "a.json", tmp_path / "out/sub/b.json"]
    report = annotate(tasks, fake, "en", quiet=True)
    assert (report.annotated, report.already_done, report.problems) == (2, 0, [])
    assert fake.calls == [(7 * SAMPLE_RATE, "en")] * 2 + [(4 * SAMPLE_RATE, "en")] * 2  # 16 kHz, per channel

    first, last = sample_span()
    words = read_alignments(tmp_path / "out" / "a.json", duration=7.0)
    assert [w.start for w in words] == sorted(w.start for w in words)
    left = [w for w in words if w.speaker == LEFT_SPEAKER]
    right = [w for w in words if w.speaker == RIGHT_SPEAKER]
    assert len(left) + len(right) == len(words) and left and right
    assert all(w.text.startswith("w") and w.text == w.text.strip() for w in words)
    # the fake hears each channel's speech where it was placed, to within one 0.1 s block
    assert min(w.start for w in left) == pytest.approx(0.5 + first, abs=BLOCK + 1e-6)
    assert max(w.end for w in left) == pytest.approx(0.5 + last, abs=BLOCK + 1e-6)
    assert min(w.start for w in right) == pytest.approx(3.5 + first, abs=BLOCK + 1e-6)
    assert max(w.end for w in right) == pytest.approx(3.5 + last, abs=BLOCK + 1e-6)
    b = read_alignments(tmp_path / "out" / "sub" / "b.json")
    assert b and all(w.speaker == RIGHT_SPEAKER for w in b)  # nothing on the left channel, nothing heard there


def test_resumes_and_reports_bad_files(tmp_path):
    audio = tmp_path / "calls"
    stereo(audio / "a.wav", 3.0, 0.0, 0.5)
    stereo(audio / "b.wav", 3.0, 0.5, 0.0)
    mono(audio / "c.wav", 3.0)
    m = manifest(tmp_path / "calls" / "list.jsonl", [
        {"path": "a.wav", "duration": 3}, {"path": "gone.wav", "duration": 3}, "oops", {"path": "c.wav", "duration": 3},
        {"path": "b.wav", "duration": 3},
    ])
    out = tmp_path / "out"
    fake = EnergyTranscriber()
    tasks, problems = plan(m, out)
    assert [(p.line, "not valid JSON" in p.reason) for p in problems] == [(3, True)]
    report = annotate(tasks, fake, None, quiet=True)
    assert report.annotated == 2 and len(fake.calls) == 4
    assert [(p.line, p.file) for p in report.problems] == [(2, str(m)), (4, str(m))]
    assert "audio file not found" in report.problems[0].reason and "1 channel" in report.problems[1].reason
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json"]  # nothing written for bad files

    (out / "b.json").unlink()
    before = (out / "a.json").read_text()
    again = annotate(tasks, fake, None, quiet=True)
    assert (again.annotated, again.already_done) == (1, 1) and len(fake.calls) == 6  # only b redone
    assert (out / "a.json").read_text() == before and (out / "b.json").is_file()


def test_cli_with_injected_transcriber(tmp_path, capsys, monkeypatch):
    import fullduplex.data.annotate as annotate_module

    stereo(tmp_path / "calls" / "a.wav", 3.0, 0.0, 0.5)
    mono(tmp_path / "calls" / "m.wav", 1.0)
    made = []

    def fake_whisper(model, device, compute_type, batch_size, device_index):
        made.append((model, device, compute_type, batch_size, device_index))
        return EnergyTranscriber()

    monkeypatch.setattr(annotate_module, "FasterWhisper", fake_whisper)
    argv = ["data", "annotate", str(tmp_path / "calls"), "--model", "m", "--output", str(tmp_path / "out"), "-q",
            "--language", "hi"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "annotated 1 file(s)" in out and "1 problem(s)" in out
    assert f"warning: skipped {tmp_path / 'calls' / 'm.wav'}: " in err and "1 channel" in err
    assert made == [("m", "auto", "default", 1, 0)]
    assert json.loads((tmp_path / "out" / "a.json").read_text())["alignments"]
    # a second run has nothing left to do (the bad file is retried and fails again) and loads no model
    (tmp_path / "calls" / "m.wav").unlink()
    assert main(argv) == 0 and len(made) == 1
    assert "skipped 1 already done" in capsys.readouterr().out


def test_cli_without_faster_whisper(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if not installed
    stereo(tmp_path / "calls" / "a.wav", 1.0, 0.0, 0.0)
    code = main(["data", "annotate", str(tmp_path / "calls"), "--model", str(tmp_path), "-o", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "pip install faster-whisper")
    assert not (tmp_path / "o").exists()


def test_cli_bad_inputs(tmp_path, capsys):
    code = main(["data", "annotate", str(tmp_path / "none.jsonl"), "--model", "m", "-o", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "manifest not found", "none.jsonl")
    (tmp_path / "empty").mkdir()
    code = main(["data", "annotate", str(tmp_path / "empty"), "--model", "m", "-o", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "no audio files")


def test_parts_share_the_files(tmp_path, capsys, monkeypatch):
    """--num-shards N --shard-index I (or torchrun's RANK / WORLD_SIZE) annotates a share of the files: the parts
    are disjoint, cover the manifest, are balanced by the manifest's durations, and the environment picks the
    same share as the flags."""
    import fullduplex.data.annotate as annotate_module

    for name in "abcde":
        stereo(tmp_path / f"{name}.wav", 1.0, 0.0, 0.5)
    m = manifest(tmp_path / "m.jsonl", [{"path": f"{n}.wav", "duration": d} for n, d in zip("abcde", [9, 1, 4, 4, 2], strict=True)])
    monkeypatch.setattr(annotate_module, "FasterWhisper", lambda *args: EnergyTranscriber())
    done: dict[str, set[str]] = {}
    for index in range(2):
        out = tmp_path / f"out{index}"
        assert main(["data", "annotate", str(m), "--model", "m", "--output", str(out), "-q",
                     "--num-shards", "2", "--shard-index", str(index)]) == 0
        done[f"flags{index}"] = {p.stem for p in out.glob("*.json")}
        out = tmp_path / f"env{index}"
        monkeypatch.setenv("RANK", str(index))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(["data", "annotate", str(m), "--model", "m", "--output", str(out), "-q"]) == 0
        done[f"env{index}"] = {p.stem for p in out.glob("*.json")}
    capsys.readouterr()
    # longest first to the least loaded: a(9) -> 0, c(4) -> 1, d(4) -> 1, e(2) -> 1, b(1) -> 0: 10 s each
    assert done["flags0"] == done["env0"] == {"a", "b"} and done["flags1"] == done["env1"] == {"c", "d", "e"}
    monkeypatch.delenv("RANK")
    code = main(["data", "annotate", str(m), "--model", "m", "--output", str(tmp_path / "o"), "--num-shards", "2",
                 "--shard-index", "2"])
    assert_one_line_error(code, capsys.readouterr().err, "--shard-index 2", "0 .. 1")


def test_batched_asr_goes_through_faster_whisper_batched_pipeline(tmp_path, monkeypatch):
    """--batch-size N > 1 hands faster-whisper's BatchedInferencePipeline the audio with batch_size=N (a stand-in
    module records the calls: faster-whisper itself is an optional install, absent here)."""
    import types

    from fullduplex.data.annotate import FasterWhisper

    calls: list[tuple[str, dict]] = []
    word = types.SimpleNamespace(word=" hi", start=0.1, end=0.3)
    segment = types.SimpleNamespace(words=[word])

    class WhisperModel:
        def __init__(self, path, **kwargs):
            calls.append(("load", kwargs))

        def transcribe(self, audio, **kwargs):
            calls.append(("one", kwargs))
            return iter([segment]), None

    class BatchedInferencePipeline:
        def __init__(self, model):
            assert isinstance(model, WhisperModel)

        def transcribe(self, audio, **kwargs):
            calls.append(("batched", kwargs))
            return iter([segment]), None

    fake = types.ModuleType("faster_whisper")
    fake.WhisperModel, fake.BatchedInferencePipeline = WhisperModel, BatchedInferencePipeline
    monkeypatch.setitem(sys.modules, "faster_whisper", fake)
    audio = np.zeros(SAMPLE_RATE, dtype=np.float32)
    words = FasterWhisper(tmp_path, "cuda", "float16", batch_size=16, device_index=3).transcribe(audio, "hi")
    assert [(w.text, w.start, w.end) for w in words] == [(" hi", 0.1, 0.3)]
    assert calls[0] == ("load", {"device": "cuda", "device_index": 3, "compute_type": "float16",
                                 "local_files_only": True})
    assert calls[1] == ("batched", {"language": "hi", "word_timestamps": True, "beam_size": 5, "batch_size": 16})
    FasterWhisper(tmp_path).transcribe(audio, None)
    assert calls[-1] == ("one", {"language": None, "word_timestamps": True, "beam_size": 5,
                                 "condition_on_previous_text": False})
    del fake.BatchedInferencePipeline  # an old faster-whisper
    with pytest.raises(FullduplexError, match="faster-whisper >= 1.1"):
        FasterWhisper(tmp_path, batch_size=2)
