"""GPU checks for speech-to-text models (run where a CUDA device exists): the CUDA-graphed STT generator (no
Depth Transformer, GQA, extra heads) equals the eager one, and STT sessions step in the engine on CUDA."""

from __future__ import annotations

import pytest
import torch

import fullduplex as fd
from fullduplex.lm import LMConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

STT = LMConfig(
    dim=64, num_heads=4, num_layers=2, hidden_scale=2.0, context=12, text_card=96, card=32, n_q=8, dep_q=0,
    delays=(3,) + (0,) * 8, kv_repeat=2, extra_heads_num_heads=2, extra_heads_dim=6,
)


def test_graphed_stt_generation_equals_eager():
    torch.manual_seed(0)
    lm = fd.LMModel(STT).cuda().eval()
    user = torch.randint(0, 32, (3, 8, 40), device="cuda")
    runs, heads = [], []
    for graphs in (False, True):
        gen = fd.Generator(lm, temp=0, temp_text=0)
        gen.cuda_graphs = graphs
        with gen.streaming(3):
            outs = [gen.step_with_extra_heads(user[..., t : t + 1]) for t in range(40)]
            if graphs:
                assert gen.state.graphs[("temporal", 3)].graph is not None and ("depth", 3) not in gen.state.graphs
        runs.append(torch.cat([o[0] for o in outs if o is not None], dim=-1))
        heads.append(torch.cat([o[1][0] for o in outs if o is not None], dim=1))
    assert runs[0].shape == (3, 1, 40 - STT.max_delay) and torch.equal(runs[0], runs[1])
    assert (heads[0] - heads[1]).abs().max() < 1e-5


def test_stt_sessions_in_a_cuda_engine():
    from fullduplex.codec import mimi_preset
    from fullduplex.inference import Engine, Sampling

    torch.manual_seed(0)
    mimi = fd.Mimi(mimi_preset("tiny")).cuda().eval()
    lm = fd.LMModel(STT).cuda().eval()
    with Engine(mimi, lm, Sampling(temp=0, temp_text=0), max_sessions=4) as engine:
        sessions = [engine.open() for _ in range(3)]
        for k, s in enumerate(sessions):
            s.push(torch.randn(1920 * 12) * 0.1 * (k + 1))
        outs = {k: [] for k in range(3)}
        for _ in range(10):
            engine.step()
            for k, s in enumerate(sessions):
                outs[k] += s.pop_outputs()
    for k in range(3):
        assert len(outs[k]) == 10 and all(float(o.pcm.abs().max()) == 0 for o in outs[k])
        assert all(o.text is not None for o in outs[k][STT.max_delay :])
