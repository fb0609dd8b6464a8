"""Hibiki translation (``fullduplex translate`` and :func:`fullduplex.inference.translate.translate`) on a tiny
random Hibiki-shaped model: per-item end of sequence, batch independence, the command's files and errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.codec.audio import read_audio
from fullduplex.inference.offline import Sampling, check_models
from fullduplex.inference.translate import check_hibiki, translate
from fullduplex.lm import lm_preset
from fullduplex.text import train_tokenizer
from tests.helpers import assert_one_line_error, randomize_, speech

DESCRIPTION = {"description": {"type": "lut", "lut": {
    "n_bins": 7, "dim": 16, "tokenizer": "noop", "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"]}}}
HIBIKI = replace(lm_preset("tiny"), model_type="hibiki", conditioners=DESCRIPTION, fuser={"sum": ["description"]})
GREEDY = Sampling(temp=0.0, temp_text=0.0)
SENTENCES = ["hello there how are you", "the quick brown fox jumps", "see you later my friend"] * 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hibiki")
    torch.manual_seed(0)
    lm = fd.LMModel(HIBIKI).eval()
    with torch.no_grad():
        lm.condition_provider.conditioners["description"].learnt_padding.normal_()
    mimi = randomize_(fd.Mimi(mimi_preset("tiny")).eval())
    tokenizer = train_tokenizer(SENTENCES, root / "tok", 96, model_type="bpe")
    folder = root / "lm"
    folder.mkdir()
    fd.save_lm(lm, folder / "model.safetensors")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in HIBIKI.to_dict().items() if k != "user_audio"}
    (folder / "config.json").write_text(json.dumps(config))
    fd.save_mimi(mimi, root / "mimi.safetensors")
    check_models(mimi, lm, tokenizer, "tiny")
    return {"lm": lm, "mimi": mimi, "tokenizer": tokenizer, "root": root, "folder": folder}


def test_config_round_trip_loads_hibiki(models):
    lm = fd.load_lm(models["folder"])
    assert lm.config.model_type == "hibiki"
    check_hibiki(lm, "x")
    assert torch.equal(lm.text_emb.weight[2], lm.text_emb.weight[3])  # EOS reads as PAD, as the reference loader


def test_refuses_a_dialogue_model():
    with pytest.raises(fd.errors.CheckpointError, match="not Hibiki"):
        check_hibiki(fd.LMModel(lm_preset("tiny")), "model.safetensors")


@pytest.mark.parametrize("cfg_coef", [2.5])  # guidance: the path with two LM rows per item
def test_batch_equals_each_alone(models, cfg_coef):
    wavs = [speech(0.3)[0], speech(0.6)[0] * 0.5]
    both = translate(wavs, models["mimi"], models["lm"], models["tokenizer"], GREEDY, cfg_coef=cfg_coef, tail=0.2)
    for wav, together in zip(wavs, both, strict=True):
        alone = translate([wav], models["mimi"], models["lm"], models["tokenizer"], GREEDY, cfg_coef=cfg_coef, tail=0.2)[0]
        assert torch.equal(alone.tokens, together.tokens)
        assert torch.allclose(alone.audio, together.audio, atol=1e-5)
    frames = [4, 8]  # ceil(S / 1920): the source, then the end mark and at most 0.2 s of tail (3 frames)
    assert all(r.tokens.shape[-1] == f + 1 + 3 or r.finished for r, f in zip(both, frames, strict=True))


def test_ends_at_eos_after_the_source_only(models):
    lm = fd.LMModel(HIBIKI).eval()
    lm.load_state_dict(models["lm"].state_dict())
    with torch.no_grad():  # the model always prefers EOS (2): it counts only once the source is over
        lm.text_linear.weight[2] = lm.text_linear.weight.abs().max() * 50
    wavs = [speech(0.5)[0], speech(0.9)[0]]
    results = translate(wavs, models["mimi"], lm, models["tokenizer"], GREEDY, tail=2.0)
    assert [r.finished for r in results] == [True, True]
    for r, frames in zip(results, (7, 12), strict=True):  # ceil(S / 1920)
        assert frames < r.tokens.shape[-1] <= frames + 2  # ends right after the end mark, not before
        assert r.tokens[0, -1] == 2 and (r.tokens[0, :frames] == 2).any()  # earlier EOS did not end it
    assert all(r.audio.shape[-1] == r.tokens.shape[-1] * 1920 for r in results)


def test_translate_command(models, tmp_path, capsys):
    src = tmp_path / "talk.wav"
    fd.codec.audio.write_wav(src, speech(0.6)[0], 24000)
    out = tmp_path / "out"
    argv = ["translate", str(src), "--output", str(out), "--moshi-weight", str(models["folder"]), "--mimi-weight",
            str(models["root"] / "mimi.safetensors"), "--mimi-config", "tiny", "--tokenizer", str(models["tokenizer"].path),
            "--temp", "0", "--temp-text", "0", "--tail", "0.4", "--cfg-coef", "2", "--quiet"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["talk.json", "talk.wav"]
    meta = json.loads((out / "talk.json").read_text())
    wav = read_audio(out / "talk.wav", 24000)  # [1, S]
    assert wav.shape[-1] == (8 + 1 + 5) * 1920 or meta["finished"]
    assert abs(meta["duration"] - wav.shape[-1] / 24000) < 1e-6
    capsys.readouterr()
    assert main(argv) == 2  # the outputs exist: refused without --overwrite
    assert_one_line_error(2, capsys.readouterr().err, "already exists", "--overwrite")
    code = main(["translate", str(src), "--output", str(out)])  # no checkpoint: the demo is no Hibiki
    assert_one_line_error(code, capsys.readouterr().err, "Hibiki checkpoint", "--hf-repo")


@pytest.mark.parametrize("cfg_coef", [2.0])
def test_engine_serves_hibiki_sessions_independently(models, cfg_coef):
    """A Hibiki session in the batched engine (conditions set per row, two LM rows per session under guidance)
    gives the same tokens alone and beside another session that joins earlier and leaves midway."""
    from fullduplex.inference.engine import Engine

    audio = speech(1.2)[0, 0]
    other = speech(0.7)[0, 0] * 0.3

    def run(with_other: bool) -> list[torch.Tensor]:
        with Engine(models["mimi"], models["lm"], GREEDY, max_sessions=2, cfg_coef=cfg_coef) as engine:
            second = engine.open() if with_other else None
            if second is not None:
                second.push(other)
                for _ in range(3):
                    engine.step()
            first = engine.open()
            first.push(audio)
            out = []
            for t in range(audio.shape[0] // 1920):
                engine.step()
                if second is not None and t == 5:
                    engine.close(second)
                out += [o.tokens for o in first.pop_outputs()]
            return out

    alone, together = run(False), run(True)
    assert len(alone) == len(together) == 15
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)


def test_copy_item_under_guidance_moves_both_rows_and_nothing_else():
    """``Generator.copy_item`` with guidance (what the engine does when a middle session leaves): item dst's two
    LM rows become item src's, every other item's rows stay as they were."""
    from fullduplex.inference import Generator
    from fullduplex.inference.translate import hibiki_conditions

    torch.manual_seed(0)
    lm = fd.LMModel(HIBIKI).eval()
    gen = Generator(lm, temp=0.0, temp_text=0.0, cfg_coef=3.0)

    def rows() -> list[list[torch.Tensor]]:  # per LM row: its cached keys and values, every layer
        out = []
        for row in range(6):
            snap = lm.transformer.snapshot_item(row)
            out.append([t for state in snap.values() for layer in state.data for t in layer])
        return out

    with torch.no_grad(), gen.streaming(3):
        for b in range(3):
            gen.set_conditions(b, *hibiki_conditions(3.0))
        for _ in range(4):
            gen.step(torch.randint(0, HIBIKI.card, (3, HIBIKI.user_q, 1)))
        before = rows()
        gen.copy_item(2, 1)
        after = rows()
    same = lambda x, y: len(x) == len(y) and all(torch.equal(a, b) for a, b in zip(x, y, strict=True))  # noqa: E731
    assert same(after[0], before[0]) and same(after[1], before[1])  # item 0 (rows 0, 1) untouched
    assert same(after[2], before[4]) and same(after[3], before[5])  # item 1 (rows 2, 3) is now item 2
    assert not same(before[2], before[4])  # the rows differed: not vacuous


def test_engine_refuses_guidance_without_conditions(models):
    from fullduplex.errors import FullduplexError
    from fullduplex.inference.engine import Engine

    with pytest.raises(FullduplexError, match="no conditioning"):
        Engine(models["mimi"], fd.LMModel(lm_preset("tiny")), GREEDY, cfg_coef=2.0)


def test_quantize_refuses_conditioned_models(models):
    with pytest.raises(ValueError, match="conditioners"):
        fd.quantize(fd.LMModel(HIBIKI), "int8")
