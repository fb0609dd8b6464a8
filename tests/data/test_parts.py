"""``data prepare`` in parts and ``data merge``: four parts merged must give the very bytes one process writes; a
part killed half-way and run again must finish with the same bytes, redoing only its unfinished shards; the
torchrun environment must pick the part the flags pick; batched Mimi encoding must give exactly the codes of
encoding one conversation at a time; parts that do not belong together must be refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fullduplex as fd
import fullduplex.data.prepare as prepare_module
from fullduplex.cli.main import EXIT_INTERRUPTED, main
from fullduplex.codec import mimi_preset
from fullduplex.data.formats import LEFT_SPEAKER, RIGHT_SPEAKER
from fullduplex.data.parts import Part, assign, resolve_part
from fullduplex.data.prepare import encode_conversations, encode_stereo
from fullduplex.errors import FullduplexError
from fullduplex.text import train_tokenizer
from tests.data.samples import alignments, manifest, stereo
from tests.helpers import assert_one_line_error, randomize_

SENTENCES = ["hello there how are you", "i am fine thank you", "see you later my friend"] * 6
SECONDS = [1.2, 2.9, 0.7, 2.0, 1.6, 2.4, 1.0, 2.2, 0.9]  # nine conversations of different lengths


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    mimi = fd.save_mimi(randomize_(fd.Mimi(mimi_preset("tiny")).eval()), root / "mimi.safetensors")
    return {"mimi": mimi, "tokenizer": train_tokenizer(SENTENCES, root / "tok", 48, model_type="bpe").path}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Nine good conversations, a missing file and a malformed line; returns the manifest."""
    root = tmp_path_factory.mktemp("corpus")
    lines: list[dict | str] = []
    for i, seconds in enumerate(SECONDS):
        stereo(root / f"c{i}.wav", seconds, 0.05 * i, 0.3)
        alignments(root / f"c{i}.json", [("hello", 0.1, 0.3, LEFT_SPEAKER), ("you", 0.35, 0.5, RIGHT_SPEAKER)])
        lines.append({"path": f"c{i}.wav", "duration": seconds, "speakers": [f"s{i % 4}", f"s{(i + 1) % 4}"]})
        if i == 3:
            lines.append({"path": "missing.wav", "duration": 1.0})
        if i == 6:
            lines.append('{"path": ')
    return manifest(root / "train.jsonl", lines)


def cli(capsys, models, *argv: str) -> tuple[int, str, str]:
    code = main(["data", *argv, "--mimi-weight", str(models["mimi"]), "--mimi-config", "tiny", "--tokenizer",
                 str(models["tokenizer"]), "--device", "cpu", "-q"] if argv[0] == "prepare" else ["data", *argv])
    return code, *capsys.readouterr()


def prepare_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", str(corpus), "--output", str(out), "--both-sides", "--shard-size", "4", *extra]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def single(tmp_path_factory, models, corpus) -> dict[str, bytes]:
    """One process, one conversation per Mimi call: the reference bytes."""
    out = tmp_path_factory.mktemp("single") / "shards"
    code = main(["data", *prepare_args(corpus, out, "--batch-size", "1"), "--mimi-weight", str(models["mimi"]),
                 "--mimi-config", "tiny", "--tokenizer", str(models["tokenizer"]), "--device", "cpu", "-q"])
    assert code == 0
    return files(out)


def test_four_parts_merge_to_the_bytes_of_one_process(tmp_path, capsys, models, corpus, single):
    # 9 usable lines, 2 conversations (4 items) per shard: groups 0..4, group 1 holds the missing file
    assert sorted(single) == ["index.json", "report.json", *(f"shard-0000{g}.safetensors" for g in range(5))]
    report = json.loads(single["report.json"])
    assert report["conversations"] == 9 and report["speakers"] == 4 and report["items"] == 18
    assert [(p["line"], "not found" in p["reason"] or "JSON" in p["reason"]) for p in report["skipped_files"]] == [
        (5, True), (9, True)]
    parts = tmp_path / "parts"
    for index in range(4):  # batched (3 per Mimi call) where the single run went one at a time
        code, out, err = cli(capsys, models, *prepare_args(corpus, parts, "--num-shards", "4", "--shard-index",
                                                           str(index), "--batch-size", "3"))
        assert code == 0, err
        assert f"part {index} of 4" in out and "data merge" in out
    # 5 groups dealt by duration over 4 parts: every part gets one or two
    groups = [json.loads((parts / f"part-0000{i}-of-00004" / "part.json").read_text())["groups"] for i in range(4)]
    assert sorted(g for gs in groups for g in gs) == list(range(5)) and all(gs for gs in groups)
    code, out, err = cli(capsys, models, "merge", str(parts), "--output", str(tmp_path / "merged"))
    assert code == 0, err
    assert "9 conversations" in out and err.count("warning: skipped") == 2
    assert files(tmp_path / "merged") == single
    # the part folders, named one by one, merge the same
    code, _, err = cli(capsys, models, "merge", *(str(p) for p in sorted(parts.iterdir())), "--output",
                       str(tmp_path / "merged2"))
    assert code == 0, err
    assert files(tmp_path / "merged2") == single


