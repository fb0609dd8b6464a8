"""Personas and the prompt cache: a (voice, role prompt) pair's generator state, computed once, copied into any
batch slot.

The reference re-runs the whole prompt (voice, silence, role text, silence: 50 to 200+ frames) for every connection.
Here the state a prompt leaves behind is kept: :func:`snapshot` takes one batch item's state after the prompt's
first ``T - 1`` steps (``Generator.snapshot_item``, the streaming protocol's per-item snapshot: the Temporal
Transformer's keys and values with their positions, the token ring and its given-flags, the offsets) and
:func:`restore` writes it into any item of a running generator, wherever its ring stands. The prompt's last step is then run normally (:func:`~fullduplex.inference.prompt.prompt_step`) in the
batch it joins: that step is the first to sample a token the conversation keeps, so it draws from the session's
own random stream, and a cached start is bit-identical to running the whole prompt in that slot, greedy or
sampled. Mimi keeps nothing from the prompt (the user's channel is forced to the sine codes; the reference resets
Mimi before the user's audio), so a slot's codec state is simply reset when the session joins.
:class:`PersonaCache` keeps such states in an LRU bounded in bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .generator import Generator
from .prompt import Schedule, StepInputs, step_inputs


@dataclass(frozen=True, eq=False)
class Persona:
    """What a session asks for: ``key`` identifies it in the cache (voice file identity and role text);
    ``schedule`` its forced frames (:func:`~fullduplex.inference.prompt.build_schedule`)."""

    key: tuple
    schedule: Schedule
    inputs: StepInputs

    @classmethod
    def from_schedule(cls, key: tuple, schedule: Schedule, config) -> Persona:
        if len(schedule) < 2:
            raise ValueError("a persona prompt needs at least 2 frames")
        return cls(key, schedule, step_inputs(schedule, config))

    @property
    def frames(self) -> int:
        return len(self.schedule)


@dataclass(frozen=True)
class PersonaState:
    """One item's generator state after ``steps`` prompt steps (:func:`snapshot`): ``items`` is
    ``Generator.snapshot_item`` (per streaming module: the Temporal Transformer's written keys/values and their
    positions, oldest first, the token ring and its given-flags, the offsets), on the host."""

    items: dict
    steps: int

    @property
    def nbytes(self) -> int:
        return _nbytes(self.items)


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _to(value: object, device: torch.device | str) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


@torch.no_grad()
def snapshot(gen: Generator, item: int) -> PersonaState:
    """Copy item ``item``'s state out of a streaming ``gen`` to the host (host work: not for the hot path)."""
    items = _to(gen.snapshot_item(item), "cpu")
    return PersonaState(items, int(items[""]["offsets"]))


@torch.no_grad()
def restore(gen: Generator, item: int, persona: PersonaState) -> None:
    """Write ``persona`` into item ``item`` of a streaming ``gen``, wherever its ring stands (the keys go to the
    ring slots just behind the shared write slot, as if the item had stepped through the prompt there)."""
    gen.restore_item(item, persona.items)


@torch.no_grad()
def prefill(gen: Generator, persona: Persona) -> PersonaState:
    """The persona's state from a fresh batch-1 run of its first ``T - 1`` prompt steps (``gen`` must not be
    streaming). The engine instead runs the prompt in the session's own slot and snapshots it there."""
    from .prompt import run_prompt

    with gen.streaming(1):
        run_prompt(gen, persona.schedule, steps=persona.frames - 1)
        return snapshot(gen, 0)


@dataclass
class PersonaCache:
    """LRU of :class:`PersonaState` by persona key, at most ``max_bytes`` in total (0 keeps nothing). Thread-safe."""

    max_bytes: int = 1 << 30
    hits: int = 0
    misses: int = 0
    _states: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._states.values())

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: tuple) -> PersonaState | None:
        with self._lock:
            state = self._states.get(key)
            if state is None:
                self.misses += 1
                return None
            self._states.move_to_end(key)
            self.hits += 1
            return state

    def put(self, key: tuple, state: PersonaState) -> None:
        with self._lock:
            if state.nbytes > self.max_bytes:
                return
            self._states[key] = state
            self._states.move_to_end(key)
            while self.nbytes > self.max_bytes:
                self._states.popitem(last=False)
