"""Speech-to-text models (Kyutai STT: dep_q = 0, grouped-query attention, extra heads, text_card_out, norm_emb,
bias_proj) against the reference (moshi==0.2.13) on shared random weights, and a dialogue model with kv_repeat.

moshi 0.2.13's teacher-forced ``forward`` asserts a Depth Transformer, so STT-shaped models are compared through
``LMGen`` streaming (greedy tokens, extra heads) and ``forward_text`` (logits).
"""

from __future__ import annotations

import pytest
import torch

import fullduplex as fd
from fullduplex.lm import LMConfig
from tests.helpers import random_reference_lm, write_released_lm

loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")
from moshi.models import lm as reference_lm  # noqa: E402

# An STT-shaped tiny model: text out only, 8 user codebooks, the text stream 3 frames late (as the STT models'
# text lags their audio), GQA, two extra heads, a text head smaller than the input vocabulary.
STT = LMConfig(
    dim=64, num_heads=4, num_layers=2, hidden_scale=2.0, context=12, text_card=96, text_card_out=90, card=32, n_q=8,
    dep_q=0, delays=(3,) + (0,) * 8, kv_repeat=2, norm_emb=True, bias_proj=True, extra_heads_num_heads=2,
    extra_heads_dim=6, model_type="stt",
)
# A dialogue-shaped tiny model with GQA in both transformers (the reference applies kv_repeat to the depformer too).
DIALOGUE = LMConfig(
    dim=64, num_heads=4, num_layers=2, context=12, text_card=96, card=32, depformer_dim=32, depformer_num_heads=2,
    depformer_num_layers=2, depformer_dim_feedforward=64, kv_repeat=2, bias_proj=True,
)


def reference_model(config: LMConfig, seed: int = 1):
    return random_reference_lm(config.to_moshi_dict(), seed)


def released_folder(model, config: LMConfig, folder, extra: dict | None = None):
    """A model folder as released: model.safetensors in the reference's names, config.json with its LM kwargs."""
    raw = {k: v for k, v in config.to_moshi_dict().items() if k in LMConfig.__dataclass_fields__}
    return write_released_lm(model, {**raw, **(extra or {})}, folder)


@pytest.fixture(scope="module")
def stt_pair(tmp_path_factory):
    reference = reference_model(STT)
    folder = released_folder(reference, STT, tmp_path_factory.mktemp("stt"), {
        "model_type": "stt", "stt_config": {"audio_delay_seconds": 0.24, "audio_silence_prefix_seconds": 0.0},
    })
    return reference, fd.load_lm(folder)


def test_stt_checkpoint_loads_with_released_names(stt_pair):
    reference, ours = stt_pair
    assert ours.config == STT and ours.depformer is None and len(ours.linears) == 0
    names = set(ours.state_dict())
    assert {"extra_heads.1.weight", "text_linear.bias", "emb.7.norm.bias", "text_emb.norm.weight"} <= names
    assert ours.transformer.layers[0].self_attn.in_proj.weight.shape == (64 + 2 * 32, 64)  # q | k, v of 2 heads


def test_stt_logits_match_forward_text(stt_pair):
    reference, ours = stt_pair
    B, T = 2, 30  # > context 12: the sliding window matters
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, STT.card, (B, STT.num_streams, T), generator=g)
    tokens[:, 0] = torch.randint(0, STT.text_card, (B, T), generator=g)
    tokens[0, 4, 5] = -1  # a zero token
    with torch.no_grad():
        ref_hidden, ref_logits = reference.forward_text(tokens)
        hidden, logits = ours.temporal(tokens)
    assert logits.shape == (B, T, STT.text_card_out)
    assert (logits - ref_logits[:, 0]).abs().max() < 1e-4
    assert logits.abs().max() > 0.1  # not vacuous
    ref_heads = [torch.softmax(h(ref_hidden), -1) for h in reference.extra_heads]
    for got, want in zip(ours.extra_head_probs(hidden), ref_heads, strict=True):
        assert (got - want).abs().max() < 1e-5


def test_stt_teacher_forced_forward_is_text_only(stt_pair):
    _, ours = stt_pair
    codes = torch.randint(0, STT.card, (1, STT.num_streams, 10))
    codes[:, 0] = torch.randint(0, STT.text_card, (1, 10))
    out = ours(codes)
    assert out.audio_logits.shape == (1, 0, 10, STT.card) and out.text_logits.shape == (1, 1, 10, 90)
    assert out.text_mask[0, 0, :7].all() and not out.text_mask[0, 0, 7:].any()  # text delayed 3 frames


def run_reference(reference, user: torch.Tensor, heads: bool = False):
    gen = reference_lm.LMGen(reference, use_sampling=False, temp=0.0, temp_text=0.0)
    with gen.streaming(user.shape[0]):
        if heads:
            return [gen.step_with_extra_heads(user[..., t : t + 1]) for t in range(user.shape[-1])]
        return [gen.step(user[..., t : t + 1]) for t in range(user.shape[-1])]


