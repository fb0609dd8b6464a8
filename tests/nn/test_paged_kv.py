"""The paged KV cache: same outputs as the ring, memory that follows the steps had, per-item state."""

from __future__ import annotations

import pytest
import torch

from fullduplex.nn import StreamingTransformer

CONTEXT, PAGE = 7, 3  # a page size that does not divide the context: the last page is partly used


def _model(layout: str = "paged", **kv) -> StreamingTransformer:
    torch.manual_seed(0)
    model = StreamingTransformer(16, 2, 2, 32, context=CONTEXT, layer_scale=0.5).eval()
    model.configure_kv(layout, page_size=PAGE, **kv)
    return model


def _steps(model, x: torch.Tensor, resets: dict[int, list[bool]] | None = None) -> torch.Tensor:
    """Step ``x`` [B, T, D] one frame at a time (inside a streaming block), resetting items at chosen steps."""
    outs = []
    for t in range(x.shape[1]):
        if resets and t in resets:
            model.reset(torch.tensor(resets[t]))
        outs.append(model(x[:, t : t + 1]))
    return torch.cat(outs, dim=1)


@torch.no_grad()
def test_paged_equals_ring_bit_for_bit_past_the_context():
    x = torch.randn(3, 25, 16)
    outs = []
    for layout in ("ring", "paged"):
        model = _model(layout)
        with model.streaming(3):
            outs.append(_steps(model, x))
    assert torch.equal(outs[0], outs[1])


@torch.no_grad()
def test_a_reset_item_restarts_as_if_alone():
    """The ring lays a restarted item wherever the shared write slot stands; the paged cache at its own slot
    p % ring, as a batch of its own would. (Not bit for bit on CPU: a young batch reads only the slots written
    so far, so the restarted item's first steps attend over a different number of masked slots.)"""
    x = torch.randn(3, 25, 16)
    resets = {4: [False, True, False], 11: [True, False, False], 12: [False, False, True]}
    model = _model()
    with model.streaming(3):
        paged = _steps(model, x, resets)
    ring = _model("ring")
    with ring.streaming(3):
        assert torch.allclose(_steps(ring, x, resets), paged, atol=1e-5)
    for item, start in ((0, 11), (1, 4), (2, 12)):
        with model.streaming(3):
            alone = _steps(model, x[item : item + 1, start:].expand(3, -1, -1))
        assert torch.allclose(paged[item, start:], alone[0], atol=1e-6), item


@torch.no_grad()
def test_pages_follow_the_steps_had_and_return_on_reset():
    model = _model(pages=8)
    x = torch.randn(2, 12, 16)
    with model.streaming(2):
        kv = model.state
        assert kv.pages == 8 and kv.pages_per_item == 3 and kv.free_pages() == 8
        _steps(model, x[:, :4])
        assert [kv.item_pages(0), kv.item_pages(1)] == [2, 2] == [kv.pages_for(4)] * 2
        _steps(model, x[:, 4:12])  # past the context: the item reuses its own pages (sliding window)
        assert kv.item_pages(0) == 3 == kv.pages_for(12) and kv.free_pages() == 2
        assert kv.item_bytes(0) == 3 * kv.page_bytes == 3 * PAGE * 2 * 2 * 16 * 4  # pages x steps x layers x (k, v) x D x fp32
        model.reset(torch.tensor([True, False]))
        assert kv.item_pages(0) == 0 and kv.free_pages() == 5
        model(x[:, :1])
        assert kv.item_pages(0) == 1 and kv.free_pages() == 4


@torch.no_grad()
def test_an_empty_pool_is_an_error_that_says_what_to_do():
    model = _model(pages=3)
    with model.streaming(2), pytest.raises(RuntimeError, match="ran out.*--kv-pages"):
        _steps(model, torch.randn(2, 5, 16))


