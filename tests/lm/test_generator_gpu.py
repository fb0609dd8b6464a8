"""GPU checks (run where a CUDA device exists): the CUDA-graphed generator equals the eager one."""

from __future__ import annotations

import pytest
import torch

import fullduplex as fd
from fullduplex.lm import lm_preset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("temp", [0.0, 0.8])
def test_graphed_generation_equals_eager(temp):
    torch.manual_seed(0)
    lm = fd.LMModel(lm_preset("tiny")).cuda().eval()
    user = torch.randint(0, 32, (3, 8, 40), device="cuda")
    runs = []
    for graphs in (False, True):
        gen = fd.Generator(lm, temp=temp, temp_text=temp, seed=11)
        gen.cuda_graphs = graphs
        with gen.streaming(3):
            outs = [gen.step(user[..., t : t + 1]) for t in range(40)]
            if graphs:
                assert gen.state.graphs["temporal"].graph is not None and gen.state.graphs["depth"].graph is not None
        runs.append(torch.cat(outs[1:], dim=-1))
    assert torch.equal(runs[0], runs[1])
