"""MLX checkpoints (moshi_mlx 0.3.0 on mlx 0.32.4, CPU) against ours, and our exports against moshi_mlx.

MLX is the oracle for the *format* (names, packing, ``mx.dequantize``); the PyTorch reference moshi==0.2.13 is
the oracle for *behaviour* (greedy tokens on the same dequantized weights): moshi_mlx's own generator does not
give the reference's greedy tokens even from identical fp32 weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fullduplex as fd
from fullduplex.checkpoint.mlx import is_mlx_keys, mlx_to_ours, ours_to_mlx
from fullduplex.errors import CheckpointError
from fullduplex.lm import LMConfig
from fullduplex.lm.quantize import QuantEmbedding
from fullduplex.nn.quant import Int4Linear, unpack_codes

mx = pytest.importorskip("mlx.core", reason="MLX oracle: pip install mlx==0.32.4 mlx-cpu==0.32.4")
mlx_nn = pytest.importorskip("mlx.nn")
mlx_lm = pytest.importorskip("moshi_mlx.models.lm", reason="MLX oracle: pip install --no-deps moshi_mlx==0.3.0")
loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")
from mlx.utils import tree_flatten  # noqa: E402
from moshi.models import lm as reference_lm  # noqa: E402

# Every linear input size and embedding width a multiple of 64 (q8) and 32 (q4); FFN widths as moshi_mlx derives
# them (dim 256 -> 704, depformer 192 -> 128).
CONFIG = LMConfig(
    dim=256, num_heads=4, num_layers=2, context=24, text_card=96, card=32, depformer_dim=64,
    depformer_num_heads=2, depformer_num_layers=2, depformer_dim_feedforward=192,
)
QUANT = {"bf16": None, "q8": (8, 64), "q4": (4, 32)}
STEPS = 60


def to_torch(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a.astype(mx.float32)))


def mlx_model(fmt: str):
    """moshi_mlx's Lm for CONFIG as its loaders prepare it: bf16, then nn.quantize for q8 / q4."""
    cfg = mlx_lm.LmConfig.from_config_dict(CONFIG.to_moshi_dict())
    model = mlx_lm.Lm(cfg)
    model.set_dtype(mx.bfloat16)
    if QUANT[fmt]:
        bits, group = QUANT[fmt]
        mlx_nn.quantize(model, bits=bits, group_size=group)
    return model, cfg


def dequantized_params(model, fmt: str, exact: bool = False) -> dict[str, torch.Tensor]:
    """MLX name → fp32 tensor: ``mx.dequantize`` of quantized weights, the others as stored. ``exact``: in fp32
    arithmetic (the value the codes stand for), not in the scales' bf16 (what moshi_mlx computes)."""
    params = dict(tree_flatten(model.parameters()))
    out = {}
    for name, value in params.items():
        if name.endswith((".scales", ".biases")):
            continue
        base = name[: -len(".weight")]
        if f"{base}.scales" in params:
            bits, group = QUANT[fmt]
            scales, biases = params[f"{base}.scales"], params[f"{base}.biases"]
            if exact:
                scales, biases = scales.astype(mx.float32), biases.astype(mx.float32)
            value = mx.dequantize(value, scales, biases, group_size=group, bits=bits)
        out[name] = to_torch(value)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The reference's random weights in the released format, and the MLX files moshi_mlx makes from them
    through its own PyTorch-to-MLX key map."""
    root = tmp_path_factory.mktemp("mlx")
    torch.manual_seed(1)
    reference = loaders.get_moshi_lm(None, CONFIG.to_moshi_dict(), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand_like(p) + 0.5)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(root / "reference.safetensors"))
    ours = fd.load_lm(root / "reference.safetensors", config=CONFIG)
    released = fd.save_lm(ours, root / "model.safetensors")  # fused names: what moshi_mlx's key map reads
    out = {"released": released, "ours": ours, "root": root}
    for fmt in QUANT:
        cfg = mlx_lm.LmConfig.from_config_dict(CONFIG.to_moshi_dict())
        model = mlx_lm.Lm(cfg)
        model.load_pytorch_weights(str(released), cfg, strict=True)
        model.set_dtype(mx.bfloat16)
        if QUANT[fmt]:
            bits, group = QUANT[fmt]
            mlx_nn.quantize(model, bits=bits, group_size=group)
        path = root / f"model.{fmt}.safetensors"
        model.save_weights(str(path))
        out[fmt] = path
        out[f"{fmt}-model"] = model
    return out


def greedy_tokens(model, T: int = STEPS) -> list[torch.Tensor]:
    user = torch.randint(0, CONFIG.card, (1, 8, T), generator=torch.Generator().manual_seed(3))
    if isinstance(model, fd.LMModel):
        gen = fd.Generator(model, temp=0, temp_text=0)
    else:
        gen = reference_lm.LMGen(model, use_sampling=False)
    with gen.streaming(1):
        out = [gen.step(user[..., t : t + 1]) for t in range(T)]
    assert out[0] is None
    return out[1:]


def reference_on(lm: fd.LMModel, path) -> torch.nn.Module:
    """The PyTorch reference running exactly ``lm``'s (dequantized) weights."""
    fd.save_lm(lm, path)
    return loaders.get_moshi_lm(str(path), CONFIG.to_moshi_dict(), device="cpu", dtype=torch.float32).eval()


