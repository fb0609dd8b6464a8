"""Our Mimi: streaming equals batch for any chunk length, causality, per-item reset, input checks."""

from __future__ import annotations

import pytest
import torch

import fullduplex as fd
from fullduplex.codec import mimi_preset
from tests.helpers import randomize_, speech


@pytest.fixture(scope="module")
def mimi():
    torch.manual_seed(0)
    return randomize_(fd.Mimi().eval())


def stream_encode(model, wav: torch.Tensor, chunk: int) -> torch.Tensor:
    with model.streaming(wav.shape[0]):
        codes = [model.encode(wav[..., i : i + chunk]) for i in range(0, wav.shape[-1], chunk)]
    return torch.cat(codes, dim=-1)


@pytest.mark.parametrize("chunk,seconds", [(1920, 4.0), (960, 4.0), (4000, 4.0), (1, 0.5)])
def test_streaming_encode_equals_batch(mimi, chunk, seconds):
    wav = speech(seconds)
    with torch.no_grad():
        batch = mimi.encode(wav)
        streamed = stream_encode(mimi, wav, chunk)
    whole = wav.shape[-1] // 1920  # streaming keeps the partial last frame pending
    assert streamed.shape == (1, 8, whole)
    assert torch.equal(streamed, batch[..., :whole])


def test_streaming_decode_equals_batch_any_grouping(mimi):
    with torch.no_grad():
        codes = mimi.encode(speech(4.0))
        batch = mimi.decode(codes)
        sizes, out, start = [1, 3, 1, 5, 2], [], 0
        with mimi.streaming(1):
            while start < codes.shape[-1]:
                size = sizes[len(out) % len(sizes)]
                out.append(mimi.decode(codes[..., start : start + size]))
                start += size
    streamed = torch.cat(out, dim=-1)
    assert streamed.shape == batch.shape == (1, 1, codes.shape[-1] * 1920)
    assert (streamed - batch).abs().max() < 1e-5


def test_streaming_past_context_tiny():
    """The tiny preset has a 10-step context: 6 s runs 15 contexts through the ring cache."""
    model = randomize_(fd.Mimi(mimi_preset("tiny")).eval())
    wav = speech(6.0)
    with torch.no_grad():
        codes = model.encode(wav)
        assert torch.equal(stream_encode(model, wav, 1920), codes[..., : wav.shape[-1] // 1920])
        with model.streaming(1):
            audio = torch.cat([model.decode(codes[..., t : t + 1]) for t in range(codes.shape[-1])], -1)
        assert (audio - model.decode(codes)).abs().max() < 1e-5


def test_causality(mimi):
    wav = speech(3.0)
    cut = 17 * 1920 + 500
    changed = wav.clone()
    changed[..., cut:] = torch.randn_like(changed[..., cut:]) * 0.3
    with torch.no_grad():
        a, b = mimi.encode(wav), mimi.encode(changed)
        assert torch.equal(a[..., :17], b[..., :17])
        assert not torch.equal(a[..., 18:], b[..., 18:])
        future = a.clone()
        future[..., 20:] = (future[..., 20:] + 7) % 2048
        assert torch.equal(mimi.decode(a)[..., : 20 * 1920], mimi.decode(future)[..., : 20 * 1920])


def test_reset_one_item_leaves_others_untouched(mimi):
    x, y, z = speech(2.4), speech(2.4) * 0.5, speech(2.4).flip(-1)
    f = 1920
    with torch.no_grad():
        solo_x, solo_y, solo_z = (mimi.encode(w) for w in (x, y, z))
        with mimi.streaming(3):
            first = mimi.encode(torch.cat([x, y, x])[..., : 10 * f])
            mimi.reset(torch.tensor([False, False, True]))
            second = mimi.encode(torch.cat([x[..., 10 * f :], y[..., 10 * f :], z[..., : 20 * f]]))
    assert torch.equal(torch.cat([first[0], second[0]], -1), solo_x[0, :, :30])
    assert torch.equal(torch.cat([first[1], second[1]], -1), solo_y[0, :, :30])
    assert torch.equal(second[2], solo_z[0, :, :20])


def test_decoder_reset_one_item(mimi):
    with torch.no_grad():
        codes = mimi.encode(speech(2.0))
        other = mimi.encode(speech(2.0).flip(-1))
        solo, solo_other = mimi.decode(codes), mimi.decode(other[..., :10])
        with mimi.streaming(2):
            a = mimi.decode(torch.cat([codes, codes])[..., :15])
            mimi.reset(torch.tensor([False, True]))
            b = mimi.decode(torch.cat([codes[..., 15:25], other[..., :10]]))
    assert (torch.cat([a[0], b[0]], -1) - solo[0, :, : 25 * 1920]).abs().max() < 1e-5
    assert (b[1] - solo_other[0]).abs().max() < 1e-5


def test_shapes_and_input_errors(mimi):
    with torch.no_grad():
        assert mimi.encode(torch.zeros(2, 1, 1000)).shape == (2, 8, 1)
        assert mimi.decode(torch.zeros(2, 3, 4, dtype=torch.long)).shape == (2, 1, 4 * 1920)
        with pytest.raises(ValueError, match=r"\[B, 1, S\]"):
            mimi.encode(torch.zeros(1000))
        with pytest.raises(ValueError, match="outside the codebook"):
            mimi.decode(torch.full((1, 8, 2), 2048))
        with pytest.raises(ValueError, match="num_codebooks"):
            mimi.num_codebooks = 33
        assert mimi.decode(torch.zeros(2, 8, 0, dtype=torch.long)).shape == (2, 1, 0)
        with mimi.streaming(1):
            none_yet = mimi.encode(torch.zeros(1, 1, 100))
            assert none_yet.shape == (1, 8, 0)
            assert mimi.decode(none_yet).shape == (1, 1, 0)  # encode -> decode chains work chunk by chunk
            with pytest.raises(ValueError, match="streaming batch size"):
                mimi.encode(torch.zeros(2, 1, 1920))


def test_streaming_decode_checks_codes_on_cpu(mimi):
    with torch.no_grad(), mimi.streaming(1):
        with pytest.raises(ValueError, match="outside the codebook"):
            mimi.decode(torch.full((1, 8, 1), 2048))
        with pytest.raises(ValueError, match="outside the codebook"):
            mimi.decode(torch.full((1, 8, 1), -1))


def test_inference_mode_load_and_stream():
    """Weights created under inference_mode keep no version counter; cached derivations must cope."""
    wav = speech(1.0)
    with torch.inference_mode():
        model = fd.Mimi(mimi_preset("tiny"))
        codes = model.encode(wav)
        with model.streaming(1):
            assert torch.equal(model.encode(wav)[..., :12], codes[..., :12])
        assert model.decode(codes).shape == (1, 1, codes.shape[-1] * 1920)
