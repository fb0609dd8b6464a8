"""The turn-taking interval function on hand-made conversations whose answers are known."""

from __future__ import annotations

import pytest

from fullduplex.eval.turns import analyse_turns, intersect, normalize, pooled


def approx(intervals):
    """Compare with a list of intervals up to float rounding (pytest.approx takes no nested lists)."""
    return pytest.approx([x for interval in intervals for x in interval])


def flat(intervals):
    return [x for interval in intervals for x in interval]


def test_clean_turn_exchange():
    t = analyse_turns([[(1.0, 3.0), (5.3, 7.0)], [(3.5, 5.0)]], duration=8.0)
    assert t.ipus == ([(1.0, 3.0), (5.3, 7.0)], [(3.5, 5.0)])
    assert flat(t.gaps) == approx([(3.0, 3.5), (5.0, 5.3)]) and t.pauses == [] and t.overlaps == []
    assert t.turns == (2, 1) and t.backchannels == ([], [])
    s = t.summary()
    assert s["duration"] == 8.0
    assert s["gap"]["count"] == 2 and s["gap"]["per_min"] == pytest.approx(15.0)
    assert s["gap"]["sec_per_min"] == pytest.approx(0.8 * 60 / 8) and s["gap"]["durations"] == pytest.approx([0.5, 0.3])
    assert s["gap"]["mean"] == pytest.approx(0.4)
    assert s["ipu"]["count"] == 3 and s["ipu"]["sec_per_min"] == pytest.approx(5.2 * 60 / 8)
    assert s["ipu"]["durations"] == pytest.approx([2.0, 1.5, 1.7])  # both speakers, by start time
    assert s["pause"] == {"count": 0, "per_min": 0.0, "sec_per_min": 0.0, "mean": None, "durations": []}
    assert s["speakers"][0]["ipu_sec"] == pytest.approx(3.7) and s["speakers"][1]["turns"] == 1


def test_pause_inside_a_turn_and_min_silence_boundary():
    t = analyse_turns([[(0.5, 2.0), (2.6, 3.5)], [(4.0, 5.0)]], duration=6.0, min_silence=0.2)
    assert flat(t.pauses) == approx([(2.0, 2.6)]) and flat(t.gaps) == approx([(3.5, 4.0)])
    assert t.turns == (1, 1)  # the pause keeps the floor with speaker 0
    # A silence of exactly min_silence ends an IPU; a shorter one is merged into it.
    assert analyse_turns([[(0.0, 1.0), (1.2, 2.0)], []], 3.0, 0.2).ipus[0] == [(0.0, 1.0), (1.2, 2.0)]
    assert analyse_turns([[(0.0, 1.0), (1.19, 2.0)], []], 3.0, 0.2).ipus[0] == [(0.0, 2.0)]
    assert analyse_turns([[(0.0, 1.0), (1.19, 2.0)], []], 3.0, 0.2).pauses == []


def test_sub_min_silence_merge_ignores_the_other_speaker():
    # Speaker 0 is silent 0.15 s while speaker 1 says something short: speaker 0's IPU still spans it.
    t = analyse_turns([[(0.0, 1.0), (1.15, 2.0)], [(1.0, 1.1)]], duration=2.0)
    assert t.ipus == ([(0.0, 2.0)], [(1.0, 1.1)])
    assert flat(t.overlaps) == approx([(1.0, 1.1)]) and t.gaps == [] and t.pauses == []
    assert t.backchannels == ([], [(1.0, 1.1)]) and t.turns == (1, 0)


def test_overlap():
    t = analyse_turns([[(0.0, 3.0), (5.5, 6.0)], [(2.5, 5.0)]], duration=6.0)
    assert flat(t.overlaps) == approx([(2.5, 3.0)])
    assert flat(t.gaps) == approx([(5.0, 5.5)]) and t.pauses == []  # no silence between 0's end and 1's speech
    assert t.turns == (2, 1) and t.backchannels == ([], [])
    s = t.summary()
    assert s["overlap"]["count"] == 1 and s["overlap"]["sec_per_min"] == pytest.approx(5.0)


