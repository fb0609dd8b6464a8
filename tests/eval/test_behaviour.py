"""Scoring behaviour probes on hand-made intervals and words with known answers."""

from __future__ import annotations

import pytest

from fullduplex.eval.behaviour import (
    Rules,
    interrupt_onset,
    score_backchannel,
    score_interrupt,
    score_pause,
    score_turn_end,
    summarise,
    takeover,
)
from fullduplex.text.tokenizer import Word

RULES = Rules()
PAUSE = {"pause_start": 2.0, "pause_end": 3.2, "user_end": 4.5}


# --- takeover rule --------------------------------------------------------------------------------------------
def test_takeover_by_duration():
    assert not takeover([], 2.0, 3.0, RULES)["taken"]
    short = takeover([(2.3, 2.9)], 2.0, 3.0, RULES)
    assert not short["taken"] and short["onset"] == 2.3 and short["latency"] is None and short["duration"] == 0.6
    long = takeover([(2.3, 2.9), (2.5, 3.6)], 2.0, 3.0, RULES)  # the second one runs past the window: counts
    assert long["taken"] and long["onset"] == 2.5 and long["latency"] == 0.5 and long["duration"] == pytest.approx(1.1)
    exactly = takeover([(2.0, 3.0)], 2.0, 3.0, RULES)  # exactly takeover_min is a takeover
    assert exactly["taken"] and exactly["latency"] == 0.0
    # An IPU that started before the window counts from the window's start; latency clipped at 0, raw kept.
    before = takeover([(1.0, 2.8)], 2.0, 3.0, RULES)
    assert not before["taken"] and before["duration"] == pytest.approx(0.8)
    through = takeover([(1.0, 3.5)], 2.0, 3.0, RULES)
    assert through["taken"] and through["latency"] == 0.0 and through["raw_latency"] == -1.0
    assert not takeover([(3.0, 5.0)], 2.0, 3.0, RULES)["taken"]  # starts at the window's end: outside


def test_takeover_by_words_follows_fdb():
    w = [Word("yes", 2.2, 2.4)]
    assert takeover(w, 2.0, 3.0, RULES, words=[])["taken"] is False  # no words -> 0
    one = takeover([], 2.0, 3.0, RULES, words=w)
    assert not one["taken"] and one["words"] == 1  # < 1 s and <= 3 words -> 0
    three = [Word("a", 2.1, 2.3), Word("b", 2.35, 2.5), Word("c", 2.55, 2.9)]
    assert not takeover([], 2.0, 3.0, RULES, words=three)["taken"]
    four = [*three, Word("d", 2.95, 3.05)]
    t = takeover([], 2.0, 3.0, RULES, words=four)
    assert t["taken"] and t["words"] == 4 and t["latency"] == pytest.approx(0.1)
    # One long word-run starting in the window and continuing after it (gaps < min_silence): span >= 1 s.
    run = [Word("well", 2.8, 3.1), Word("you", 3.15, 3.5), Word("see", 3.55, 3.9)]
    assert takeover([], 2.0, 3.0, RULES, words=run)["taken"]
    # ... but words after a silence >= min_silence, outside the window, are not part of it.
    broken = [Word("well", 2.8, 3.1), Word("you", 3.5, 3.9), Word("see", 4.0, 4.4)]
    assert not takeover([], 2.0, 3.0, RULES, words=broken)["taken"]


# --- pause ------------------------------------------------------------------------------------------------------
def test_pause_no_takeover_and_takeover():
    quiet = score_pause(PAUSE, [(0.5, 1.2), (5.0, 7.0)], RULES)
    assert quiet["takeover"] is False and quiet["speech_in_pause"] == 0.0 and quiet["pause"] == pytest.approx(1.2)
    blip = score_pause(PAUSE, [(2.4, 2.8)], RULES)  # 0.4 s "mm" in the pause: not a takeover
    assert blip["takeover"] is False and blip["speech_in_pause"] == pytest.approx(0.4)
    taken = score_pause(PAUSE, [(2.5, 4.0)], RULES)  # starts in the pause and talks over the user's resumption
    assert taken["takeover"] is True and taken["speech_in_pause"] == pytest.approx(0.7)
    assert taken["detail"]["latency"] == pytest.approx(0.5)


# --- turn end ---------------------------------------------------------------------------------------------------
def test_turn_end_latency_window_and_early_start():
    t = {"user_end": 3.0}
    ok = score_turn_end(t, [(3.42, 5.0)], RULES)
    assert ok["responded"] and ok["latency"] == pytest.approx(0.42) and not ok["already_speaking"]
    late = score_turn_end(t, [(6.5, 8.0)], RULES)  # after the 3 s window
    assert not late["responded"] and late["latency"] is None
    short = score_turn_end(t, [(3.2, 3.6)], RULES)  # a 0.4 s blip does not answer
    assert not short["responded"]
    early = score_turn_end(t, [(2.7, 4.5)], RULES)  # started 0.3 s before the user finished
    assert early["responded"] and early["latency"] == 0.0 and early["raw_latency"] == pytest.approx(-0.3)
    assert early["already_speaking"]