# --- reading ------------------------------------------------------------------------------------------------
def test_key_table_is_a_bijection_on_a_real_file(files):
    """Every MLX name maps to one of ours and back (per-step tensors and shared norms fan out per slice)."""
    names = {k for k in dict(tree_flatten(files["bf16-model"].parameters()))}
    state = files["ours"].state_dict()
    assert is_mlx_keys(names) and not is_mlx_keys(state)
    back = {name for key, value in state.items() for name, _ in ours_to_mlx(key, value, CONFIG.dep_q)}
    assert back == names
    for name in names:
        key, _, _ = mlx_to_ours(name)
        assert key in state, name
    assert mlx_to_ours("depformer.slices.0.emb.weight")[0] == "depformer_text_emb.weight"
    assert mlx_to_ours("depformer.slices.3.emb.weight")[0] == "depformer_emb.2.weight"
    assert mlx_to_ours("extra_heads.0.weight") is None


@pytest.mark.parametrize("fmt", list(QUANT))
def test_every_dequantized_tensor_equals_mx_dequantize(files, fmt):
    lm = fd.load_lm(files[fmt], config=CONFIG)
    assert lm.out_norm.alpha.dtype == torch.bfloat16  # MLX values are bf16: the default keeps them so, exactly
    state = lm.state_dict()
    expected = dequantized_params(files[f"{fmt}-model"], fmt)
    assert len(expected) == 151
    for name, value in expected.items():
        key, kind, step = mlx_to_ours(name)
        got = state[key][step] if kind == "step" else state[key]
        assert torch.equal(got.reshape(value.shape).float(), value), name


@pytest.mark.parametrize("fmt", list(QUANT))
def test_greedy_generation_matches_reference_on_the_dequantized_weights(files, fmt, tmp_path):
    lm = fd.load_lm(files[fmt], config=CONFIG, dtype=torch.float32)
    expected = greedy_tokens(reference_on(lm, tmp_path / "deq.safetensors"))
    got = greedy_tokens(lm)
    for t, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert torch.equal(a, b), f"{fmt} step {t + 1}"
    assert len({int(x) for x in torch.cat(got, -1)[0, 0]}) > 3  # not a constant stream


def test_format_is_read_from_keys_not_the_name(files, tmp_path):
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(files["q8"].read_bytes())
    a = fd.load_lm(renamed, config=CONFIG).state_dict()
    b = fd.load_lm(files["q8"], config=CONFIG).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "model.q4.safetensors").write_bytes(files["q4"].read_bytes())
    assert fd.load_lm(tmp_path / "folder", config=CONFIG) is not None  # a folder of an MLX repo