def test_stt_greedy_generation_and_extra_heads_match_reference(stt_pair):
    """60 steps (5 contexts), batch of 2: the same text tokens and extra-head probabilities at every step."""
    reference, ours = stt_pair
    B, T = 2, 60
    user = torch.randint(0, STT.card, (B, STT.n_q, T), generator=torch.Generator().manual_seed(3))
    expected = run_reference(reference, user, heads=True)
    gen = fd.Generator(ours, temp=0.0, temp_text=0.0)
    with gen.streaming(B):
        got = [gen.step_with_extra_heads(user[..., t : t + 1]) for t in range(T)]
    steps = 0
    for t in range(T):
        if expected[t] is None:
            assert got[t] is None, f"step {t}"
            continue
        (out, heads), (want, want_heads) = got[t], expected[t]
        assert out.shape == (B, 1, 1) and torch.equal(out, want), f"step {t}"
        for a, b in zip(heads, want_heads, strict=True):
            assert a.shape == (B, 1, 6) and (a - b).abs().max() < 1e-5, f"step {t}"
        steps += 1
    assert steps >= 50
    tokens = torch.cat([g[0] for g in got if g is not None], dim=-1)
    assert len(tokens.unique()) > 3  # not a constant stream


def test_stt_streaming_reset_leaves_other_items_alone(stt_pair):
    """Item 1 restarted halfway equals a fresh run of its second half; item 0 is untouched."""
    _, ours = stt_pair
    T = 24
    user = torch.randint(0, STT.card, (2, STT.n_q, T), generator=torch.Generator().manual_seed(5))
    gen = fd.Generator(ours, temp=0.0, temp_text=0.0)

    def run(codes, reset_at=None):
        outs = []
        with gen.streaming(codes.shape[0]):
            for t in range(codes.shape[-1]):
                if t == reset_at:
                    gen.reset(torch.tensor([False, True]))
                outs.append(gen.step(codes[..., t : t + 1]))
        return outs

    both = run(user, reset_at=12)
    alone0 = run(user[:1])
    second = run(user[1:, :, 12:])
    for t in range(STT.max_delay, T):
        assert torch.equal(both[t][0], alone0[t][0])
    for t in range(12 + STT.max_delay, T):
        assert torch.equal(both[t][1], second[t - 12][0])


@pytest.fixture(scope="module")
def dialogue_pair(tmp_path_factory):
    reference = reference_model(DIALOGUE, seed=2)
    return reference, fd.load_lm(released_folder(reference, DIALOGUE, tmp_path_factory.mktemp("gqa")))


def test_gqa_dialogue_teacher_forced_and_greedy_match_reference(dialogue_pair):
    reference, ours = dialogue_pair
    assert ours.depformer.layers[0].self_attn.in_proj.shape == (DIALOGUE.dep_q, 32 + 2 * 16, 32)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, DIALOGUE.card, (2, DIALOGUE.num_streams, 30), generator=g)
    codes[:, 0] = torch.randint(0, DIALOGUE.text_card, (2, 30), generator=g)
    with torch.no_grad():
        ref, out = reference(codes), ours(codes)
    assert (out.text_logits - ref.text_logits).nan_to_num().abs().max() < 1e-4
    assert (out.audio_logits - ref.logits).nan_to_num().abs().max() < 1e-4
    user = torch.randint(0, DIALOGUE.card, (2, 8, 55), generator=g)
    expected = run_reference(reference, user)
    gen = fd.Generator(ours, temp=0.0, temp_text=0.0)
    with gen.streaming(2):
        got = [gen.step(user[..., t : t + 1]) for t in range(55)]
    for t in range(1, 55):
        assert torch.equal(got[t], expected[t]), f"step {t}"


