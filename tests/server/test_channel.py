"""The shared-memory frame rings between the model process and the I/O workers."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np

from fullduplex.server.channel import SlotChannel


def _worker(spec: dict, frames: int, done) -> None:
    """Another process: writes ``frames`` numbered input frames to slot 1, then reads back what the model wrote."""
    channel = SlotChannel.attach(spec)
    sent, got = 0, []
    while len(got) < frames:
        if sent < frames and channel.write_input(1, np.full(channel.frame_size, sent, np.float32)):
            sent += 1
        got += [int(tokens[0]) for _, text, tokens in channel.read_outputs(1) if text == int(tokens[0])]
        time.sleep(0)
    done.send(got)
    channel.close()


def test_frames_cross_processes_in_order_and_whole():
    channel = SlotChannel(slots=3, frame_size=1920, tokens=9, in_frames=4, out_frames=4)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_worker, args=(channel.spec, 200, child))
    process.start()
    received = 0
    while received < 200:
        frame = channel.read_input(1)
        if frame is None:
            time.sleep(0)
            continue
        assert np.all(frame == received)  # whole, and in order: never a frame half-written
        tokens = np.full(9, received, np.int64)
        while not channel.write_output(1, frame, tokens, received):
            time.sleep(0)
        received += 1
    assert parent.recv() == list(range(200))
    process.join(30)
    assert process.exitcode == 0
    assert channel.input_ready(0) == channel.input_ready(2) == 0  # other slots untouched
    channel.close()


def test_full_rings_refuse_and_clear_empties():
    channel = SlotChannel(slots=2, frame_size=8, tokens=2, in_frames=2, out_frames=2)
    frame = np.ones(8, np.float32)
    assert channel.write_input(0, frame) and channel.write_input(0, 2 * frame)
    assert not channel.write_input(0, 3 * frame) and channel.input_space(0) == 0
    assert channel.input_ready(0) == 2 and channel.read_input(0)[0] == 1 and channel.input_space(0) == 1
    assert channel.write_output(1, frame, np.zeros(2, np.int64)) and channel.write_output(1, frame, np.ones(2, np.int64))
    assert not channel.write_output(1, frame, np.ones(2, np.int64)) and channel.dropped(1) == 1
    assert [(text, int(t[0])) for _, text, t in channel.read_outputs(1)] == [(None, 0), (None, 1)]
    assert channel.read_outputs(1) == []
    channel.clear(0)
    assert channel.read_input(0) is None and channel.input_space(0) == 2 and channel.dropped(1) == 1
    channel.close()
