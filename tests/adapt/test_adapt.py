"""``fullduplex adapt``: vocabulary surgery on a tiny LM checkpoint, checked tensor by tensor, against the reference
loader, and for streaming (one input tensor alive at a time)."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import fullduplex as fd
from fullduplex.checkpoint import adapt as adapt_module
from fullduplex.checkpoint.adapt import adapt_checkpoint, sample_rows, shared_pieces
from fullduplex.checkpoint.stream import LazyCheckpoint
from fullduplex.cli.main import main
from fullduplex.lm import lm_preset
from fullduplex.text import TOKENIZER_NAME, TextTokenizer, train_tokenizer
from tests.helpers import assert_one_line_error
from tests.text.corpora import ENGLISH, HINDI

TINY = lm_preset("tiny")  # text_card 96
VOCAB = ("text_emb.weight", "depformer_text_emb.weight", "text_linear.weight")
SPECIAL = [0, 1, 2, 3]


def read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny LM (norm gains randomised, so every tensor matters) in the released format with its 96-piece English
    tokenizer beside it; new tokenizers: English + Hindi, 120 pieces (grows) and Hindi only, 56 pieces (shrinks)."""
    root = tmp_path_factory.mktemp("adapt")
    torch.manual_seed(0)
    model = fd.LMModel(TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand_like(p) + 0.5)
    src = root / "in"
    src.mkdir()
    fd.save_lm(model, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps({**TINY.to_moshi_dict(), "model_type": "moshi", "lm_gen_config": {}}))
    old = train_tokenizer(ENGLISH, root / "en", 96, model_type="bpe")
    (src / TOKENIZER_NAME).write_bytes(old.path.read_bytes())
    grow = train_tokenizer(ENGLISH + HINDI, root / "en_hi", 120, model_type="bpe")
    shrink = train_tokenizer(HINDI, root / "hi", 56)
    return {"src": src, "old": src / TOKENIZER_NAME, "grow": grow.path, "shrink": shrink.path, "root": root}


@pytest.mark.parametrize(("new", "init"), [("grow", "normal"), ("shrink", "mean-cov")])
def test_vocabulary_tensors_resized_everything_else_bit_identical(files, tmp_path, new, init):
    result = adapt_checkpoint(files[new], tmp_path / "out", moshi_weight=files["src"], init=init, seed=3)
    card = TextTokenizer.load(files[new]).vocab_size
    old, out = read(files["src"] / "model.safetensors"), read(tmp_path / "out" / "model.safetensors")
    assert list(out) == list(old)  # same keys, same order
    for key in old:
        if key in VOCAB:
            continue
        assert out[key].dtype == old[key].dtype and out[key].shape == old[key].shape
        assert torch.equal(bits(out[key]), bits(old[key])), key
    assert out["text_emb.weight"].shape == (card + 1, TINY.dim)
    assert out["depformer_text_emb.weight"].shape == (card + 1, TINY.depformer_dim)
    assert out["text_linear.weight"].shape == (card, TINY.dim)
    assert result.resized["text_emb.weight"] == ((97, TINY.dim), (card + 1, TINY.dim))
    for key in VOCAB:
        assert torch.equal(out[key][SPECIAL], old[key][SPECIAL]), key  # EPAD, <s>, </s>, PAD
        assert not torch.equal(out[key][4:40], old[key][4:40]), key  # the rest is new
    for key in VOCAB[:2]:
        assert torch.equal(out[key][card], old[key][TINY.text_card])  # the initial token's row moved to the end
    if init == "normal":  # N(0, std of the old tensor)
        for key in VOCAB:
            assert out[key][4:card].std().item() == pytest.approx(old[key].std().item(), rel=0.15)
    else:  # mean-cov at scale 1e-5: every new row within a few sqrt(1e-5) std of the old mean
        for key in VOCAB:
            spread = (out[key][4:card] - old[key].mean(0)).abs().max()
            assert spread < 10 * 1e-5**0.5 * old[key].std(0).max(), key
    expected = json.loads((files["src"] / "config.json").read_text())  # the input's, text_card and file names new
    expected.pop("text_card_out")
    expected.update(text_card=card, moshi_name="model.safetensors", tokenizer_name=TOKENIZER_NAME)
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == expected
    # The same seed gives the same checkpoint.
    adapt_checkpoint(files[new], tmp_path / "again", moshi_weight=files["src"], init=init, seed=3)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "out" / "model.safetensors").read_bytes()