def test_transcribe_steps_as_the_reference_run_inference(tmp_path):
    """``transcribe``'s text tokens equal moshi's ``run_inference`` procedure for STT models (silence prefix and
    tail from stt_config, the first frame stepped twice, LMGen) on the same weights and Mimi codes."""
    from dataclasses import replace

    from fullduplex.demo import demo_files, demo_mimi_config
    from fullduplex.inference.transcribe import SttConfig, transcribe
    from fullduplex.text import train_tokenizer
    from tests.helpers import speech

    config = replace(STT, card=256)  # the demo Mimi's codebooks: a trained codec, so codes follow the audio
    reference = reference_model(config, seed=4)
    ours = fd.load_lm(released_folder(reference, config, tmp_path / "model"))
    mimi = fd.load_mimi(demo_files()["mimi"], num_codebooks=None, config=demo_mimi_config()).eval()
    mimi.num_codebooks = config.n_q
    words = ["hello there", "how are you", "fine thanks", "good morning", "see you later", "what is that"] * 8
    tokenizer = train_tokenizer(words, tmp_path / "tok", 96, model_type="bpe")
    stt = SttConfig(audio_delay_seconds=0.24, audio_silence_prefix_seconds=0.16)
    wav = speech(1.0)[0]  # [1, S]
    (result,) = transcribe([wav], mimi, ours, tokenizer, stt)

    # moshi/run_inference.py for model_type "stt": pad, keep whole frames, step the first frame twice.
    padded = torch.nn.functional.pad(wav, (int(0.16 * 24000), int((0.24 + 1.0) * 24000)))
    frames = padded.shape[-1] // 1920
    with torch.inference_mode(), mimi.streaming(1):  # one call: streaming Mimi gives the same codes for any chunk
        codes = mimi.encode(padded[None, :, : frames * 1920]).split(1, dim=-1)
    gen = reference_lm.LMGen(reference, use_sampling=False, temp=0.0, temp_text=0.0)
    returned = []  # what each step returned, the duplicated first step included
    with torch.no_grad(), gen.streaming(1):
        for f, c in enumerate(codes):
            if f == 0:
                returned.append(gen.step(c))
            returned.append(gen.step(c))
    lag = config.max_delay - config.delays[0]
    compared = 0
    for f in range(frames):  # our frame f: the token sampled at step f + 1, returned at step f + 1 + lag
        step = f + 1 + lag
        if step < len(returned) and returned[step] is not None:
            assert int(result.tokens[f]) == int(returned[step][0, 0, 0]), f"frame {f}"
            compared += 1
    assert compared >= 25 and len(set(result.tokens.tolist())) > 3


def test_stt_architecture_inferred_from_its_tensors(stt_pair, tmp_path):
    """Without a config.json: dep_q 0, GQA, norm_emb, bias_proj, the extra heads and text_card_out come from the
    tensors (heads, context and delays, which shapes cannot tell, from the base)."""
    from dataclasses import replace

    from fullduplex.checkpoint.lm import infer_lm_config, tensor_shapes

    _, ours = stt_pair
    path = fd.save_lm(ours, tmp_path / "model.safetensors")
    base = replace(LMConfig(), num_heads=4, context=12, hidden_scale=2.0, n_q=8, dep_q=0, delays=STT.delays)
    assert infer_lm_config(tensor_shapes(path), base) == replace(STT, model_type="moshi")  # the type is not in the tensors


def test_stt_step_logits_equal_teacher_forced_logits(stt_pair):
    """Greedy STT generation recording the text logits, then teacher forcing of the produced text and the user's
    audio: the same logits (our ``forward`` runs text-only for dep_q 0)."""
    _, lm = stt_pair
    B, T, d = 2, 30, STT.delays[0]
    user = torch.randint(0, STT.card, (B, STT.n_q, T), generator=torch.Generator().manual_seed(9))
    logits = []
    hook = lm.text_linear.register_forward_hook(lambda m, i, o: logits.append(o.detach().clone()))
    try:
        gen = fd.Generator(lm, temp=0, temp_text=0)
        with gen.streaming(B):
            outs = [gen.step(user[..., t : t + 1]) for t in range(T)]
    finally:
        hook.remove()
    # Step s samples text frame s - d (the text stream is d frames late) and hears user frame s, which is teacher
    # forcing's audio frame s - 1 (the generator's first frame only feeds initial tokens).
    frames = T - d
    text = torch.cat([outs[t + d][:, :, 0] for t in range(frames)], dim=1)  # [B, frames]
    codes = torch.cat([text[:, None], user[:, :, 1 : frames + 1]], dim=1)  # [B, 9, frames]
    with torch.no_grad():
        forced = lm(codes)
    stepped = torch.cat(logits, dim=1)  # [B, T, V]: step s predicts text frame s - d
    valid = forced.text_mask[0, 0]
    assert valid.sum() >= 20
    assert (stepped[:, d:T][:, valid] - forced.text_logits[:, 0][:, valid]).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["int8"])
def test_stt_quantized_keeps_biases_normed_embeddings_and_extra_heads_float(stt_pair, tmp_path, mode):
    reference, ours = stt_pair
    folder = released_folder(reference, STT, tmp_path / "model")
    quantized = fd.load_lm(folder, quantize=mode)
    assert quantized.text_linear.bias is not None and quantized.emb[0].norm is not None
    assert isinstance(quantized.extra_heads[0], torch.nn.Linear)
    assert type(quantized.transformer.layers[0].gating.linear_in) is not torch.nn.Linear  # the rest is quantized
    tokens = torch.randint(0, STT.card, (1, STT.num_streams, 8))
    with torch.no_grad():
        want, got = ours.temporal(tokens)[1], quantized.temporal(tokens)[1]
    assert (got - want).abs().max() < 0.1 * want.abs().max()
