"""The per-item state protocol on Mimi (every codec state) and the generator (token ring, offsets, the Temporal
Transformer's ring): copy/snapshot/restore give identical continuations, ``rows(n)`` equals a batch of n."""

from __future__ import annotations

import torch

import fullduplex as fd
from fullduplex.codec import mimi_preset
from fullduplex.lm import lm_preset
from fullduplex.lm.model import UNGENERATED_TOKEN
from tests.helpers import randomize_
from tests.nn.test_streaming import check_item_protocol, check_rows


def _mimi_step(mimi, x):
    codes = mimi.encode(x)
    return torch.cat([codes.float().flatten(1), mimi.decode(codes).flatten(1)], dim=1)


def test_mimi_item_protocol_and_rows():
    torch.manual_seed(0)
    mimi = randomize_(fd.Mimi(mimi_preset("tiny")).eval())
    make = lambda t: 0.3 * torch.randn(4, 1, mimi.frame_size, generator=torch.Generator().manual_seed(t))  # noqa: E731
    close = lambda a, b: torch.allclose(a, b, atol=1e-4)  # noqa: E731
    check_item_protocol(mimi, _mimi_step, lambda t: make(t)[:3], close)
    check_rows(mimi, _mimi_step, make, close)


def test_generator_item_protocol_and_rows():
    torch.manual_seed(0)
    lm = fd.LMModel(lm_preset("tiny")).eval()
    gen = fd.Generator(lm, temp=0, temp_text=0)
    K = 1 + lm.config.own_q

    def step(g, x):
        out = g.step(x)
        return torch.full((x.shape[0], K, 1), UNGENERATED_TOKEN) if out is None else out

    make = lambda t: torch.randint(0, lm.config.card, (4, lm.config.user_q, 1), generator=torch.Generator().manual_seed(t))  # noqa: E731
    check_item_protocol(gen, step, lambda t: make(t)[:3], torch.equal)
    check_rows(gen, step, make, torch.equal, T=8)