def test_mean_cov_samples_have_the_old_mean_and_scaled_covariance():
    g = torch.Generator().manual_seed(0)
    D = 12
    mixing = torch.randn(D, D, generator=g)
    old = torch.randn(3000, D, generator=g) @ mixing.T + torch.randn(D, generator=g) * 3  # [N, D]
    mean, cov = old.mean(0), torch.cov(old.T)
    for scale in (1.0, 0.01):
        rows = sample_rows(old, 20000, "mean-cov", torch.Generator().manual_seed(1), cov_scale=scale)
        assert rows.shape == (20000, D) and rows.dtype == torch.float32
        assert (rows.mean(0) - mean).abs().max() < 0.05 * cov.diag().max().sqrt()
        got = torch.cov(rows.T) / scale
        assert torch.linalg.matrix_norm(got - cov) < 0.05 * torch.linalg.matrix_norm(cov)
    normal = sample_rows(old, 20000, "normal", torch.Generator().manual_seed(1))
    assert normal.mean().abs() < 0.05 * old.std() and normal.std().item() == pytest.approx(old.std().item(), rel=0.02)
    # A singular covariance (fewer rows than dimensions) still samples, inside the rows' span.
    few = old[:5]
    rows = sample_rows(few, 100, "mean-cov", torch.Generator().manual_seed(2), cov_scale=1.0)
    centred = (few - few.mean(0)).double()
    residual = (rows.double() - few.mean(0).double()) - (rows.double() - few.mean(0).double()) @ torch.linalg.pinv(centred) @ centred
    assert residual.abs().max() < 1e-3


def test_copy_shared_copies_the_rows_of_shared_pieces(files, tmp_path):
    result = adapt_checkpoint(files["grow"], tmp_path / "out", moshi_weight=files["src"], init="copy-shared", fill="normal")
    old_tok, new_tok = TextTokenizer.load(files["old"]), TextTokenizer.load(files["grow"])
    shared = shared_pieces(old_tok, new_tok)
    the = new_tok.processor.piece_to_id("▁the")
    assert shared[the] == old_tok.processor.piece_to_id("▁the") and result.shared_pieces == len(shared) > 20
    assert all(new_tok.piece(n) == old_tok.piece(o) and n >= 4 for n, o in shared.items())
    old, out = read(files["src"] / "model.safetensors"), read(tmp_path / "out" / "model.safetensors")
    news = torch.tensor(sorted(shared))
    olds = torch.tensor([shared[i] for i in sorted(shared)])
    hindi = [i for i in range(4, 120) if i not in shared]
    assert len(hindi) > 30
    for key in VOCAB:
        assert torch.equal(out[key][news], old[key][olds]), key
        assert torch.equal(out[key][SPECIAL], old[key][SPECIAL])
        for i in hindi:  # not a copy of any old row
            assert not (out[key][i] == old[key]).all(dim=1).any(), (key, i)


def test_loads_in_ours_and_in_the_reference_with_identical_logits(files, tmp_path):
    loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")
    from moshi.models import lm as reference_lm

    out = tmp_path / "out"
    assert main(["adapt", "--moshi-weight", str(files["src"]), "--tokenizer", str(files["grow"]), "-o", str(out),
                 "--init", "copy-shared", "-q"]) == 0
    ours = fd.load_lm(out)  # the folder: model.safetensors + config.json
    tokenizer = TextTokenizer.load(out)  # the folder's tokenizer_spm_32k_3.model
    assert ours.config == TINY.with_text_vocabulary(120)
    tokenizer.check_vocabulary(ours.config.text_card, str(out))  # the vocabulary check of generate/serve passes
    info = loaders.CheckpointInfo.from_hf_repo(
        "unused/unused", moshi_weights=out / "model.safetensors", mimi_weights=Path("unused"),
        tokenizer=out / TOKENIZER_NAME, config_path=out / "config.json",
    )
    reference = info.get_moshi(device="cpu", dtype=torch.float32).eval()
    assert info.get_text_tokenizer().get_piece_size() == 120 and reference.text_card == 120
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, TINY.card, (2, TINY.num_streams, 16), generator=g)
    codes[:, 0] = torch.randint(0, 120, (2, 16), generator=g)
    codes[0, 0, :4] = torch.tensor([100, 110, 119, 3])  # rows that did not exist before
    with torch.no_grad():
        a, b = ours(codes), reference(codes)
    assert a.text_logits.shape == (2, 1, 16, 120)
    assert (a.text_logits - b.text_logits).nan_to_num().abs().max() < 1e-4
    assert (a.audio_logits - b.logits).nan_to_num().abs().max() < 1e-4
    # Generation: the new vocabulary's tokens, the same as the reference's, step for step (greedy).
    user = torch.randint(0, TINY.card, (1, 8, 30), generator=g)
    gen = fd.Generator(ours, temp=0.0, temp_text=0.0)
    ref_gen = reference_lm.LMGen(reference, use_sampling=False)
    with gen.streaming(1), ref_gen.streaming(1):
        steps = [(gen.step(user[..., t : t + 1]), ref_gen.step(user[..., t : t + 1])) for t in range(30)]
    text = torch.cat([s[0][:, 0] for s in steps if s[0] is not None], dim=-1)
    assert all(s[1] is None if s[0] is None else torch.equal(s[0], s[1]) for s in steps)
    assert ((text >= 0) & (text < 120)).all() and len(set(text.flatten().tolist())) > 1
    tokenizer.decode(text[0])  # every id is one of the new tokenizer's


