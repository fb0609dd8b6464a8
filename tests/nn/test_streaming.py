"""The streaming protocol and the causal conv layers: streaming equals batch, reset is per item."""

from __future__ import annotations

import pytest
import torch

from fullduplex.nn import StreamingConv1d, StreamingConvTranspose1d, StreamingTransformer


def _stream(module, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    outs, start = [], 0
    with module.streaming(x.shape[0]):
        for size in sizes:
            outs.append(module(x[..., start : start + size]))
            start += size
        assert start == x.shape[-1]
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
@pytest.mark.parametrize("kernel,stride,dilation,length", [(7, 1, 1, 64), (3, 1, 2, 64), (8, 4, 1, 1920), (4, 2, 1, 40), (1, 1, 1, 16)])
def test_conv_streaming_equals_batch(kernel, stride, dilation, length, pad_mode):
    conv = StreamingConv1d(6, 5, kernel, stride=stride, dilation=dilation, pad_mode=pad_mode)
    x = torch.randn(2, 6, length)
    with torch.no_grad():
        batch = conv(x)
        assert batch.shape == (2, 5, length // stride)
        steps = [stride, 3 * stride, stride] + [stride] * ((length - 5 * stride) // stride)
        assert torch.allclose(_stream(conv, x, steps), batch, atol=1e-6)


@pytest.mark.parametrize("groups,cin,cout,kernel,stride,length", [(1, 6, 4, 8, 4, 700), (6, 6, 6, 4, 2, 9), (1, 4, 3, 5, 2, 7), (1, 300, 3, 4, 2, 5)])
def test_conv_transpose_streaming_equals_batch(groups, cin, cout, kernel, stride, length):
    conv = StreamingConvTranspose1d(cin, cout, kernel, stride=stride, groups=groups)
    x = torch.randn(2, cin, length)
    with torch.no_grad():
        batch = conv(x)
        assert batch.shape == (2, cout, length * stride)
        reference = torch.nn.functional.conv_transpose1d(x, conv.weight, conv.bias, stride, groups=groups)
        assert torch.allclose(batch, reference[..., : length * stride], atol=1e-5)
        sizes = [1, 2] + [1] * (length - 3)
        assert torch.allclose(_stream(conv, x, sizes), batch, atol=1e-5)


def test_transformer_streaming_equals_batch_past_context_and_ring_growth():
    model = StreamingTransformer(16, 2, 2, 32, context=5, layer_scale=0.5, conv_layout=True).eval()
    x = torch.randn(2, 16, 23)
    with torch.no_grad():
        batch = model(x)
        # 1 step, 2 steps, then a long call that makes the ring grow, then singles past the context.
        assert torch.allclose(_stream(model, x, [1, 2, 9, 1, 1, 4, 5]), batch, atol=1e-5)


def test_transformer_batch_blockwise_equals_full_attention():
    model = StreamingTransformer(16, 2, 1, 32, context=7, layer_scale=0.5).eval()
    x = torch.randn(1, 40, 16)
    with torch.no_grad():
        full = model(x)
        model.layers[0].self_attn.block = 4  # force the blockwise path
        assert torch.allclose(model(x), full, atol=1e-5)


def test_reset_restarts_only_masked_items():
    conv = StreamingConv1d(3, 3, 5)
    a, b = torch.randn(1, 3, 12), torch.randn(1, 3, 12)
    with torch.no_grad(), conv.streaming(2):
        conv(torch.cat([a, a])[..., :6])
        conv.reset(torch.tensor([False, True]))
        out = conv(torch.cat([a[..., 6:], b[..., :6]]))
    assert torch.allclose(out[0], conv(a)[0, :, 6:], atol=1e-6)  # untouched item carries on
    assert torch.allclose(out[1], conv(b[..., :6])[0], atol=1e-6)  # reset item starts afresh


def test_protocol_errors():
    conv = StreamingConv1d(1, 1, 3)
    with pytest.raises(RuntimeError, match="only valid inside"):
        conv.reset()
    with conv.streaming(2):
        with pytest.raises(RuntimeError, match="already streaming"):
            with conv.streaming(2):
                pass
        with pytest.raises(ValueError, match=r"shape \[2\]"):
            conv.reset(torch.tensor([True]))
    assert conv.state is None and not conv.is_streaming
    with pytest.raises(ValueError, match="batch_size"):
        with conv.streaming(0):
            pass
