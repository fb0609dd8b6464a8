"""Training across world sizes: the global batch and its window order depend only on (seed, step); two torchrun
nodes (loopback, gloo) train exactly as two processes on one node; a run saved on 2 processes resumes on 1, and one
saved on 1 resumes on 2, with the losses of an uninterrupted run at the new world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fullduplex.data.shards import ShardDataset
from fullduplex.errors import FullduplexError
from fullduplex.train.config import load_config
from fullduplex.train.data import TrainWindows
from fullduplex.train.recipe import train
from tests.train.helpers import make_setup

ROOT = Path(__file__).resolve().parents[2]
# 4 windows per step on any world size; a constant schedule, so a run to step 2 is the first half of one to step 4.
OVERRIDES = ["optim.schedule=constant", "run.eval_every=0", "run.save_every=2", "run.global_batch=4",
             "run.batch_size=2", "data.segment_seconds=1.2"]


def test_global_batch_is_the_same_windows_on_any_split(tmp_path):
    """Ranks x micro-batches x batch_size cut the same global batch of windows, in the same order."""
    make_setup(tmp_path)
    dataset = ShardDataset(tmp_path / "train")
    windows = TrainWindows(dataset, 15, seed=3)
    for step in (1, 7):
        one = torch.cat([windows.batch(step, m, 0, 1, 1) for m in range(4)])
        two = torch.cat([windows.batch(step, 0, r, 2, 2) for r in range(2)])
        four = torch.cat([windows.batch(step, m, r, 2, 1) for m in range(2) for r in range(2)])
        assert torch.equal(one, two) and torch.equal(four, two)  # window (m x world + r) x batch_size + b
    assert not torch.equal(windows.batch(1, 0, 0, 1, 4), windows.batch(2, 0, 0, 1, 4))


def test_a_rank_reads_only_the_items_of_its_windows(tmp_path):
    """Items are read lazily, one at a time, when a window of this rank needs them (never a whole shard)."""
    make_setup(tmp_path)

    class Counting(ShardDataset):
        reads: list[int] = []

        def __getitem__(self, j: int) -> dict:
            self.reads.append(j)
            return super().__getitem__(j)

    dataset = Counting(tmp_path / "train")
    windows = TrainWindows(dataset, 15, seed=0)
    for step in range(1, 4):
        windows.batch(step, 0, 1, 2, 1)  # rank 1 of 2, one window a step: global window 1
    needed = {windows.locate(step, 1)[0] for step in range(1, 4)}
    assert sorted(Counting.reads) == sorted(needed)  # only those items, each read once (then cached)
    assert len(needed) < len(dataset)  # not every item: rank 0's windows were never read here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(recipe: Path, out: Path, launcher: list[str], steps: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--monitor-interval", "0.1", *launcher,
           "-m", "fullduplex", "train", str(recipe), "--no-progress", *[f"--override={o}" for o in OVERRIDES],
           f"--override=optim.max_steps={steps}", f"--override=run.output={out}"]
    return subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-3000:]


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_two_nodes_and_resume_across_world_sizes(tmp_path):
    recipe = make_setup(tmp_path / "setup")

    def local(out: Path, steps: int, *more: str):
        return train(load_config(recipe, [*OVERRIDES, f"optim.max_steps={steps}", f"run.output={out}", *more]),
                     progress=False)

    # All at once: 2 processes on one node; 2 nodes of 1 process (static rendezvous on loopback); a 1-process run
    # saved at step 2 continued on 2 processes; the uninterrupted 1-process run.
    two = _torchrun(recipe, tmp_path / "two", ["--standalone", "--nproc-per-node", "2"], 4)
    port = _free_port()
    nodes = [_torchrun(recipe, tmp_path / "nodes", ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(n),
                                                    "--master-addr", "127.0.0.1", "--master-port", str(port)], 2)
             for n in range(2)]
    local(tmp_path / "half", 2)
    half = _torchrun(recipe, tmp_path / "half", ["--standalone", "--nproc-per-node", "2"], 4)
    one = local(tmp_path / "one", 4)
    for proc in (two, *nodes, half):
        _finish(proc)
    two_losses = _losses(tmp_path / "two")
    assert _losses(tmp_path / "nodes") == {s: two_losses[s] for s in (1, 2)}  # exactly: the same arithmetic
    assert one.losses == pytest.approx(two_losses, rel=1e-5)  # the same global batches, summed in another order
    assert one.losses[4] < one.losses[1] - 0.1  # the steps did something

    # 1 -> 2: the 1-process run continued on 2 processes from its step-2 checkpoint.
    resumed = _losses(tmp_path / "half")
    assert sorted(resumed) == [1, 2, 3, 4]
    assert [resumed[s] for s in (3, 4)] == pytest.approx([two_losses[s] for s in (3, 4)], rel=1e-5)

    # 2 -> 1: the 2-node run's step-2 checkpoint continues on 1 process.
    with pytest.warns(UserWarning, match="random states not restored"):
        back = local(tmp_path / "nodes", 4)
    assert back.resumed_from == 2
    assert [back.losses[s] for s in (3, 4)] == pytest.approx([one.losses[s] for s in (3, 4)], rel=1e-5)
    state = json.loads((tmp_path / "nodes" / "checkpoints" / "step_000004" / "state.json").read_text())
    assert state["world"] == 1 and state["windows_per_step"] == 4

    # Another global batch would train another run: refused, saying how to continue this one.
    with pytest.raises(FullduplexError, match="4 windows per step; this launch makes 2 .*run.global_batch: 4"):
        local(tmp_path / "one", 5, "run.global_batch=2")
