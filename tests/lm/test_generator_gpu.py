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
                graphs = gen.state.graphs
                assert graphs[("temporal", 3)].graph is not None and graphs[("depth", 3)].graph is not None
        runs.append(torch.cat(outs[1:], dim=-1))
    assert torch.equal(runs[0], runs[1])


def test_graphed_rows_follow_their_bucket():
    """Steps on rows(2) and rows(4) of a batch of 8 (CUDA graphs per bucket, on views of the leading rows): items 0
    and 1 equal an eager batch of 2 throughout, whichever bucket each step ran on."""
    torch.manual_seed(0)
    lm = fd.LMModel(lm_preset("tiny")).cuda().eval()
    user = torch.randint(0, 32, (4, 8, 30), device="cuda")
    eager = fd.Generator(lm, temp=0, temp_text=0)
    eager.cuda_graphs = False
    with eager.streaming(2):
        want = [eager.step(user[:2, :, t : t + 1]) for t in range(30)]
    gen = fd.Generator(lm, temp=0, temp_text=0)
    got = []
    with gen.streaming(8):
        for t in range(30):
            n = 2 if (t // 3) % 2 == 0 else 4
            with gen.rows(n):
                out = gen.step(user[:n, :, t : t + 1])
            got.append(None if out is None else out[:2])
        assert gen.state.graphs[("temporal", 2)].graph is not None and gen.state.graphs[("temporal", 4)].graph is not None
    for t in range(1, 30):
        assert torch.equal(got[t], want[t]), t
