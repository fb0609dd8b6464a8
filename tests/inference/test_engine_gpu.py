"""GPU check (run where a CUDA device exists): the engine's bucketed, CUDA-graphed steps on the live rows give
each session what `generate` gives it alone, with sessions joining and leaving from the middle."""

from __future__ import annotations

import pytest
import torch

from fullduplex.inference import Engine, Sampling, generate
from tests.helpers import speech, tiny_models
from tests.inference.test_engine import drive

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
GREEDY = Sampling(temp=0, temp_text=0)


def test_bucketed_engine_equals_generate_alone(tmp_path):
    mimi, lm, tokenizer = tiny_models(tmp_path)
    mimi, lm = mimi.cuda(), lm.cuda()
    inputs = {k: speech(1.0 + 0.2 * k) * (0.4 + 0.1 * k) for k in range(5)}
    joins, leave = {0: 0, 1: 1, 2: 2, 3: 4, 4: 10}, {1: 6, 2: 9}
    with Engine(mimi, lm, GREEDY, max_sessions=8) as engine:
        assert engine.buckets
        outputs, _, rows = drive(engine, inputs, joins, leave)
    assert {1, 2, 3, 4} <= set(rows)  # buckets 1, 2, 4 ran
    for k in (0, 3, 4):
        (alone,) = generate([inputs[k]], mimi, lm, tokenizer, GREEDY, batch_size=1)
        frames = alone.tokens.shape[-1]
        tokens = torch.stack([f.tokens for f in outputs[k][:frames]], dim=-1)
        assert torch.equal(tokens, alone.tokens.cpu()), k