@pytest.mark.parametrize("layout", ["ring", "paged"])
@torch.no_grad()
def test_copy_and_restore_make_items_that_continue_identically(layout):
    torch.manual_seed(1)
    x, z = torch.randn(3, 8, 16), torch.randn(1, 6, 16)
    x[2, 6:] = x[0, 6:]  # from step 6 on, items 0 and 2 get the same inputs
    model = _model(layout)
    with model.streaming(3):  # reference: item 0 from its step 6 on
        _steps(model, x[:, :6], {2: [False, False, True]})  # items at different offsets
        snap = model.snapshot_item(0)
        restored_expect = _steps(model, z.expand(3, -1, -1))
    with model.streaming(3):  # reference: no copy nor restore
        plain = _steps(model, x, {2: [False, False, True]})[:, 6:]
    with model.streaming(3):
        _steps(model, x[:, :6], {2: [False, False, True]})
        model.copy_item(0, 2)
        copied = _steps(model, x[:, 6:])
        assert torch.equal(copied[2], copied[0]) and torch.equal(copied[:2], plain[:2])  # others untouched
        model.restore_item(1, snap)  # later, at another write slot: item 1 stands where item 0 stood at step 6
        after = _steps(model, torch.cat([x[:1, :6], z, x[2:, :6]]))
    assert torch.allclose(after[1], restored_expect[0], atol=1e-6)
    if layout == "paged":  # the same slots as the source: bit for bit
        assert torch.equal(after[1], restored_expect[0])


@torch.no_grad()
def test_snapshot_names_each_state_and_refuses_a_foreign_one():
    model = _model()
    with model.streaming(2):
        model(torch.randn(2, 1, 16))
        snap = model.snapshot_item(0)
        assert list(snap) == [""] and snap[""].offset == 1 and snap[""].steps == 1
        with pytest.raises(ValueError, match="snapshot holds states"):
            model.restore_item(1, {"other": snap[""]})


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8"])
@torch.no_grad()
def test_quantized_cache_is_close_and_smaller(kv_dtype):
    x = torch.randn(2, 12, 16)
    outs, sizes = [], []
    for dtype in (None, kv_dtype):
        model = _model(dtype=dtype)
        with model.streaming(2):
            outs.append(_steps(model, x))
            sizes.append(model.state.page_bytes)
    err = (outs[0] - outs[1]).abs().max() / outs[0].abs().max()
    assert 0 < err < (0.02 if kv_dtype == "int8" else 0.1)
    assert sizes[1] == sizes[0] // 4 + PAGE * 2 * 2 * 2 * 4  # 1 byte per value + one fp32 scale per token and head


def test_configure_kv_refuses_bad_options():
    model = _model()
    with pytest.raises(ValueError, match="unknown KV layout"):
        model.configure_kv("dense")
    with pytest.raises(ValueError, match="unknown KV dtype"):
        model.configure_kv("paged", dtype="int4")
    with pytest.raises(ValueError, match="needs the paged layout"):
        model.configure_kv("ring", dtype="int8")
    with model.streaming(1), pytest.raises(RuntimeError, match="before entering"):
        model.configure_kv("ring")


@torch.no_grad()
def test_idle_items_hold_no_pages_and_leave_the_others_alone():
    x = torch.randn(2, 10, 16)
    model = _model(pages=3)  # room for one item's window only
    with model.streaming(2):
        model(x[:, :1])
        model.state.set_active(torch.tensor([True, False]))
        assert model.state.item_pages(1) == 0 and model.state.free_pages() == 2
        idle = _steps(model, x[:, 1:])
        assert model.state.item_pages(1) == 0
    busy = _model()
    with busy.streaming(2):
        both = _steps(busy, x)
    assert torch.equal(idle[0], both[0, 1:])


@torch.no_grad()
def test_a_step_on_the_leading_rows_leaves_the_others_alone():
    """``prefix(n)``: the cache as its first n items see it (a step that runs on the live rows only)."""
    x = torch.randn(3, 6, 16)
    model = _model()
    with model.streaming(3):
        full = model.state
        _steps(model, x[:, :3])
        before = full.table[2].clone(), full.offset[2].clone()
        model._streaming_state = view = full.prefix(2)
        lead = _steps(model, x[:2, 3:])
        model._streaming_state = full
        full.absorb(view)
        assert torch.equal(full.table[2], before[0]) and torch.equal(full.offset[2], before[1])
        assert full.offset.tolist() == [6, 6, 3] and full.filled == 6
        assert full.free_pages() == full.pages - 2 - 2 - 1  # 6, 6 and 3 steps in pages of 3
    with model.streaming(3):
        every = _steps(model, x)
    assert torch.allclose(lead, every[:2, 3:], atol=1e-6)