def test_q4_runs_as_int4_with_the_files_own_codes(files):
    """``quantize="int4"`` keeps MLX's 4-bit codes and scales (no float copy) and runs them."""
    lm = fd.load_lm(files["q4"], config=CONFIG, quantize="int4", dtype=torch.float32)
    params = dict(tree_flatten(files["q4-model"].parameters()))
    layer = lm.transformer.layers[1].gating.linear_in
    assert isinstance(layer, Int4Linear)
    base = "transformer.layers.1.gating.linear_in"
    codes = unpack_codes(torch.from_numpy(np.array(params[f"{base}.weight"])), 4)
    assert torch.equal(layer.codes(), codes)
    assert torch.equal(layer.scales_and_zeros[..., 0].float().T, to_torch(params[f"{base}.scales"]))
    emb = lm.emb[3]
    assert isinstance(emb, QuantEmbedding) and emb.bits == 4
    assert torch.equal(emb.codes(), unpack_codes(torch.from_numpy(np.array(params["audio_embs.3.weight"])), 4))
    step = lm.depformer.layers[0].self_attn.in_projs[5]
    base = "depformer.slices.5.transformer.layers.0.self_attn.in_proj"
    assert torch.equal(step.codes(), unpack_codes(torch.from_numpy(np.array(params[f"{base}.weight"])), 4))
    # Same codes, zero point rounded to bf16, bf16 activations in the kernel: close to the float run.
    float_lm = fd.load_lm(files["q4"], config=CONFIG, dtype=torch.float32)
    codes_in = torch.randint(0, CONFIG.card, (1, CONFIG.num_streams, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = lm(codes_in), float_lm(codes_in)
    m = b.audio_mask
    agree = (a.audio_logits[m].argmax(-1) == b.audio_logits[m].argmax(-1)).float().mean()
    assert agree > 0.9, agree
    assert len(greedy_tokens(lm, 10)) == 9


def test_q8_loads_into_int8(files):
    lm = fd.load_lm(files["q8"], config=CONFIG, quantize="int8")
    params = dict(tree_flatten(files["q8-model"].parameters()))
    emb = lm.text_emb
    assert isinstance(emb, QuantEmbedding) and emb.bits == 8 and emb.group_size == 64
    assert torch.equal(emb.codes(), unpack_codes(torch.from_numpy(np.array(params["text_emb.weight"])), 8))
    # Linear groups of 64 become per-channel int8: within one per-channel step of the dequantized weight.
    float_lm = fd.load_lm(files["q8"], config=CONFIG)
    layer, w = lm.text_linear, float_lm.text_linear.weight
    assert (layer.dequantize() - w).abs().max() <= layer.scales.float().max() * 0.51
    assert len(greedy_tokens(lm, 10)) == 9


# --- writing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mlx-q8", "mlx-q4", "mlx-bf16"])
def test_export_loads_in_moshi_mlx_strict_and_round_trips(files, fmt, tmp_path):
    ours = files["ours"]
    out = tmp_path / fmt
    path = fd.save_mlx(ours, out, fmt)
    short = fmt.removeprefix("mlx-")
    assert path.name == {"q8": "model.q8.safetensors", "q4": "model.q4.safetensors", "bf16": "model.safetensors"}[short]
    # moshi_mlx's own loading path: its LmConfig from the config.json we wrote, bf16, nn.quantize, strict.
    cfg = mlx_lm.LmConfig.from_config_dict(json.loads((out / "config.json").read_text()))
    model = mlx_lm.Lm(cfg)
    model.set_dtype(mx.bfloat16)
    if QUANT[short]:
        mlx_nn.quantize(model, bits=QUANT[short][0], group_size=QUANT[short][1])
    model.load_weights(str(path), strict=True)
    # 8-bit steps are finer than bf16's own rounding at the larger weights: compare the codes' exact values.
    loaded = dequantized_params(model, short, exact=True)
    original = ours.state_dict()
    params = dict(tree_flatten(model.parameters()))
    for name, value in loaded.items():
        key, kind, step = mlx_to_ours(name)
        want = (original[key][step] if kind == "step" else original[key]).reshape(value.shape)
        base = name[: -len(".weight")]
        if f"{base}.scales" in params:  # within one step (the group's scale) of the original rounded to bf16
            step_size = to_torch(params[f"{base}.scales"]).abs().repeat_interleave(QUANT[short][1], dim=-1)
            assert ((value - want).abs() <= step_size + want.abs() * 2**-8).all(), name
        else:
            assert torch.allclose(value, want, rtol=2**-8, atol=0), name
    back = fd.load_lm(out, config=CONFIG, dtype=torch.float32)
    expected = greedy_tokens(reference_on(back, tmp_path / "deq.safetensors"))
    for t, (a, b) in enumerate(zip(greedy_tokens(back), expected, strict=True)):
        assert torch.equal(a, b), f"{fmt} step {t + 1}"


def test_export_of_a_quantized_model(files, tmp_path):
    lm = fd.load_lm(files["released"], config=CONFIG, quantize="int4")
    path = fd.save_mlx(lm, tmp_path, "mlx-q4")
    model, _ = mlx_model("q4")
    model.load_weights(str(path), strict=True)


# --- errors -------------------------------------------------------------------------------------------------
def test_config_that_does_not_fit_a_q4_file_names_the_key(files):
    wrong = LMConfig(**{**CONFIG.to_dict(), "dim": 240, "num_heads": 4})
    with pytest.raises(CheckpointError, match=r"holds .* packed words .* input size 240"):
        fd.load_lm(files["q4"], config=wrong)


def test_truncated_file_is_one_clear_error(files, tmp_path):
    data = files["q8"].read_bytes()
    bad = tmp_path / "model.q8.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.q8.safetensors"):
        fd.load_lm(bad, config=CONFIG)


def test_unknown_and_inconsistent_keys_are_named(files, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(files["bf16"]))
    extra = dict(state, **{"extra_heads.0.weight": torch.zeros(6, 256, dtype=torch.bfloat16)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected: extra_heads\.0\.weight"):
        fd.load_lm(tmp_path / "extra.safetensors", config=CONFIG)
    key = "depformer.slices.4.transformer.layers.1.norm2.weight"
    differ = dict(state, **{key: state[key] + 1})
    save_file(differ, str(tmp_path / "differ.safetensors"))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        fd.load_lm(tmp_path / "differ.safetensors", config=CONFIG)
    missing = {k: v for k, v in state.items() if not k.startswith("depformer.slices.7.transformer.layers.0.self_attn.in_proj")}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"depformer\.layers\.0\.self_attn\.in_proj.*\[7\]"):
        fd.load_lm(tmp_path / "missing.safetensors", config=CONFIG)