# --- interruption -----------------------------------------------------------------------------------------------
def test_interrupt_onset_choice():
    assert interrupt_onset([(0.2, 0.6), (4.0, 6.0)], 3.5, 0.5) == pytest.approx(4.5)
    assert interrupt_onset([(3.0, 5.0)], 3.5, 0.5) == pytest.approx(4.0)  # already speaking: from prompt end
    assert interrupt_onset([(4.0, 4.6)], 3.5, 0.5) is None  # 0.1 s left after the onset: too short
    assert interrupt_onset([(4.0, 4.6), (5.0, 7.0)], 3.5, 0.5) == pytest.approx(5.5)
    assert interrupt_onset([], 3.5, 0.5) is None


def test_interrupt_stop_no_stop_and_not_applicable():
    t = {"prompt_end": 3.0, "onset": 4.5, "user_end": 6.5}
    stop = score_interrupt(t, [(4.0, 4.85), (7.0, 8.5)], RULES)
    assert stop["applicable"] and stop["stopped"] and stop["stop_latency"] == pytest.approx(0.35)
    assert stop["responded"] and stop["response_latency"] == pytest.approx(0.5)
    talks_on = score_interrupt(t, [(4.0, 7.2)], RULES)  # talks through the whole interruption
    assert talks_on["applicable"] and talks_on["stopped"] is False and talks_on["stop_latency"] is None
    assert talks_on["model_end"] == pytest.approx(7.2) and talks_on["responded"] is False
    silent = score_interrupt(t, [(4.0, 4.4)], RULES)
    assert silent["applicable"] is False and silent["stopped"] is None


# --- backchannel ------------------------------------------------------------------------------------------------
def test_backchannel_counts_and_takeover():
    t = {"floor_start": 1.0, "floor_end": 31.0}  # 30 s of monologue
    model = [(0.2, 0.5), (5.0, 5.4), (10.0, 10.8), (15.0, 16.5), (30.8, 31.5), (33.0, 35.0)]
    s = score_backchannel(t, model, RULES)
    # (0.2, 0.5) before the floor; (15, 16.5) too long; (30.8, 31.5) runs past the floor; (33, 35) after it.
    assert s["backchannels"] == 2 and s["intervals"] == [[5.0, 5.4], [10.0, 10.8]]
    assert s["per_min"] == pytest.approx(4.0) and s["takeover"] is False
    assert score_backchannel(t, [(12.0, 15.5)], RULES)["takeover"] is True  # a 3.5 s IPU takes over
    # With ASR: a short IPU holding three words is not a backchannel (FDB: <= 2 words).
    words = [Word("uh", 5.0, 5.2), Word("huh", 5.2, 5.4), Word("i", 10.0, 10.2), Word("see", 10.3, 10.5),
             Word("now", 10.55, 10.8)]
    w = score_backchannel(t, [(5.0, 5.4), (10.0, 10.8)], RULES, words)
    assert w["backchannels"] == 1 and w["intervals"] == [[5.0, 5.4]] and w["takeover"] is False
    assert score_backchannel(t, [], RULES)["backchannels"] == 0


# --- aggregation ------------------------------------------------------------------------------------------------
def test_summaries():
    pauses = [score_pause(PAUSE, m, RULES) for m in ([], [(2.5, 4.0)], [(2.4, 2.8)], [(2.2, 3.5)])]
    p = summarise("pause", pauses)
    assert p["n"] == 4 and p["takeovers"] == 2 and p["takeover_rate"] == 0.5
    assert p["takeover_onset_ms"]["n"] == 2 and p["takeover_onset_ms"]["max"] == pytest.approx(500.0)
    turns = [score_turn_end({"user_end": 3.0}, m, RULES) for m in ([(3.2, 5)], [(3.6, 5)], [])]
    s = summarise("turn-end", turns)
    assert s["response_rate"] == pytest.approx(2 / 3, abs=1e-6) and s["latency_ms"]["p50"] == pytest.approx(200.0)
    t = {"prompt_end": 3.0, "onset": 4.5, "user_end": 6.5}
    ints = [score_interrupt(t, m, RULES) for m in ([(4.0, 4.8)], [(4.0, 7.0)], [(4.0, 4.2)])]
    i = summarise("interrupt", ints)
    assert (i["applicable"], i["stopped"], i["did_not_stop"], i["not_applicable"]) == (2, 1, 1, 1)
    assert i["stop_rate"] == 0.5 and i["stop_latency_ms"]["p50"] == pytest.approx(300.0)
    f = {"floor_start": 0.0, "floor_end": 30.0}
    b = summarise("backchannel", [score_backchannel(f, [(5, 5.5)], RULES), score_backchannel(f, [], RULES)])
    assert b["backchannels"] == 1 and b["per_min"] == pytest.approx(1.0) and b["takeover_rate"] == 0.0
    with pytest.raises(ValueError, match="unknown probe kind"):
        summarise("laugh", [])


def test_rules_are_validated():
    with pytest.raises(ValueError, match="takeover_min"):
        Rules(takeover_min=-1)
