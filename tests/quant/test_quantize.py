"""int8 / int4 weight-only quantization in PyTorch: kernels, the whole LM against fp32, loading, errors, CLI."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fullduplex as fd
from fullduplex.cli.main import main
from fullduplex.codec import mimi_preset
from fullduplex.lm import LMConfig, lm_preset
from fullduplex.lm.quantize import QuantEmbedding, QuantStepProjections, dequantized_state, weight_bytes
from fullduplex.nn.quant import Int4Linear, Int8Linear, dequantize_affine, pack_codes, quantize_affine, unpack_codes
from fullduplex.text import train_tokenizer
from tests.helpers import ASSETS, assert_one_line_error, randomize_

# Sizes that fit int4's groups of 32 and the CPU kernel's rows in 16s (dim 256 -> FFN 704; depformer 192 -> 128).
CONFIG = LMConfig(
    dim=256, num_heads=4, num_layers=2, context=24, text_card=96, card=32, depformer_dim=64,
    depformer_num_heads=2, depformer_num_layers=2, depformer_dim_feedforward=192,
)


@pytest.fixture(scope="module")
def lm() -> fd.LMModel:
    torch.manual_seed(0)
    model = fd.LMModel(CONFIG).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def codes(B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.randint(0, CONFIG.card, (B, CONFIG.num_streams, T), generator=g)
    out[:, 0] = torch.randint(0, CONFIG.text_card, (B, T), generator=g)
    return out


def test_affine_codes_round_trip_and_pack():
    w = torch.randn(16, 128)
    for bits, group in ((8, 64), (4, 32)):
        q, s, b = quantize_affine(w, bits, group)
        assert int(q.max()) <= 2**bits - 1
        err = (dequantize_affine(q, s, b) - w).abs()
        assert (err <= s.repeat_interleave(group, -1) * 0.5 + 1e-6).all()
        words = pack_codes(q, bits)
        assert words.dtype == torch.uint32 and words.shape == (16, 128 * bits // 32)
        assert torch.equal(unpack_codes(words, bits), q)


@pytest.mark.parametrize(("kind", "k"), [("int8", 128), ("int4", 128), ("int8", 88), ("int8", 40)])
def test_kernels_match_their_dequantized_weight(kind, k):
    """88 and 40 are input sizes torch's CPU int8 kernel gets wrong (and crashes on for several rows): the layer
    must route them around it."""
    torch.manual_seed(0)
    w, x = torch.randn(48, k) * 0.1, torch.randn(2, 3, k)
    layer = Int8Linear.from_float(w) if kind == "int8" else Int4Linear.from_float(w, 32)
    deq = layer.dequantize()
    expected = x @ deq.T
    out = layer(x)
    assert out.shape == (2, 3, 48) and out.dtype == x.dtype
    assert (layer(x[:1, :1]) - expected[:1, :1]).abs().max() < 0.02 * expected.abs().max()  # one row
    # bf16 activations inside the kernels: relative error of bf16, not of the quantization
    assert (out - expected).abs().max() < 0.02 * expected.abs().max()
    step = (w.abs().amax(1, keepdim=True) / 127) if kind == "int8" else (w.abs().max() * 2 / 15)
    assert ((deq - w).abs() <= step * 0.51 + 1e-6).all()


@pytest.mark.parametrize(("mode", "min_agree", "max_kl"), [("int8", 0.95, 1e-3), ("int4", 0.65, 0.03)])
def test_teacher_forced_logits_against_fp32(lm, mode, min_agree, max_kl, capsys):
    q = fd.quantize(copy.deepcopy(lm), mode)
    x = codes(2, 16)
    with torch.no_grad():
        ref, out = lm(x), q(x)
    report = []
    for what, a, b, mask in (
        ("text", ref.text_logits, out.text_logits, ref.text_mask),
        ("audio", ref.audio_logits, out.audio_logits, ref.audio_mask),
    ):
        a, b = a[mask], b[mask]
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        kl = F.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="batchmean").item()
        report.append(f"{mode} {what}: top-1 agreement {agree:.3f}, KL(fp32 || {mode}) {kl:.2e}")
        assert agree >= min_agree and kl <= max_kl, report[-1]
    with capsys.disabled():
        print("\n" + "\n".join(report))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_structure_memory_and_export(lm, mode):
    q = fd.quantize(copy.deepcopy(lm), mode)
    assert isinstance(q.text_emb, QuantEmbedding) and isinstance(q.emb[15], QuantEmbedding)
    assert isinstance(q.depformer.layers[1].self_attn, QuantStepProjections)
    linear = Int8Linear if mode == "int8" else Int4Linear
    assert isinstance(q.depformer.layers[1].gating[7].linear_out, linear) and isinstance(q.text_linear, linear)
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) for m in q.modules())
    ratio = weight_bytes(q) / weight_bytes(lm)
    assert ratio <= (0.30 if mode == "int8" else 0.20), ratio
    state = dequantized_state(q)  # the float layout again, for save_lm / save_mlx
    assert set(state) == set(lm.state_dict())


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_generation_runs_and_loading_quantized_equals_quantizing(lm, mode, tmp_path):
    """Loading with ``quantize=`` (tensor by tensor) gives the model ``fd.quantize`` gives: the same tokens."""
    path = fd.save_lm(lm, tmp_path / "model.safetensors")
    loaded = fd.load_lm(path, config=CONFIG, quantize=mode)
    quantized = fd.quantize(fd.load_lm(path, config=CONFIG), mode)
    user = torch.randint(0, CONFIG.card, (2, 8, 30), generator=torch.Generator().manual_seed(1))
    runs = []
    for model in (loaded, quantized):
        gen = fd.Generator(model, temp=0.8, temp_text=0.7, top_k=10, top_k_text=5, seed=3)
        with gen.streaming(2):
            runs.append([gen.step(user[..., t : t + 1]) for t in range(30)])
    for a, b in zip(*runs, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    tokens = torch.cat(runs[0][1:], dim=-1)
    assert tokens[:, 0].max() < CONFIG.text_card and tokens[:, 1:].max() < CONFIG.card and tokens.min() >= 0


def test_bad_sizes_and_modes_are_one_clear_error(lm, tmp_path):
    tiny = fd.LMModel(lm_preset("tiny"))
    with pytest.raises(ValueError, match=r"gating\.linear_out: input size 176 is not a multiple of the int4 group size 32"):
        fd.quantize(tiny, "int4")
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        fd.quantize(copy.deepcopy(lm), "int3")
    path = fd.save_lm(tiny, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="int4 group size 32"):
        fd.load_lm(path, config="tiny", quantize="int4")


def test_generate_cli_with_quantize(tmp_path, capsys):
    torch.manual_seed(0)
    lm = fd.save_lm(fd.LMModel(lm_preset("tiny")), tmp_path / "model.safetensors")
    mimi = fd.save_mimi(randomize_(fd.Mimi(mimi_preset("tiny")).eval()), tmp_path / "mimi.safetensors")
    words = ["hello there", "how are you", "fine thanks", "good morning", "see you later", "what is that"] * 8
    tok = train_tokenizer(words, tmp_path / "tok", 96, model_type="bpe").path
    base = [
        "generate", "--input", str(ASSETS / "speech_en.wav"), "--moshi-weight", str(lm), "--mimi-weight", str(mimi),
        "--tokenizer", str(tok), "--config", "tiny", "--mimi-config", "tiny", "--device", "cpu", "--quiet",
    ]
    assert main([*base, "--quantize", "int8", "--tokens-out", str(tmp_path / "t.safetensors")]) == 0
    assert (tmp_path / "t.safetensors").is_file()
    capsys.readouterr()
    code = main([*base, "--quantize", "int4", "--tokens-out", str(tmp_path / "u.safetensors")])
    assert_one_line_error(code, capsys.readouterr().err, "int4 group size 32")
    assert not (tmp_path / "u.safetensors").exists()
