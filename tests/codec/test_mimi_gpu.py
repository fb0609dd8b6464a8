"""GPU checks (run where a CUDA device exists): CUDA-graphed streaming equals batch and eager streaming."""

from __future__ import annotations

import pytest
import torch

import fullduplex as fd
from tests.helpers import randomize_, speech

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_graph_streaming_equals_batch_and_survives_ring_growth():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = randomize_(fd.Mimi()).cuda().eval()
    wav = torch.cat([speech(12.0), speech(12.0).flip(-1)]).cuda()  # [2, 1, S], past the 10 s context
    with torch.no_grad():
        batch = model.encode(wav)
        chunks = [1920] * 30 + [4000] * 10 + [1920] * 80  # a longer call in the middle grows the KV ring
        out, start = [], 0
        with model.streaming(2):
            for size in chunks:
                out.append(model.encode(wav[..., start : start + size]))
                start += size
            assert any(k != "layout" for k in model.state.graphs)
        streamed = torch.cat(out, -1)
        n = streamed.shape[-1]
        assert (streamed == batch[..., :n]).float().mean() > 0.999  # GPU kernels differ slightly by shape
        audio_batch = model.decode(batch)
        with model.streaming(2):
            audio = torch.cat([model.decode(batch[..., t : t + 1]) for t in range(batch.shape[-1])], -1)
        assert (audio - audio_batch).abs().max() < 1e-3