def test_killed_part_resumes_to_the_same_bytes(tmp_path, capsys, models, corpus, single, monkeypatch):
    parts = tmp_path / "parts"
    for index in (0, 1, 2):  # part 3 has two groups: 1 and 2 (dealt by duration)
        assert cli(capsys, models, *prepare_args(corpus, parts, "--num-shards", "4", "--shard-index", str(index)))[0] == 0
    part3 = parts / "part-00003-of-00004"
    real_write, encoded = prepare_module.write_shard, []

    def killed_after_first_shard(path, items, meta):
        if list(part3.glob("shard-*.safetensors")):
            raise KeyboardInterrupt  # as a kill: nothing below the run catches it
        real_write(path, items, meta)

    monkeypatch.setattr(prepare_module, "write_shard", killed_after_first_shard)
    code, _, err = cli(capsys, models, *prepare_args(corpus, parts, "--num-shards", "4", "--shard-index", "3",
                                                     "--batch-size", "1"))
    assert code == EXIT_INTERRUPTED and "interrupted" in err
    info = json.loads((part3 / "part.json").read_text())
    assert len(info["groups"]) == 2 and info["finished"] is False
    first = info["groups"][0]
    assert sorted(p.name for p in part3.iterdir()) == ["part.json", f"shard-0000{first}.done.json",
                                                       f"shard-0000{first}.safetensors"]
    stale = part3 / f".shard-0000{info['groups'][1]}.safetensors.x1y2.tmp"  # what a SIGKILL mid-write leaves
    stale.write_bytes(b"half")
    code, _, err = cli(capsys, models, "merge", str(parts), "--output", str(tmp_path / "merged"))
    assert_one_line_error(code, err, "part-00003-of-00004 is unfinished", "1 of 2", "--shard-index 3")
    assert not (tmp_path / "merged").exists()

    monkeypatch.setattr(prepare_module, "write_shard", real_write)
    real_encode = prepare_module.encode_conversations
    monkeypatch.setattr(prepare_module, "encode_conversations", lambda mimi, wavs: encoded.append(len(wavs))
                        or real_encode(mimi, wavs))
    code, _, err = cli(capsys, models, *prepare_args(corpus, parts, "--num-shards", "4", "--shard-index", "3"))
    assert code == 0, err
    assert sum(encoded) == _usable_in_group(corpus, info["groups"][1])  # only the unfinished group was redone
    assert not stale.exists() and json.loads((part3 / "part.json").read_text())["finished"] is True
    assert cli(capsys, models, "merge", str(parts), "--output", str(tmp_path / "merged"))[0] == 0
    assert files(tmp_path / "merged") == single
    # a finished part run again does nothing
    encoded.clear()
    assert cli(capsys, models, *prepare_args(corpus, parts, "--num-shards", "4", "--shard-index", "3"))[0] == 0
    assert encoded == []


def _groups(corpus: Path) -> list[list]:
    from fullduplex.data.formats import read_manifest
    from fullduplex.data.prepare import PrepareOptions, groups_of

    return groups_of(read_manifest(corpus)[0], PrepareOptions(both_sides=True, shard_size=4))


def _usable_in_group(corpus: Path, group: int) -> int:
    return sum(e.path.is_file() for e in _groups(corpus)[group])


def test_torchrun_environment_picks_the_part_of_the_flags(tmp_path, capsys, models, corpus, monkeypatch):
    flags, env = tmp_path / "flags", tmp_path / "env"
    assert cli(capsys, models, *prepare_args(corpus, flags, "--num-shards", "4", "--shard-index", "2"))[0] == 0
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")  # no CUDA here: stays on --device cpu
    code, out, err = cli(capsys, models, *prepare_args(corpus, env))
    assert code == 0, err
    assert [p.name for p in env.iterdir()] == ["part-00002-of-00004"]
    assert files(env / "part-00002-of-00004") == files(flags / "part-00002-of-00004")
    assert resolve_part(None, None, {"RANK": "3", "WORLD_SIZE": "8"}) == Part(3, 8)
    assert resolve_part(1, 0, {"RANK": "3", "WORLD_SIZE": "8"}) == Part(0, 1)  # the flags win
    assert resolve_part(None, None, {}) is None
    for bad in ((4, 4), (4, None), (None, 0)):
        with pytest.raises(FullduplexError):
            resolve_part(*bad, {})


def test_split_is_deterministic_and_balanced():
    durations = [5.0, 1.0, 3.0, 3.0, 2.0, 2.0, 1.0, 4.0]
    parts = assign(durations, 3)
    assert parts == assign(list(durations), 3)
    loads = [sum(d for d, p in zip(durations, parts, strict=True) if p == i) for i in range(3)]
    assert max(loads) - min(loads) <= max(durations) and sum(loads) == sum(durations)
    assert assign([1.0] * 5, 2) == [0, 1, 0, 1, 0]  # equal units are dealt in turn


