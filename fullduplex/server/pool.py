"""Several engines served as one: one :class:`~fullduplex.inference.Engine` per device (``fullduplex serve
--devices cuda:0,cuda:1``), each on its own model thread with its own step loop in the server. A new session goes
to the least-loaded engine; health and metrics add the engines up (and list them one by one).

One engine is the common case: ``EnginePool.single(engine, thread)``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..inference.engine import Engine, EngineFull, Session
from ..inference.persona import Persona


@dataclass(eq=False)
class Lane:
    """One engine and the single thread that loads and steps its models (see ``new_model_thread``)."""

    engine: Engine
    thread: ThreadPoolExecutor
    behind: int = 0  # steps that took longer than a frame

    @property
    def device(self) -> str:
        return str(self.engine.device)


class EnginePool:
    """The engines of one server. Not thread-safe: call it from the event loop (each engine's own lock guards it
    against its model thread)."""

    def __init__(self, lanes: list[Lane]) -> None:
        if not lanes:
            raise ValueError("an engine pool needs at least one engine")
        self.lanes = lanes

    @classmethod
    def single(cls, engine: Engine, thread: ThreadPoolExecutor) -> EnginePool:
        return cls([Lane(engine, thread)])

    @property
    def engines(self) -> list[Engine]:
        return [lane.engine for lane in self.lanes]

    # --- sessions -----------------------------------------------------------------------------------------
    def open(self, persona: Persona | None = None) -> Session:
        """A new session on the least-loaded engine (fewest busy slots for its size; the first such one on a tie);
        :class:`EngineFull` when every slot of every engine is taken."""
        order = sorted(range(len(self.lanes)), key=lambda i: (self.engines[i].active / self.engines[i].max_sessions, i))
        for i in order:
            try:
                return self.engines[i].open(persona)
            except EngineFull as e:
                if len(self.lanes) == 1:
                    raise
                full = e
        raise EngineFull(f"all {self.max_sessions} conversation slots of its {len(self.lanes)} engines are busy; "
                         "try again later") from full

    def lane_of(self, session: Session) -> Lane:
        """The lane whose engine holds ``session`` (the first lane for a session already closed and replaced)."""
        for lane in self.lanes:
            if session.slot < lane.engine.max_sessions and lane.engine.sessions[session.slot] is session:
                return lane
        return self.lanes[0]

    def close(self, session: Session) -> None:
        """Free the session's slot on whichever engine holds it."""
        for engine in self.engines:
            if session.slot < engine.max_sessions and engine.sessions[session.slot] is session:
                engine.close(session)
                return
        session.closed = True

    # --- the server's life --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start each engine on its own model thread, which it then keeps (its current CUDA device is the engine's:
        CUDA graphs capture on the current device's stream, and seeds go to its generator)."""
        for lane in self.lanes:
            lane.thread.submit(_start_here, lane.engine).result()

    def stop(self) -> None:
        """Wait for every model thread to finish its work, then stop the engines."""
        for lane in self.lanes:
            lane.thread.shutdown(wait=True)
        for engine in self.engines:
            engine.stop()

    # --- totals for health and metrics --------------------------------------------------------------------
    @property
    def active(self) -> int:
        return sum(e.active for e in self.engines)

    @property
    def max_sessions(self) -> int:
        return sum(e.max_sessions for e in self.engines)

    @property
    def full(self) -> bool:
        """Every slot of every engine is taken: a new session would be refused."""
        return self.active >= self.max_sessions

    @property
    def steps(self) -> int:
        return sum(e.steps for e in self.engines)

    @property
    def step_times(self) -> list[float]:
        """Recent step times (seconds) of all engines together."""
        return [t for e in self.engines for t in e.step_times]

    def persona_cache(self) -> tuple[int, int, int, int]:
        """(bytes, entries, hits, misses) of the engines' persona caches together (each engine keeps its own:
        a cached state lives on its engine's device)."""
        caches = {id(e.personas): e.personas for e in self.engines}.values()  # engines may share one cache
        return (sum(c.nbytes for c in caches), sum(len(c) for c in caches), sum(c.hits for c in caches),
                sum(c.misses for c in caches))


def _start_here(engine: Engine) -> None:
    if engine.device.type == "cuda" and engine.device.index is not None:
        torch.cuda.set_device(engine.device)  # per thread: this model thread's kernels and graphs go to its device
    engine.start()
