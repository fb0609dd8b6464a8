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


# --- per-item state: copy, snapshot/restore, leading rows ----------------------------------------------------
def check_item_protocol(module, step, make, close):
    """After copy_item(0, 2), items 0 and 2 give identical outputs on identical inputs and item 1 is untouched;
    a snapshot of item 0 restored into item 2 later replays item 0's outputs from the snapshot on.

    ``step(module, x)`` runs one call; ``make(t)`` an input [3, ...] whose items differ; ``close(a, b)`` compares."""
    T, at = 8, 3

    def run(op):
        outs = []
        with torch.no_grad(), module.streaming(3):
            for t in range(T):
                x = make(t)
                if t == at:
                    op(module)
                if t >= at:
                    x[2] = x[0]
                outs.append(step(module, x))
        return outs

    reference = run(lambda m: None)
    copied = run(lambda m: m.copy_item(0, 2))
    for t in range(T):
        assert close(copied[t][0], reference[t][0]) and close(copied[t][1], reference[t][1]), t  # others untouched
        if t >= at:
            assert close(copied[t][2], copied[t][0]), t
    # Snapshot item 0 at `at`, feed it a sequence; restore into item 2 at `at + 2` and feed it the same sequence.
    outs, later = [], at + 2
    with torch.no_grad(), module.streaming(3):
        for t in range(T + later - at):
            x = make(t)
            if t == at:
                snap = module.snapshot_item(0)
            if t == later:
                module.restore_item(2, snap)
            if t >= later:
                x[2] = make(at + t - later)[0]
            outs.append(step(module, x))
        for t in range(later, T + later - at):
            assert close(outs[t][2], outs[at + t - later][0]), t


def check_rows(module, step, make, close, B=4, n=2, T=5):
    """``rows(n)`` on a batch of B equals a batch of n; rows n.. are untouched."""
    with torch.no_grad():
        with module.streaming(n):
            alone = [step(module, make(t)[:n]) for t in range(T)]
        with module.streaming(B):
            step(module, make(100))  # rows n.. hold some state
            held = module.snapshot_item(B - 1)
            with module.rows(n):
                module.reset()  # the leading rows start afresh, as in `alone`
                rows = [step(module, make(t)[:n]) for t in range(T)]
            after = module.snapshot_item(B - 1)
    for t in range(T):
        assert close(rows[t], alone[t]), t

    def same(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return torch.equal(a, b)

    assert same(held, after)


def _allclose(a, b):
    return torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
def test_conv_item_protocol(pad_mode):
    torch.manual_seed(0)
    conv = StreamingConv1d(3, 4, 4, stride=2, pad_mode=pad_mode)
    make = lambda t: torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(t))  # noqa: E731
    check_item_protocol(conv, lambda m, x: m(x), make, _allclose)
    check_rows(conv, lambda m, x: m(x), lambda t: make(t).repeat(2, 1, 1)[:4], _allclose)


def test_conv_transpose_item_protocol():
    torch.manual_seed(0)
    conv = StreamingConvTranspose1d(3, 4, 4, stride=2)
    make = lambda t: torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(t))  # noqa: E731
    check_item_protocol(conv, lambda m, x: m(x), make, _allclose)
    check_rows(conv, lambda m, x: m(x), lambda t: make(t).repeat(2, 1, 1)[:4], _allclose)


def test_transformer_item_protocol_and_rows_grow_the_whole_ring():
    torch.manual_seed(0)
    model = StreamingTransformer(16, 2, 2, 32, context=4, layer_scale=0.5, conv_layout=True).eval()
    make = lambda t: torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(t))  # noqa: E731
    # Context 4 with 2-step calls: the ring grows on the first call and wraps before the copies.
    check_item_protocol(model, lambda m, x: m(x), lambda t: make(t)[:3], _allclose)
    single = lambda t: make(t)[..., :1]  # noqa: E731
    check_rows(model, lambda m, x: m(x), single, _allclose)  # one-step calls
    with torch.no_grad(), model.streaming(4):
        model(single(0))
        with model.rows(2):
            model(make(1)[:2])  # a two-step call inside rows(2): the whole batch's ring grows
        assert model.layers[0].self_attn.state.keys.shape[2] == 5 and model.state.positions.shape == (4, 5)
        assert model.state.positions[2:, :1].tolist() == [[0], [0]] and model.state.positions[:2, 1:3].tolist() == [[1, 2], [1, 2]]
        model(single(2))  # the whole batch runs on after


def test_item_protocol_errors():
    conv = StreamingConv1d(1, 1, 3)
    with pytest.raises(RuntimeError, match="only valid inside"):
        conv.snapshot_item(0)
    with conv.streaming(2):
        with pytest.raises(IndexError, match="outside the streaming batch of 2"):
            conv.copy_item(0, 2)
        with pytest.raises(ValueError, match="rows must be in 1..2"):
            with conv.rows(3):
                pass
        with pytest.raises(ValueError, match="snapshot holds states"):
            conv.restore_item(0, {"x": {}})


def test_a_state_without_item_tensors_names_itself():
    from dataclasses import dataclass

    from fullduplex.nn import StreamingState

    @dataclass
    class Opaque(StreamingState):
        pass

    for call in (lambda s: s.snapshot_item(0), lambda s: s.restore_item(0, {}), lambda s: s.copy_item(0, 1),
                 lambda s: s.prefix(1)):
        with pytest.raises(NotImplementedError, match="Opaque does not implement"):
            call(Opaque(2))