def test_tensors_are_read_lazily_one_at_a_time(files, tmp_path, monkeypatch):
    """By design: the header is planned from shapes alone; each tensor is read once, and when the next is read the
    previous one is already handed to the writer, so at most one input tensor is alive besides the new one."""
    reads: list[str] = []
    alive: list[weakref.ref] = []
    most_alive = 0
    real_get = LazyCheckpoint.get

    def spying_get(self, key):
        nonlocal most_alive
        most_alive = max(most_alive, sum(r() is not None for r in alive))
        tensor = real_get(self, key)
        reads.append(key)
        alive.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(LazyCheckpoint, "get", spying_get)
    adapt_checkpoint(files["grow"], tmp_path / "out", moshi_weight=files["src"], init="mean-cov")
    keys = list(read(files["src"] / "model.safetensors"))
    assert reads == keys  # each tensor read exactly once, in file order, none before planning was done
    assert most_alive <= 1  # only the tensor just written may still be referenced


def test_bf16_input_stays_bf16_and_module_style_keys_stay(files, tmp_path):
    state = {k: v.to(torch.bfloat16) for k, v in read(files["src"] / "model.safetensors").items()}
    save_file(state, str(tmp_path / "bf16.safetensors"))
    adapt_checkpoint(files["shrink"], tmp_path / "out", moshi_weight=tmp_path / "bf16.safetensors", config="tiny")
    out = read(tmp_path / "out" / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in out.values()) and out["text_emb.weight"].shape == (57, TINY.dim)
    assert fd.load_lm(tmp_path / "out").config.text_card == 56


def test_bad_input_gives_one_line_and_leaves_nothing(files, tmp_path, capsys):
    def adapt(*argv: str | Path) -> tuple[int, str]:
        code = main(["adapt", "--moshi-weight", str(files["src"]), *map(str, argv)])
        return code, capsys.readouterr().err

    out = tmp_path / "out"
    code, err = adapt("--tokenizer", tmp_path / "missing.model", "-o", out)
    assert_one_line_error(code, err, "not found", "missing.model")
    (tmp_path / "bad.model").write_bytes(b"not a sentencepiece model" * 8)
    code, err = adapt("--tokenizer", tmp_path / "bad.model", "-o", out)
    assert_one_line_error(code, err, "bad.model is not a SentencePiece tokenizer model")
    save_file({"encoder.model.0.conv.conv.weight": torch.zeros(2, 2)}, str(tmp_path / "mimi.safetensors"))
    code = main(["adapt", "--moshi-weight", str(tmp_path / "mimi.safetensors"), "--config", "tiny", "--tokenizer",
                 str(files["grow"]), "-o", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "is a Mimi checkpoint, not the LM")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.safetensors").write_bytes((files["src"] / "model.safetensors").read_bytes())
    code = main(["adapt", "--moshi-weight", str(lonely), "--config", "tiny", "--tokenizer", str(files["grow"]), "-o",
                 str(out), "--init", "copy-shared"])
    assert_one_line_error(code, capsys.readouterr().err, "copy-shared needs the tokenizer", "--old-tokenizer")
    code, err = adapt("--tokenizer", files["grow"], "-o", out, "--config", "small")
    assert_one_line_error(code, err, "text_card", "--config")
    assert not out.exists()  # none of the failures left a folder behind
    assert adapt("--tokenizer", files["grow"], "-o", out, "-q")[0] == 0
    code, err = adapt("--tokenizer", files["shrink"], "-o", out)
    assert_one_line_error(code, err, "previous `fullduplex adapt` output", "--overwrite")
    assert fd.load_lm(out).config.text_card == 120
    assert adapt("--tokenizer", files["shrink"], "-o", out, "--overwrite", "-q")[0] == 0
    assert fd.load_lm(out).config.text_card == 56
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.safetensors", "config.json", TOKENIZER_NAME])
    (out / "notes.txt").write_text("mine")
    code, err = adapt("--tokenizer", files["grow"], "-o", out, "--force")  # the old name of --overwrite
    assert_one_line_error(code, err, "'notes.txt'", "nothing was deleted")
    assert fd.load_lm(out).config.text_card == 56 and (out / "notes.txt").read_text() == "mine"
    code, err = adapt("--tokenizer", files["grow"], "-o", files["src"], "--overwrite")
    assert_one_line_error(code, err, "an input of this command")


def test_help_explains_itself(capsys):
    assert main(["adapt", "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "copy-shared" in out and "text_emb.weight" in out
    assert adapt_module.DEFAULT_COV_SCALE == 1e-5
