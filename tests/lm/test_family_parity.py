"""Hibiki- and Kyutai-TTS-shaped LMs against the reference (moshi==0.2.13) on shared random weights: conditions
(lookup tables summed into the input, voice embeddings through cross-attention), low-rank and demultiplexed
depth embeddings, a weights-per-step schedule, per-step depth norms, classifier-free guidance."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import fullduplex as fd
from fullduplex.lm import LMConfig
from fullduplex.lm.conditioners import null_conditions, voice_condition
from tests.helpers import random_reference_lm, write_released_lm

loaders = pytest.importorskip("moshi.models.loaders", reason="reference oracle: pip install --no-deps moshi==0.2.13")
from moshi.conditioners import ConditionAttributes, TensorCondition  # noqa: E402
from moshi.models import lm as reference_lm  # noqa: E402

BASE = dict(
    dim=64, num_heads=4, num_layers=2, hidden_scale=4.125, context=12, text_card=96, card=32, depformer_dim=32,
    depformer_num_heads=2, depformer_num_layers=2, depformer_dim_feedforward=64, max_period=10000.0,
    existing_text_padding_id=3, causal=True, layer_scale=None, gating="silu", norm="rms_norm_f32",
    positional_embedding="rope", depformer_max_period=10000.0, depformer_gating="silu", depformer_pos_emb="none",
    depformer_weights_per_step=True, depformer_multi_linear=True, depformer_layer_scale=None,
)
HIBIKI = dict(
    BASE, n_q=16, dep_q=8, delays=[0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], depformer_context=8,
    model_type="hibiki",
    conditioners={"description": {"type": "lut", "lut": {
        "n_bins": 31, "dim": 16, "tokenizer": "noop", "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"]}}},
    fuser={"sum": ["description"], "cross": [], "prepend": []},
)
VOICE_DIM, VOICE_T, SPEAKERS = 12, 5, 2
TTS = dict(
    BASE, n_q=4, dep_q=4, delays=[0, 0, 2, 2, 2], depformer_context=4, depformer_low_rank_embeddings=8,
    depformer_weights_per_step_schedule=[0, 1, 1, 2], depformer_norm="layer_norm", demux_second_stream=True,
    cross_attention=True, tts_config={"audio_delay": 0.32, "second_stream_ahead": 2},
    conditioners={
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": VOICE_DIM}},
        "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop", "possible_values": ["1.0", "1.5", "2.0"]}},
        "control": {"type": "lut", "lut": {"n_bins": 3, "dim": 16, "tokenizer": "noop", "possible_values": ["ok"]}},
    },
    fuser={"sum": ["control", "cfg"], "cross": ["speaker_wavs"], "cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1.0},
)
NOT_LM = ("model_type", "tts_config")


def build_reference(config: dict, seed: int):
    model = random_reference_lm({k: v for k, v in copy.deepcopy(config).items() if k not in NOT_LM}, seed)
    if config.get("model_type") == "hibiki":  # what the reference's CheckpointInfo.get_moshi does
        model.text_emb.weight.data[2] = model.text_emb.weight.data[3]
    return model


def released_pair(tmp_path_factory, config: dict, seed: int):
    reference = build_reference(config, seed)
    return reference, fd.load_lm(write_released_lm(reference, config, tmp_path_factory.mktemp(config.get("model_type", "lm"))))


@pytest.fixture(scope="module")
def hibiki(tmp_path_factory):
    return released_pair(tmp_path_factory, HIBIKI, 1)


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    return released_pair(tmp_path_factory, TTS, 2)


def random_codes(config: LMConfig, B: int, T: int, seed: int = 0, demux: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, config.card, (B, config.num_streams, T), generator=g)
    codes[:, 0] = torch.randint(0, config.text_card, (B, T), generator=g)
    if demux:  # a second text stream on some frames: (second + 1) * (text_card + 1) + first
        second = torch.randint(-1, config.text_card, (B, T), generator=g)
        codes[:, 0] += (second + 1) * (config.text_card + 1)
    return codes


def voices(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, VOICE_DIM, VOICE_T, generator=g) for _ in range(SPEAKERS)]


def tts_conditions(seed: int, cfg: str | None = "1.5") -> tuple[dict, ConditionAttributes]:
    """Ours and the reference's for the same voices (the reference's as TTSModel.make_condition_attributes)."""
    embs = voices(seed)
    ours = {"speaker_wavs": voice_condition(embs, max_speakers=3), "cfg": cfg, "control": "ok"}
    tensor = torch.zeros(1, 3, VOICE_T, VOICE_DIM)
    mask = torch.zeros(1, 3, VOICE_T, dtype=torch.bool)
    for i, emb in enumerate(embs):
        tensor[:, i] = emb.transpose(1, 2)
        mask[:, i] = True
    ref = ConditionAttributes(
        text={"cfg": cfg, "control": "ok"},
        tensor={"speaker_wavs": TensorCondition(tensor.view(1, -1, VOICE_DIM), mask.view(1, -1))},
    )
    return ours, ref


def test_configs_load_with_released_keys(hibiki, tts):
    _, ours = hibiki
    assert ours.config.model_type == "hibiki" and ours.condition_provider is not None
    _, ours = tts
    cfg = ours.config
    assert cfg.demux_second_text_stream and cfg.cross_attention and not cfg.user_audio and cfg.own_q == 4
    assert cfg.depth_weights == 3 and len(ours.depformer_in) == 3


def test_hibiki_eos_reads_as_pad(hibiki):
    _, ours = hibiki
    assert torch.equal(ours.text_emb.weight[2], ours.text_emb.weight[3])


def test_hibiki_teacher_forced_logits(hibiki):
    reference, ours = hibiki
    codes = random_codes(ours.config, 2, 20)
    conditions = [{"description": "very_good"}, {"description": None}]
    attrs = [ConditionAttributes(text={"description": c["description"]}) for c in conditions]
    with torch.no_grad():
        ref = reference(codes, reference.condition_provider.prepare_and_provide(attrs))
        out = ours(codes, conditions)
    assert (out.text_logits - ref.text_logits).nan_to_num().abs().max() < 1e-4
    assert (out.audio_logits - ref.logits).nan_to_num().abs().max() < 1e-4
    with torch.no_grad():  # the condition changes the output (not vacuous)
        other = ours(codes, [{"description": "very_bad"}] * 2)
    assert (other.text_logits - out.text_logits).nan_to_num().abs().max() > 1e-3


def test_tts_teacher_forced_logits(tts):
    reference, ours = tts
    codes = random_codes(ours.config, 2, 20, demux=True)
    codes[1, 0, 3] = -1  # a zero token in the text stream
    (c0, r0), (c1, r1) = tts_conditions(0), tts_conditions(1, cfg=None)
    with torch.no_grad():
        ref = reference(codes, reference.condition_provider.prepare_and_provide([r0, r1]))
        out = ours(codes, [c0, c1])
    assert (out.text_logits - ref.text_logits).nan_to_num().abs().max() < 1e-4
    assert (out.audio_logits - ref.logits).nan_to_num().abs().max() < 1e-4
    assert out.audio_logits.nan_to_num().abs().max() > 0.1


def run_reference(reference, steps: int, inputs: torch.Tensor, attrs, cfg_coef: float, **kwargs) -> list:
    conditions = reference.condition_provider.prepare_and_provide(attrs)
    gen = reference_lm.LMGen(reference, use_sampling=False, cfg_coef=cfg_coef, condition_tensors=conditions, **kwargs)
    with gen.streaming(inputs.shape[0]):
        return [gen.step(inputs[..., t : t + 1]) for t in range(steps)]


def run_ours(ours, steps: int, inputs: torch.Tensor, conditions, nulls, cfg_coef: float, **kwargs) -> list:
    gen = fd.Generator(ours, temp=0.0, temp_text=0.0, cfg_coef=cfg_coef, **kwargs)
    with gen.streaming(inputs.shape[0]):
        for item, (cond, null) in enumerate(zip(conditions, nulls, strict=True)):
            gen.set_conditions(item, cond, null)
        return [gen.step(inputs[..., t : t + 1]) for t in range(steps)]


@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_hibiki_greedy_generation_matches_reference(hibiki, cfg_coef):
    """52 greedy steps (4 contexts), with the description conditioner and with classifier-free guidance
    ("very_good" against "very_bad", as the reference's run_inference does)."""
    reference, ours = hibiki
    B, T = 2, 52
    user = torch.randint(0, 32, (B, 8, T), generator=torch.Generator().manual_seed(3))
    attrs = [ConditionAttributes(text={"description": "very_good"}) for _ in range(B)]
    if cfg_coef != 1.0:
        attrs += [ConditionAttributes(text={"description": "very_bad"}) for _ in range(B)]
    expected = run_reference(reference, T, user, attrs, cfg_coef)
    got = run_ours(ours, T, user, [{"description": "very_good"}] * B, [{"description": "very_bad"}] * B, cfg_coef)
    assert expected[0] is None and got[0] is None
    for t in range(1, T):
        assert torch.equal(got[t], expected[t]), f"step {t}"


@pytest.mark.parametrize("cfg_coef", [1.0, 2.0])
def test_tts_greedy_generation_matches_reference(tts, cfg_coef):
    """52 greedy steps with voices by cross-attention; CFG against dropped conditions without text, as the
    reference's TTSModel runs it (``cfg_is_no_text``)."""
    reference, ours = tts
    B, T = 2, 52
    none = torch.zeros(B, 0, T, dtype=torch.long)
    pairs = [tts_conditions(b) for b in range(B)]
    attrs = [r for _, r in pairs]
    if cfg_coef != 1.0:
        from moshi.conditioners import dropout_all_conditions

        attrs += dropout_all_conditions(attrs)
    expected = run_reference(reference, T, none, attrs, cfg_coef, cfg_is_no_text=True)
    conditions = [c for c, _ in pairs]
    got = run_ours(ours, T, none, conditions, [null_conditions(c) for c in conditions], cfg_coef, cfg_no_text=True)
    assert got[:2] == expected[:2] == [None, None]  # the acoustic delay of 2 frames
    for t in range(2, T):
        assert torch.equal(got[t], expected[t]), f"step {t}"
    assert len({tuple(g[:, 1:].flatten().tolist()) for g in got[2:]}) > 3  # not a constant output


SCRIPT = ["hello there how are you", "fine thanks <break time=\"0.4s\"/> and you", "see you later"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from fullduplex.text import train_tokenizer

    words = ["hello there how are you", "fine thanks and you", "see you later my friend", "good morning"] * 6
    return train_tokenizer(words, tmp_path_factory.mktemp("tok") / "tok", 96, model_type="bpe")


def test_script_entries_match_reference(tokenizer):
    from moshi.models.tts import TokenIds, script_to_entries

    from fullduplex.inference.tts import script_entries

    ref = script_to_entries(tokenizer.processor, TokenIds(97), 12.5, SCRIPT, multi_speaker=True, padding_between=1)
    ours = script_entries(tokenizer.encode, SCRIPT, 12.5, multi_speaker=True, padding_between=1)
    assert [(e.tokens, e.text, e.padding) for e in ours] == [(e.tokens, e.text, e.padding) for e in ref]
    assert ours[0].tokens[0] == 1 and ours[5].tokens[0] == 2 and ours[5].speaker == 1  # speaker marks


def test_tts_dialogue_identical_to_reference_ttsmodel(tts, tokenizer):
    """The TTS runtime (script state machine, look-ahead stream, delayed audio, voices, the distilled ``cfg``
    condition) gives the reference TTSModel's frames, ends and word steps for the same script and seed."""
    from moshi.models.tts import StateMachine, TokenIds, TTSModel, script_to_entries

    from fullduplex.inference.tts import TTS

    reference, ours = tts
    delay = 4
    machine = StateMachine(TokenIds(reference.text_card + 1), second_stream_ahead=2, max_padding=8, initial_padding=2)
    ref_tts = TTSModel(lm=reference, mimi=None, tokenizer=tokenizer.processor, voice_suffix="", voice_repo="",
                       machine=machine, delay_steps=delay, n_q=4, temp=0.6, max_gen_length=120)
    scripts = (SCRIPT, ["", "see you later"])
    ref_entries = [script_to_entries(tokenizer.processor, machine.token_ids, 12.5, s, True, 1) for s in scripts]
    attrs = [tts_conditions(b, cfg="2.0")[1] for b in range(2)]
    torch.manual_seed(11)
    expected = ref_tts.generate(ref_entries, attrs)

    ours_tts = TTS(ours, tokenizer.encode, delay_steps=delay, second_stream_ahead=2, temp=0.6, cfg_coef=2.0)
    entries = [ours_tts.entries(s, padding_between=1) for s in scripts]
    conditions = [{**tts_conditions(b)[0], "cfg": "2.0"} for b in range(2)]
    assert ours_tts.conditions(voices(0))["cfg"] == "2.0"
    torch.manual_seed(11)
    got = ours_tts.generate(entries, conditions, max_steps=120)
    assert torch.equal(got.frames, torch.cat(expected.frames, dim=-1))
    assert got.end_steps == expected.end_steps and all(e is not None for e in got.end_steps)
    assert [[(w, s) for w, s, _ in item] for item in got.words] == expected.all_transcripts


@pytest.mark.parametrize(("change", "needle"), [
    ({"conditioners": {"description": {"type": "t5", "t5": {"dim": 16}}}}, "type 't5' is not supported"),
    ({"fuser": {"prepend": ["description"]}}, "prepend"),
    ({"fuser": {"sum": ["genre"]}}, "'genre'"),
    ({"depformer_norm": "batch_norm"}, "depformer_norm='batch_norm'"),
    ({"depformer_weights_per_step_schedule": [0, 1]}, "depformer_weights_per_step_schedule"),
])
def test_unsupported_variants_are_refused_by_name(tmp_path, change, needle):
    config = {k: v for k, v in {**HIBIKI, **change}.items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(fd.errors.CheckpointError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        fd.load_lm(tmp_path)