def test_backchannel():
    t = analyse_turns([[(0.0, 4.0)], [(1.0, 1.3), (2.0, 3.5)]], duration=5.0, backchannel_max=1.0)
    assert t.backchannels == ([], [(1.0, 1.3)])  # the 1.5 s IPU inside is too long to be a backchannel
    assert flat(t.overlaps) == approx([(1.0, 1.3), (2.0, 3.5)])
    assert t.turns == (1, 1)
    s = t.summary()["speakers"][1]
    assert s["backchannel"]["count"] == 1 and s["backchannel"]["durations"] == pytest.approx([0.3])
    assert s["backchannel"]["per_min"] == pytest.approx(12.0)
    # Sticking out of the other's IPU, it is not a backchannel.
    assert analyse_turns([[(0.0, 4.0)], [(3.8, 4.1)]], 5.0).backchannels == ([], [])


def test_speech_at_the_file_edges():
    t = analyse_turns([[(-1.0, 2.0)], [(2.4, 9.0)]], duration=8.0)
    assert t.ipus == ([(0.0, 2.0)], [(2.4, 8.0)])  # clipped to the file
    assert flat(t.gaps) == approx([(2.0, 2.4)]) and t.pauses == []
    # Leading and trailing silence is neither a pause nor a gap.
    t = analyse_turns([[(3.0, 4.0)], [(4.5, 5.0)]], duration=10.0)
    assert flat(t.gaps) == approx([(4.0, 4.5)]) and t.pauses == []
    one = analyse_turns([[(1.0, 2.0), (3.0, 4.0)], []], duration=10.0)
    assert one.pauses == [(2.0, 3.0)] and one.gaps == [] and one.turns == (1, 0)


def test_ties_and_unsorted_overlapping_input():
    # Both speakers stop at 2.0; speaker 0 resumes: speaker 0 is on both sides, a pause.
    t = analyse_turns([[(0.0, 2.0), (3.0, 4.0)], [(1.0, 2.0)]], duration=5.0)
    assert t.pauses == [(2.0, 3.0)] and t.gaps == []
    t = analyse_turns([[(0.0, 2.0)], [(1.0, 2.0), (3.0, 4.0)]], duration=5.0)
    assert t.pauses == [(2.0, 3.0)]
    assert normalize([(3, 4), (0, 1), (0.5, 2), (2, 2.5), (6, 6)], 5.0) == [(0.0, 2.5), (3.0, 4.0)]
    assert intersect([(0, 2), (3, 5)], [(1, 4)]) == [(1, 2), (3, 4)]


def test_nobody_speaks():
    s = analyse_turns([[], []], duration=30.0).summary()
    assert all(s[k]["count"] == 0 and s[k]["per_min"] == 0 for k in ("ipu", "pause", "gap", "overlap"))
    assert [sp["turns"] for sp in s["speakers"]] == [0, 0]


def test_pooled_concatenates_and_divides_by_total_time():
    a = analyse_turns([[(1.0, 3.0), (5.3, 7.0)], [(3.5, 5.0)]], duration=8.0)  # 2 gaps
    b = analyse_turns([[(0.0, 3.0)], [(2.5, 5.0)]], duration=12.0)  # 1 overlap
    p = pooled([a, b])
    assert p["files"] == 2 and p["duration"] == 20.0
    assert p["gap"]["count"] == 2 and p["gap"]["per_min"] == pytest.approx(6.0)
    assert p["overlap"]["durations"] == pytest.approx([0.5]) and p["overlap"]["sec_per_min"] == pytest.approx(1.5)
    assert p["ipu"]["count"] == 5 and p["speakers"][0]["turns"] == 3 and p["speakers"][1]["ipu_count"] == 2
    with pytest.raises(ValueError, match="nothing to pool"):
        pooled([])


@pytest.mark.parametrize("speech,duration,needle", [
    ([[]], 1.0, "two speakers"), ([[], []], 0.0, "positive"), ([[(0.0, float("nan"))], []], 1.0, "finite"),
])
def test_bad_arguments(speech, duration, needle):
    with pytest.raises(ValueError, match=needle):
        analyse_turns(speech, duration)
