"""PersonaPlex checkpoints: dep_q = 16 (the Depth Transformer predicts text, the model's 8 codebooks, then the
user's 8). The released key layout, the config inferred from the tensors, teacher-forced parity with moshi 0.2.13's
LMModel built with dep_q = 16, and step-by-step logits of all 16 depth steps equal to teacher forcing."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

import fullduplex as fd
from fullduplex.checkpoint import MOSHI_NAME
from fullduplex.checkpoint.lm import infer_lm_config, tensor_shapes, to_released
from fullduplex.lm import LMConfig, lm_preset

TINY = lm_preset("tiny")
TINY16 = replace(TINY, dep_q=16)
# Shapes only tell widths and counts; this config keeps moshiko's heads and context, so inference recovers it all.
INFERABLE = LMConfig(dim=64, num_layers=2, text_card=96, card=32, depformer_dim=32, depformer_num_layers=2,
                     depformer_dim_feedforward=96, dep_q=16)


def released_shapes(config: LMConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = fd.LMModel(config)
    return {k: tuple(v.shape) for k, v in to_released(model.state_dict()).items()}


def test_personaplex_key_layout_is_moshiko_plus_the_documented_tensors():
    """personaplex.md 1.4: 475 tensors vs 355; 120 added; the 12 depth attention tensors twice as tall."""
    moshiko, persona = released_shapes(lm_preset("moshiko")), released_shapes(lm_preset("personaplex"))
    assert len(moshiko) == 355 and len(persona) == 475
    added = set(persona) - set(moshiko)
    expected = {f"depformer_in.{k}.weight" for k in range(8, 16)} | {f"depformer_emb.{k}.weight" for k in range(7, 15)}
    expected |= {f"linears.{k}.weight" for k in range(8, 16)}
    expected |= {f"depformer.layers.{i}.gating.{k}.linear_{w}.weight" for i in range(6) for k in range(8, 16) for w in ("in", "out")}
    assert added == expected and len(added) == 120 and not set(moshiko) - set(persona)
    changed = {k for k in moshiko if moshiko[k] != persona[k]}
    assert changed == {f"depformer.layers.{i}.self_attn.{n}" for i in range(6) for n in ("in_proj_weight", "out_proj.weight")}
    assert persona["depformer.layers.0.self_attn.in_proj_weight"] == (49152, 1024)
    assert persona["depformer.layers.0.self_attn.out_proj.weight"] == (16384, 1024)
    assert infer_lm_config(persona) == lm_preset("personaplex") and infer_lm_config(moshiko) == lm_preset("moshiko")


def test_tiny_dep16_file_loads_with_config_inferred(tmp_path):
    torch.manual_seed(0)
    model = fd.LMModel(INFERABLE).eval()
    fd.save_lm(model, tmp_path / MOSHI_NAME)
    keys = load_file(str(tmp_path / MOSHI_NAME))
    assert keys["depformer.layers.1.self_attn.in_proj_weight"].shape == (16 * 3 * 32, 32)
    assert "linears.15.weight" in keys and "depformer_emb.14.weight" in keys and "depformer.layers.1.gating.15.linear_in.weight" in keys
    assert infer_lm_config(tensor_shapes(tmp_path / MOSHI_NAME)) == INFERABLE
    # A config.json that names no LM setting (PersonaPlex's stub) is ignored: the tensors tell.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "personaplex", "note": "download counter"}))
    loaded = fd.load_lm(tmp_path)
    assert loaded.config == INFERABLE and loaded.config.own_q == 8 and loaded.config.user_q == 8
    codes = torch.randint(0, 32, (1, 17, 5))
    with torch.no_grad():
        assert torch.equal(model(codes).audio_logits.nan_to_num(), loaded(codes).audio_logits.nan_to_num())


loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """moshi 0.2.13's LMModel built with dep_q = 16 (its loader accepts it), and ours loaded from its weights
    written in the released (PersonaPlex) layout."""
    torch.manual_seed(2)
    reference = loaders.get_moshi_lm(None, TINY16.to_moshi_dict(), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand_like(p) + 0.5)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path_factory.mktemp("pp") / MOSHI_NAME
    save_file(state, str(path))
    return reference.eval(), fd.load_lm(path, config=TINY16)


def test_teacher_forced_logits_equal_the_reference_with_16_depth_steps(pair):
    reference, ours = pair
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, TINY.card, (2, 17, 30), generator=g)
    codes[:, 0] = torch.randint(0, TINY.text_card, (2, 30), generator=g)
    with torch.no_grad():
        ref, out = reference(codes), ours(codes)
    assert out.audio_logits.shape == ref.logits.shape == (2, 16, 30, TINY.card)
    assert torch.equal(out.audio_mask, ref.mask)
    assert (out.audio_logits - ref.logits).nan_to_num().abs().max() < 1e-4
    assert (out.text_logits - ref.text_logits).nan_to_num().abs().max() < 1e-4


def test_step_logits_of_all_16_depth_steps_equal_teacher_forcing(pair):
    """Greedy generation; the user's cb0 of each frame is the model's own prediction for it (fed back), so the
    depth steps over the user's codebooks see in streaming what teacher forcing sees: all 16 steps must match."""
    _, lm = pair
    B, T = 2, 24
    g = torch.Generator().manual_seed(5)
    user = torch.randint(0, TINY.card, (B, 8, T), generator=g)
    gen = fd.Generator(lm, temp=0, temp_text=0)
    text_logits, audio_logits = [], []
    hooks = [lm.text_linear.register_forward_hook(lambda m, i, o: text_logits.append(o.detach().clone()))]
    hooks += [lin.register_forward_hook(lambda m, i, o: audio_logits.append(o.detach().clone())) for lin in lm.linears]
    outs = []
    try:
        with gen.streaming(B):
            for t in range(T):
                if t > 0:  # the user cb0 the model sampled for this frame at the previous step
                    cache, columns = gen.state.cache, gen.state.cache.shape[2]
                    user[:, 0, t] = cache[:, 1 + 8, t % columns]
                outs.append(gen.step(user[..., t : t + 1]))
    finally:
        for h in hooks:
            h.remove()
    assert outs[0] is None and outs[1].shape == (B, 9, 1)  # text + the model's 8 codebooks, as for moshiko
    generated = torch.cat(outs[1:], dim=-1)
    codes = torch.cat([generated, user[:, :, 1:T]], dim=1)  # [B, 17, T - 1]
    with torch.no_grad():
        forced = lm(codes)
    stepped_text = torch.cat(text_logits, dim=1)[:, : T - 1]
    assert (stepped_text - forced.text_logits[:, 0]).abs().max() < 1e-4
    stepped = torch.stack(audio_logits, 0).view(T, 16, B, 1, -1)[:, :, :, 0]  # [T, 16, B, card]
    checked = 0
    for k in range(16):
        delay = TINY16.delays[1 + k]
        for t in range(T - 1):
            # At step 0 the depth steps after cb1 take the samples of frame -1 for the delayed codebooks where
            # teacher forcing has initial tokens (as in the reference generator): user cb0 of frame 0 differs.
            if t == 0 and k >= 2:
                continue
            if t + delay < T and forced.audio_mask[0, k, t]:
                assert (stepped[t + delay, k] - forced.audio_logits[:, k, t]).abs().max() < 1e-4, (k, t)
                checked += 1
    assert checked > 16 * (T - 3)


def test_first_eight_depth_steps_alone_give_the_same_greedy_tokens(pair):
    """personaplex.md 1.4: dropping steps 8..15 leaves a dep_q = 8 model with the same greedy agent tokens."""
    _, lm = pair
    state = {k: v for k, v in lm.state_dict().items()}
    cut = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("depformer_in", "linears") and int(parts[1]) >= 8 or parts[0] == "depformer_emb" and int(parts[1]) >= 7:
            continue
        if key.startswith("depformer.layers.") and parts[3] == "gating" and int(parts[4]) >= 8:
            continue
        cut[key] = value[:8] if key.endswith(("self_attn.in_proj", "self_attn.out_proj")) else value
    small = fd.LMModel(TINY).eval()
    small.load_state_dict(cut)
    user = torch.randint(0, TINY.card, (2, 8, 20), generator=torch.Generator().manual_seed(9))
    runs = []
    for model in (lm, small):
        gen = fd.Generator(model, temp=0, temp_text=0)
        with gen.streaming(2):
            runs.append(torch.cat([gen.step(user[..., t : t + 1]) for t in range(20)][1:], dim=-1))
    assert torch.equal(runs[0], runs[1])