def test_batched_encoding_equals_one_at_a_time(models, monkeypatch):
    mimi = fd.load_mimi(models["mimi"], config=mimi_preset("tiny"), num_codebooks=8)
    for name in ("CHUNK_FRAMES", "CPU_CHUNK_FRAMES"):  # streamed in chunks of 4 frames: short audio crosses them
        monkeypatch.setattr(prepare_module, name, 4)
    torch.manual_seed(3)
    # lengths in whole frames and not, over several chunks, and one of a single sample
    wavs = [0.3 * torch.randn(2, n) for n in (1920 * 7 + 5, 1920 * 13 + 11, 1, 1920 * 3, 1920 * 8)]
    batched = encode_conversations(mimi, wavs)
    for wav, codes in zip(wavs, batched, strict=True):
        with torch.inference_mode():
            alone = mimi.encode(wav[:, None])  # [2, K, T], batch mode, no padding but the last frame's
        assert codes.shape == alone.shape == (2, 8, -(-wav.shape[-1] // 1920))
        assert torch.equal(codes, alone) and torch.equal(codes, encode_stereo(mimi, wav))


def test_bad_parts_are_refused(tmp_path, capsys, models, corpus):
    parts = tmp_path / "parts"
    code, _, err = cli(capsys, models, *prepare_args(corpus, parts, "--num-shards", "4", "--shard-index", "4"))
    assert_one_line_error(code, err, "--shard-index 4", "0 .. 3")
    code, _, err = cli(capsys, models, *prepare_args(corpus, parts, "--num-shards", "4"))
    assert_one_line_error(code, err, "--num-shards and --shard-index go together")
    assert not parts.exists()
    for index in (0, 1):
        assert cli(capsys, models, *prepare_args(corpus, parts, "--num-shards", "2", "--shard-index", str(index)))[0] == 0
    other = tmp_path / "other"  # another run: a different --shard-size
    assert cli(capsys, models, "prepare", str(corpus), "--output", str(other), "--both-sides", "--num-shards", "2",
               "--shard-index", "1")[0] == 0
    p0, p1, q1 = parts / "part-00000-of-00002", parts / "part-00001-of-00002", other / "part-00001-of-00002"
    cases = [
        ((p0, q1), ["not parts of one run", "different options"]),
        ((p0,), ["part 1 of 2 is missing", "--shard-index 1"]),
        ((p0, p0, p1), ["both part 0 of 2"]),
        ((tmp_path / "nowhere",), ["no such folder"]),
        ((corpus.parent,), ["neither a part folder"]),
    ]
    for sources, needles in cases:
        code, _, err = cli(capsys, models, "merge", *(str(s) for s in sources), "--output", str(tmp_path / "m"))
        assert_one_line_error(code, err, *needles)
        assert not (tmp_path / "m").exists()
    # a part folder of another run is not resumed over, nor another command's folder used
    code, _, err = cli(capsys, models, "prepare", str(corpus), "--output", str(parts), "--num-shards", "2",
                       "--shard-index", "1")  # without --both-sides --shard-size 4
    assert_one_line_error(code, err, "part-00001-of-00002 holds part 1 of 2 of another run", "--overwrite")
    (tmp_path / "x" / "part-00000-of-00002").mkdir(parents=True)
    (tmp_path / "x" / "part-00000-of-00002" / "mine.txt").write_text("x")
    code, _, err = cli(capsys, models, *prepare_args(corpus, tmp_path / "x", "--num-shards", "2", "--shard-index", "0"))
    assert_one_line_error(code, err, "is not a `fullduplex data prepare` part", "mine.txt", "nothing was deleted")
    # a part whose manifest changed since it started is not resumed
    lines = [json.loads(line) for line in corpus.read_text().splitlines() if line.startswith("{\"path\": \"c")]
    changed = manifest(tmp_path / "changed.jsonl", [dict(line, path=str(corpus.parent / line["path"]))
                                                     for line in lines[:3]])
    args = ("prepare", str(changed), "--output", str(tmp_path / "c"), "--num-shards", "2", "--shard-index", "0")
    assert cli(capsys, models, *args)[0] == 0
    changed.write_text(changed.read_text() + changed.read_text().splitlines()[0] + "\n")
    code, _, err = cli(capsys, models, *args)
    assert_one_line_error(code, err, "of another run (different manifest content)", "--overwrite")
    assert cli(capsys, models, *args, "--overwrite")[0] == 0
    # the merged output obeys the usual folder rule
    assert cli(capsys, models, "merge", str(parts), "--output", str(tmp_path / "m"))[0] == 0
    code, _, err = cli(capsys, models, "merge", str(parts), "--output", str(tmp_path / "m"))
    assert_one_line_error(code, err, "previous `fullduplex data prepare` output", "--overwrite")
