"""I/O worker processes: the sockets and the Ogg/Opus work of every conversation run outside the process that steps
the model (``fullduplex serve --io-workers N``).

Why: ``sphn``'s Opus encoder holds the interpreter lock while it works (two threads encoding take 2.1x the time
of one for twice the work, measured), and so do the sockets' Python code and the per-session bookkeeping. In one
process they compete with the model's step for that lock; past ~32 real-time sessions of the 7B on an H200 the
event loop, not the GPU, was the limit. Here the model process keeps the engines and their step loops and nothing
else; N worker processes, each an ordinary :class:`~fullduplex.server.app.Server` (the same routes, limits, auth
and error handling) whose engines are replaced by a proxy, accept connections on the same port (``SO_REUSEPORT``:
the kernel spreads new connections over them) and do the Opus and socket work on the machine's other cores.

Between them, per session and 80 ms frame, only PCM frames and tokens cross, through the shared-memory rings of
:class:`~fullduplex.server.channel.SlotChannel` (two memory copies, no pickling, no lock). What else crosses is
small and rare and goes over one ``multiprocessing`` pipe per worker: open and close of a session, persona requests,
statistics for ``/api/health`` and ``/api/metrics``; plus one byte each way as a wake-up (a worker wrote input; a
step produced output). The model process reads input rings one frame ahead of its step, so a client that sends
faster than real time fills its ring and then its worker's buffer, and the worker's backpressure (see ``app.py``)
slows it down as in one process.

A worker that dies ends only its own sessions (their clients see the connection drop; the model process frees their
slots at once and starts a new worker). If the model process dies, the workers end their sessions with an Error
message and exit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from aiohttp import web

from ..errors import FullduplexError
from ..inference.engine import EngineFull, FrameOutput, Session
from .app import RedactingAccessLogger, Server, ServerConfig
from .channel import SlotChannel
from .personas import PersonaError, persona_trained

log = logging.getLogger("fullduplex.server")

RESTARTS_PER_MINUTE = 5  # a worker that keeps dying is not restarted more often than this


# --- the worker's view of the model process --------------------------------------------------------------------
class PieceTable:
    """The tokenizer as the server uses it (``is_text``, ``piece``), as a table made in the model process."""

    def __init__(self, pieces: list[str | None]) -> None:
        self.pieces = pieces

    @classmethod
    def of(cls, tokenizer: Any, size: int) -> PieceTable:
        pieces: list[str | None] = []
        for token in range(size):
            try:
                pieces.append(tokenizer.piece(token) if tokenizer.is_text(token) else None)
            except (IndexError, ValueError):  # ids past the tokenizer's vocabulary are not text
                pieces.append(None)
        return cls(pieces)

    def is_text(self, token: int) -> bool:
        return 0 <= token < len(self.pieces) and self.pieces[token] is not None

    def piece(self, token: int) -> str:
        piece = self.pieces[token]
        if piece is None:
            raise IndexError(f"text token {token} is not a piece of text")
        return piece


@dataclass(eq=False)
class RemoteSession:
    """A conversation whose slot is in the model process: the worker's side of :class:`~fullduplex.inference.Session`
    (``push``, ``buffered``, ``live``, ``pop_outputs``). Input goes to the slot's ring in whole frames; what does not
    fit waits here (and counts in ``buffered``, which the server's backpressure reads)."""

    slot: int
    channel: SlotChannel
    notify: Any = None  # called when frames went into the ring (wakes the model process)
    live: bool = False
    closed: bool = False
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _outputs: deque = field(default_factory=deque)

    @property
    def frame_size(self) -> int:
        return self.channel.frame_size

    def push(self, pcm: torch.Tensor | np.ndarray) -> None:
        if self.closed:
            raise FullduplexError("this session is closed")
        pcm = pcm.numpy() if isinstance(pcm, torch.Tensor) else np.asarray(pcm)
        self._pending = np.concatenate([self._pending, pcm.astype(np.float32, copy=False).reshape(-1)])
        if self.flush() and self.notify is not None:
            self.notify()

    def flush(self) -> int:
        """Move whole frames into the ring while it has room; the number moved."""
        moved, frame = 0, self.frame_size
        while len(self._pending) >= frame and self.channel.write_input(self.slot, self._pending[:frame]):
            self._pending = self._pending[frame:]
            moved += 1
        return moved

    @property
    def buffered(self) -> int:
        """Samples received and not yet stepped (here and in the ring)."""
        return len(self._pending) + self.channel.input_ready(self.slot) * self.frame_size

    def collect(self) -> int:
        """Take the frames the model wrote since the last call; how many."""
        frames = self.channel.read_outputs(self.slot)
        for pcm, text, tokens in frames:
            self._outputs.append(FrameOutput(torch.from_numpy(pcm), text, torch.from_numpy(tokens)))
        return len(frames)

    def pop_outputs(self) -> list[FrameOutput]:
        out = list(self._outputs)
        self._outputs.clear()
        return out


class _EngineView:
    """One engine as the model process last reported it (a plain object: metrics keep per-engine state by it)."""

    active = max_sessions = steps = 0
    step_times: tuple[float, ...] = ()


class RemotePool:
    """What :class:`Server` reads of its :class:`~fullduplex.server.pool.EnginePool` for health and metrics, from
    the model process's last statistics."""

    def __init__(self, stats: dict) -> None:
        self.lanes: list[SimpleNamespace] = []
        self.update(stats)

    def update(self, stats: dict) -> None:
        self.stats = stats
        while len(self.lanes) < len(stats["lanes"]):
            self.lanes.append(SimpleNamespace(device="", behind=0, engine=_EngineView()))
        for lane, reported in zip(self.lanes, stats["lanes"], strict=False):
            lane.device, lane.behind = reported["device"], reported["behind"]
            engine = lane.engine
            engine.active, engine.max_sessions = reported["active"], reported["max_sessions"]
            engine.steps, engine.step_times = reported["steps"], tuple(reported["step_times"])
        self.engines = [lane.engine for lane in self.lanes]

    active = property(lambda self: sum(e.active for e in self.engines))
    max_sessions = property(lambda self: sum(e.max_sessions for e in self.engines))
    steps = property(lambda self: sum(e.steps for e in self.engines))
    full = property(lambda self: self.active >= self.max_sessions)

    @property
    def step_times(self) -> list[float]:
        return [t for e in self.engines for t in e.step_times]

    def persona_cache(self) -> tuple[int, int, int, int]:
        return tuple(self.stats["persona_cache"])


class WorkerServer(Server):
    """A :class:`Server` in an I/O worker: the same routes, limits and session handling; the engines are in the
    model process, reached through ``control`` (requests), ``wake`` (one byte per step, from the model) and
    ``nudge`` (one byte when input was written, to the model)."""

    def __init__(self, config: ServerConfig, index: int, channel: SlotChannel, control: Any, wake: Any, nudge: Any,
                 pieces: PieceTable, stats: dict, personas: bool) -> None:
        self.pool, self.tokenizer, self.config = RemotePool(stats), pieces, config
        self.speaks = stats.get("speaks", True)  # False: a speech-to-text model (no Audio messages)
        self.personas = True if personas else None  # only checked for None: requests go to the model process
        self.worker_index, self.channel, self.control, self.wake, self.nudge = index, channel, control, wake, nudge
        self._input = asyncio.Event()
        self._outputs: dict[RemoteSession, asyncio.Event] = {}
        self._stepped = asyncio.Event()
        self._sessions: dict[int, RemoteSession] = {}
        self._replies: dict[int, asyncio.Future] = {}
        self._ids = itertools.count()
        self._model_alive = True
        self.refused = self.errors = self.paced = self.behind = self.max_pending = 0
        self._tasks: list[asyncio.Task] = []

    # --- life -----------------------------------------------------------------------------------------------
    async def _start(self, app: web.Application) -> None:
        from .app import OneLineHttpErrors

        self._log_filter = OneLineHttpErrors()
        logging.getLogger("aiohttp.server").addFilter(self._log_filter)
        loop = asyncio.get_running_loop()
        os.set_blocking(self.nudge.fileno(), False)
        loop.add_reader(self.control.fileno(), self._on_control)
        loop.add_reader(self.wake.fileno(), self._on_wake)
        self._tasks = [asyncio.create_task(self._report_counters(), name="fullduplex-worker-counters")]

    async def _stop(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        for fd in (self.control.fileno(), self.wake.fileno()):
            loop.remove_reader(fd)
        for task in self._tasks:
            task.cancel()
        logging.getLogger("aiohttp.server").removeFilter(self._log_filter)

    @property
    def healthy(self) -> bool:
        return self._model_alive and bool(self.pool.stats.get("healthy", False))

    # --- requests to the model process -----------------------------------------------------------------------
    async def _request(self, kind: str, *args: Any) -> Any:
        if not self._model_alive:
            raise FullduplexError("the server's model process has stopped")
        rid = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        self._replies[rid] = reply
        try:
            self.control.send((kind, rid, *args))
            return await reply
        finally:
            self._replies.pop(rid, None)

    def _on_control(self) -> None:
        try:
            while self.control.poll():
                message = self.control.recv()
                kind = message[0]
                if kind == "reply":
                    future = self._replies.get(message[1])
                    if future is not None and not future.done():
                        future.set_result(message[2])
                elif kind == "live":
                    session = self._sessions.get(message[1])
                    if session is not None:
                        session.live = True
                        event = self._outputs.get(session)
                        if event is not None:
                            event.set()
                elif kind == "stats":
                    self.pool.update(message[1])
        except (EOFError, OSError):
            self._model_gone()

    def _model_gone(self) -> None:
        """The model process ended: every session gets no more audio. End them with a message; then stop."""
        if not self._model_alive:
            return
        self._model_alive = False
        asyncio.get_running_loop().remove_reader(self.control.fileno())
        for future in self._replies.values():
            if not future.done():
                future.set_exception(FullduplexError("the server's model process has stopped"))
        for session in self._sessions.values():
            session.closed = True
        self._wake_all()
        os.kill(os.getpid(), signal.SIGTERM)  # web.run_app's handler: cleanup, then exit

    def _on_wake(self) -> None:
        """After a step of the model: input ring space freed, output frames written."""
        try:
            os.read(self.wake.fileno(), 4096)
        except BlockingIOError:
            pass
        wrote = False
        for session in self._sessions.values():
            wrote |= session.flush() > 0
            session.collect()
        if wrote:
            self._nudge()
        self._wake_all()

    def _wake_all(self) -> None:
        for event in self._outputs.values():
            event.set()
        self._stepped.set()
        self._stepped = asyncio.Event()

    def _nudge(self) -> None:
        try:
            os.write(self.nudge.fileno(), b"i")
        except BlockingIOError:  # the model process has wake-ups pending already
            pass

    async def _report_counters(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._model_alive:
                self.control.send(("counters", -1, super().counters()))

    # --- the conversation's meeting points with the engines ---------------------------------------------------
    async def _persona(self, text_prompt: str | None, voice_prompt: str | None) -> Any:
        result = await self._request("persona", text_prompt, voice_prompt)
        if isinstance(result, tuple) and result[0] == "error":
            raise PersonaError(result[1])
        return result  # the persona's number in the model process

    async def _open(self, persona: Any) -> RemoteSession:
        result = await self._request("open", persona)
        if result[0] == "full":
            raise EngineFull(result[1])
        if result[0] == "error":
            raise FullduplexError(result[1])
        _, slot, live = result
        session = RemoteSession(slot, self.channel, self._nudge, live=live)
        self._sessions[slot] = session
        return session

    def _close(self, session: RemoteSession) -> None:
        session.closed = True
        if self._sessions.get(session.slot) is session:
            del self._sessions[session.slot]
            if self._model_alive:
                self.control.send(("close", -1, session.slot))

    # --- routes that read the model's state -------------------------------------------------------------------
    async def _refresh(self) -> None:
        if self._model_alive:
            self.pool.update(await self._request("stats", super().counters()))

    async def health(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self._refresh(), timeout=2.0)
        except (TimeoutError, FullduplexError):  # the last statistics stand; a model process gone is unhealthy
            pass
        return await super().health(request)

    async def metrics(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        await self._refresh()
        return await super().metrics(request)

    def counters(self) -> dict[str, int]:
        """The whole server's counters: every worker's (as the model process last heard them) and its steps."""
        return {**self.pool.stats["counters"], "behind": self.pool.stats["behind"]}

    async def voices(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return web.json_response(await self._request("voices"))


def worker_main(index: int, spec: dict) -> None:
    """An I/O worker process: serve ``spec["config"]`` on its port (shared with the other workers) until the model
    process ends or a signal comes."""
    logging.basicConfig(level=spec["log_level"], format=f"%(asctime)s %(levelname)s %(name)s[io{index}]: %(message)s")
    torch.set_num_threads(1)  # nothing here is torch work beyond views of numpy arrays
    logging.getLogger("aiohttp.access").addFilter(lambda record: "GET /api/health " not in record.getMessage())
    channel = SlotChannel.attach(spec["channel"])
    server = WorkerServer(spec["config"], index, channel, spec["control"], spec["wake"], spec["nudge"],
                          spec["pieces"], spec["stats"], spec["personas"])
    ssl_context = None
    if spec["ssl"]:
        from ..cli.serve import ssl_context as make_ssl

        ssl_context = make_ssl(spec["ssl"])

    async def main() -> None:
        runner = web.AppRunner(server.app(), access_log_class=RedactingAccessLogger, handle_signals=True)
        await runner.setup()
        site = web.TCPSite(runner, spec["config"].host, spec["config"].port, ssl_context=ssl_context, reuse_port=True)
        try:
            await site.start()
        except OSError as e:
            spec["control"].send(("failed", -1, f"cannot listen on {spec['config'].host}:{spec['config'].port}: {e}"))
            await runner.cleanup()
            return
        spec["control"].send(("ready", -1, os.getpid()))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        channel.close()


# --- the model process ------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Worker:
    index: int
    process: Any
    control: Any  # our end of the duplex pipe
    wake: Any  # our (write) end: one byte after each step
    nudge: Any  # our (read) end: the worker wrote input
    ready: asyncio.Future
    counters: dict = field(default_factory=lambda: {"refused": 0, "errors": 0, "paced": 0})
    personas: dict[int, Any] = field(default_factory=dict)  # persona number -> Persona, until opened


class Hub:
    """The model process: ``server``'s engines and step loops, and the I/O workers that serve its port."""

    def __init__(self, server: Server, workers: int, ssl_folder: str | None = None, in_frames: int = 8,
                 out_frames: int = 25) -> None:
        if workers < 1:
            raise ValueError(f"--io-workers must be at least 1, got {workers}")
        self.server, self.count, self.ssl_folder = server, workers, ssl_folder
        pool = server.pool
        self.offsets, total = [], 0
        for lane in pool.lanes:
            self.offsets.append(total)
            total += lane.engine.max_sessions
        engine = pool.engines[0]
        tokens = 1 + engine.lm.config.own_q  # a frame's tokens: the text token and the audio codes
        self.channel = SlotChannel(total, engine.mimi.frame_size, tokens, in_frames, out_frames)
        self.pieces = PieceTable.of(server.tokenizer, engine.lm.config.text_card + 1)
        self.sessions: dict[int, tuple[_Worker, Session]] = {}  # channel slot -> (its worker, its engine session)
        self._live: set[int] = set()  # channel slots whose worker knows they are live
        self.workers: list[_Worker] = []
        self._context = multiprocessing.get_context("spawn")
        self._persona_ids = itertools.count()
        self._restarts: deque[float] = deque()
        self._stopping = False

    # --- statistics -----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        server, pool = self.server, self.server.pool
        counters = {k: sum(w.counters[k] for w in self.workers) for k in ("refused", "errors", "paced")}
        return {
            "healthy": server.healthy, "behind": server.behind, "counters": counters, "speaks": server.speaks,
            "persona_cache": list(pool.persona_cache()),
            "lanes": [{"device": lane.device, "behind": lane.behind, "active": lane.engine.active,
                       "max_sessions": lane.engine.max_sessions, "steps": lane.engine.steps,
                       "step_times": list(lane.engine.step_times)} for lane in pool.lanes],
        }

    # --- workers --------------------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _Worker:
        loop = asyncio.get_running_loop()
        control, their_control = self._context.Pipe(duplex=True)
        wake_read, wake_write = self._context.Pipe(duplex=False)
        nudge_read, nudge_write = self._context.Pipe(duplex=False)
        server = self.server
        spec = {
            "config": server.config, "channel": self.channel.spec, "control": their_control, "wake": wake_read,
            "nudge": nudge_write, "pieces": self.pieces, "stats": self.stats(), "personas": server.personas is not None,
            "ssl": self.ssl_folder, "log_level": logging.getLogger().level or logging.INFO,
        }
        process = self._context.Process(target=worker_main, args=(index, spec), name=f"fullduplex-io{index}",
                                        daemon=True)
        process.start()
        for end in (their_control, wake_read, nudge_write):
            end.close()
        os.set_blocking(wake_write.fileno(), False)
        worker = _Worker(index, process, control, wake_write, nudge_read, loop.create_future())
        loop.add_reader(control.fileno(), self._on_control, worker)
        loop.add_reader(nudge_read.fileno(), self._on_nudge, worker)
        return worker

    def _forget(self, worker: _Worker, why: str) -> None:
        """A worker ended: free its sessions' slots; start a new one unless stopping (or dying too often)."""
        loop = asyncio.get_running_loop()
        for fd in (worker.control.fileno(), worker.nudge.fileno()):
            loop.remove_reader(fd)
        for slot in [slot for slot, (owner, _) in self.sessions.items() if owner is worker]:
            self._close(worker, slot)
        if not worker.ready.done():
            worker.ready.set_exception(FullduplexError(why))
        for end in (worker.control, worker.wake, worker.nudge):
            end.close()
        if worker in self.workers:
            self.workers.remove(worker)
        if self._stopping or worker.ready.exception() is not None:  # stopping, or it never started
            return
        log.error("I/O worker %d ended (%s); its sessions were closed", worker.index, why)
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > 60:
            self._restarts.popleft()
        if len(self._restarts) >= RESTARTS_PER_MINUTE:
            log.error("I/O workers ended %d times in a minute: not starting another", len(self._restarts))
            return
        self._restarts.append(now)
        self.workers.append(self._spawn(worker.index))

    def _on_nudge(self, worker: _Worker) -> None:
        try:
            if not os.read(worker.nudge.fileno(), 4096):
                return  # end of file: the control pipe says why
        except BlockingIOError:
            pass
        except OSError:
            return
        self._pull_input()

    def _pull_input(self) -> None:
        """Move up to one frame per session from its ring into its engine session (the step loop wakes)."""
        moved = False
        for slot, (_, session) in self.sessions.items():
            if session.buffered < session.frame_size:
                frame = self.channel.read_input(slot)
                if frame is not None:
                    session.push(torch.from_numpy(frame))
                    moved = True
        if moved:
            self.server._input.set()

    def _on_control(self, worker: _Worker) -> None:
        try:
            while worker.control.poll():
                self._handle(worker, worker.control.recv())
        except (EOFError, OSError):
            code = worker.process.exitcode
            self._forget(worker, "its pipe closed" if code is None else f"exit code {code}")

    def _reply(self, worker: _Worker, rid: int, value: Any) -> None:
        try:
            worker.control.send(("reply", rid, value))
        except OSError:
            pass  # it ended: its control pipe reports the end of file next

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind, rid = message[0], message[1]
        if kind == "ready":
            worker.ready.set_result(message[2])
        elif kind == "failed":
            if not worker.ready.done():
                worker.ready.set_exception(FullduplexError(message[2]))
        elif kind == "open":
            self._reply(worker, rid, self._open(worker, message[2]))
        elif kind == "close":
            self._close(worker, message[2])
        elif kind == "persona":
            asyncio.get_running_loop().create_task(self._persona(worker, rid, message[2], message[3]))
        elif kind == "stats":
            worker.counters = message[2]
            self._reply(worker, rid, self.stats())
        elif kind == "counters":
            worker.counters = message[2]
        elif kind == "voices":
            lib = self.server.personas
            self._reply(worker, rid, {"voices": [], "default_voice": None, "default_text": None,
                                      "persona_trained": False} if lib is None else {
                "voices": lib.voices(), "default_voice": lib.default_voice, "default_text": lib.default_text,
                "persona_trained": persona_trained(lib.config)})

    async def _persona(self, worker: _Worker, rid: int, text: str | None, voice: str | None) -> None:
        try:
            persona = await self.server._persona(text, voice)
        except PersonaError as e:
            self._reply(worker, rid, ("error", str(e)))
            return
        except Exception:
            log.exception("building a persona failed")
            self._reply(worker, rid, ("error", "the server could not build this persona; see its log"))
            return
        number = next(self._persona_ids)
        worker.personas[number] = persona
        while len(worker.personas) > 64:  # asked for and never opened: the oldest go
            worker.personas.pop(next(iter(worker.personas)))
        self._reply(worker, rid, number)

    def _open(self, worker: _Worker, persona_number: int | None) -> tuple:
        persona = worker.personas.pop(persona_number, None) if persona_number is not None else None
        pool = self.server.pool
        try:
            session = pool.open(persona)
        except EngineFull as e:
            return ("full", str(e))
        slot = self.offsets[pool.lanes.index(pool.lane_of(session))] + session.slot
        self.channel.clear(slot)
        self.sessions[slot] = (worker, session)
        if session.live:
            self._live.add(slot)
        else:
            self.server._input.set()  # its prompt runs in its slot from the next step
        return ("ok", slot, session.live)

    def _close(self, worker: _Worker, slot: int) -> None:
        entry = self.sessions.get(slot)
        if entry is None or entry[0] is not worker:
            return
        del self.sessions[slot]
        self._live.discard(slot)
        self.server.pool.close(entry[1])

    # --- after every step -----------------------------------------------------------------------------------
    async def _after_steps(self) -> None:
        server = self.server
        while True:
            stepped = server._stepped
            await stepped.wait()
            woken = set()
            for slot, (worker, session) in list(self.sessions.items()):
                if not session.live:
                    continue
                if slot not in self._live:  # its persona prompt has just finished: the worker sends the handshake
                    self._live.add(slot)
                    try:
                        worker.control.send(("live", slot))
                    except OSError:
                        pass
                for out in session.pop_outputs():
                    self.channel.write_output(slot, out.pcm.numpy(), out.tokens.numpy(), out.text)
                woken.add(worker)
            self._pull_input()
            for worker in woken:
                try:
                    os.write(worker.wake.fileno(), b"s")
                except (BlockingIOError, OSError):
                    pass

    # --- the whole life ---------------------------------------------------------------------------------------
    async def run(self, on_ready: Any = None) -> None:
        """Start the engines and the workers; serve until SIGINT/SIGTERM; then stop everything."""
        server = self.server
        loop = asyncio.get_running_loop()
        self._loop, stop = loop, asyncio.Event()
        self._stop_event = stop
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await server._start(None)
        after = asyncio.create_task(self._after_steps(), name="fullduplex-hub")
        try:
            self.workers = [self._spawn(i) for i in range(self.count)]
            await asyncio.gather(*(w.ready for w in self.workers))
            if on_ready is not None:
                on_ready()
            health = asyncio.create_task(self._watch(stop))
            await stop.wait()
            health.cancel()
        finally:
            self._stopping = True
            for worker in list(self.workers):
                if worker.process.is_alive():
                    worker.process.terminate()
            for worker in list(self.workers):
                await loop.run_in_executor(None, worker.process.join, 10)
                if worker.process.is_alive():
                    worker.process.kill()
            after.cancel()
            await server._stop(None)
            self.channel.close()

    def stop(self) -> None:
        """End :meth:`run` (from any thread)."""
        self._loop.call_soon_threadsafe(self._stop_event.set)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Tell the workers when the model stops stepping (a failed step): their health says "error"."""
        told = False
        while not stop.is_set():
            await asyncio.sleep(0.5)
            if not self.server.healthy and not told:
                told = True
                for worker in self.workers:
                    try:
                        worker.control.send(("stats", self.stats()))
                    except OSError:
                        pass


def serve_with_workers(server: Server, workers: int, ssl_folder: str | None = None, on_ready: Any = None) -> None:
    """Run ``server`` with ``workers`` I/O worker processes on its host and port, until interrupted."""
    hub = Hub(server, workers, ssl_folder)
    asyncio.run(hub.run(on_ready))
