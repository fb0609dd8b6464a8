"""The real-time server: every live conversation in one batched model step per 80 ms frame.

Routes: ``GET /`` (the web page: ``fullduplex/server/static``, served from the package, nothing from a CDN),
``GET /api/chat`` (WebSocket, the Moshi wire protocol: see ``docs/protocol.md``; PersonaPlex's ``text_prompt`` and
``voice_prompt`` query parameters choose a persona, see ``docs/personas.md``), ``GET /api/voices``, ``GET /api/health``
(JSON: ``ok`` 200, ``full`` 503 when every slot is taken, ``error`` 503; see ``docs/deploy.md``), ``GET /api/metrics``
(Prometheus text). The model runs in :class:`~fullduplex.inference.Engine` on one worker thread (one engine and
thread per device with ``--devices``: :class:`~fullduplex.server.pool.EnginePool`); the event loop only moves bytes.

Stepping: the loop steps as soon as every started session has a whole frame of input, or 80 ms after the previous
step when some do (the others then run on silence: an underrun, counted). Real-time clients are thus served in
real time, and clients that send faster (``fullduplex client --fast``) as fast as the model runs. A step that takes
longer than 80 ms means the server falls behind real time: it is logged and counted, never hidden.

Limits (``ServerConfig``, ``docs/protocol.md`` "Limits and abuse"): a client is *paced*, never dropped, when it sends
faster than its session is stepped: the server stops reading its socket while more than ``max_pending_seconds`` of
its audio waits, and while it exceeds ``max_messages_per_second`` / ``max_bytes_per_second``. A message that breaks a
limit outright (too big, declaring more than ``max_message_seconds`` of audio) ends only its own session, with an
Error message. Every expected failure is one log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import mimetypes
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from aiohttp import WSMsgType, web
from aiohttp.web_log import AccessLogger

from ..inference.engine import Engine, EngineFull, Session
from ..inference.persona import Persona
from ..text.tokenizer import TextTokenizer
from . import protocol
from .metrics import metrics_text
from .personas import PersonaError, PersonaLibrary, persona_trained
from .pool import EnginePool, Lane

log = logging.getLogger("fullduplex.server")

STATIC = Path(__file__).parent / "static"
SWITCH_INTERVAL = 0.0005  # seconds; see Server._start
mimetypes.add_type("application/wasm", ".wasm")  # WebAssembly.instantiateStreaming insists on this type
_GONE = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8998
    # When set, /api/chat, /api/voices and /api/metrics need it ("Authorization: Bearer T" or ?auth_token=T).
    auth_token: str | None = None
    # Origins (scheme://host[:port]) whose web pages may open /api/chat besides the server's own host; "*" = any.
    # Requests without an Origin header (non-browser clients) are always allowed.
    allow_origins: tuple[str, ...] = ()
    max_message_bytes: int = 1 << 16  # one client message; Opus pages are a few hundred bytes
    max_message_seconds: float = 2.0  # audio one message may declare (checked before decoding)
    max_pending_seconds: float = 0.48  # received audio waiting for the model beyond which the socket is not read
    max_messages_per_second: float = 200.0  # per session, over a 1 s burst; beyond it reading pauses
    max_bytes_per_second: float = float(1 << 17)  # per session, over a 1 s burst; beyond it reading pauses
    idle_timeout: float = 30.0  # seconds without a message from the client end its session
    max_session_seconds: float = 600.0  # a conversation longer than this is ended (the LM's context is 240 s)
    frame_seconds: float = 0.08
    # The web page: "" serves fullduplex's own (fullduplex/server/static); "none" serves no page (moshi's
    # `--static none`); a folder serves its index.html at / and its files below / (moshi's `--static DIR`).
    static: str = ""

    def __post_init__(self) -> None:
        positive = ("max_message_bytes", "max_message_seconds", "max_messages_per_second", "max_bytes_per_second",
                    "idle_timeout", "max_session_seconds", "frame_seconds")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be positive, got {getattr(self, name)}")
        if self.max_pending_seconds < self.frame_seconds:
            raise ValueError(f"ServerConfig.max_pending_seconds must be at least one frame ({self.frame_seconds} s), "
                             f"got {self.max_pending_seconds}")


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log, with the value of ``auth_token`` in a logged URL replaced by ``***``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if "auth_token" in request.query:
            query = request.query.copy()
            query["auth_token"] = "***"
            request = request.clone(rel_url=request.rel_url.with_query(query))
        super().log(request, response, time)


class OneLineHttpErrors(logging.Filter):
    """On aiohttp's ``aiohttp.server`` logger: a request aiohttp could not parse (a URL over its line limit, garbage
    instead of HTTP) or a connection reset becomes one line without a traceback: a client must not be able to flood
    the log with them."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (HttpProcessingError, ConnectionError)):
            record.msg, record.args = f"{record.getMessage()}: {type(error).__name__}: {error}".strip(), ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class _Pace:
    """A token bucket: ``rate`` per second, bursts up to ``rate``; :meth:`take` says how long to wait."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.last = rate, rate, time.monotonic()

    def take(self, amount: float) -> float:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate) - amount
        self.last = now
        return max(0.0, -self.tokens / self.rate)


def new_model_thread() -> ThreadPoolExecutor:
    """The single worker thread that loads and steps the models."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="fullduplex-model")


class Server:
    """Holds the engine (or an :class:`EnginePool` of several), the stepping tasks and the per-session senders;
    :meth:`app` builds the aiohttp app. A speech-to-text model's sessions (``speaks`` False) get Text messages
    and no Audio."""

    def __init__(
        self,
        engine: Engine | EnginePool,
        tokenizer: TextTokenizer,
        config: ServerConfig | None = None,
        model_thread: ThreadPoolExecutor | None = None,
        personas: PersonaLibrary | None = None,
    ) -> None:
        self.tokenizer, self.config = tokenizer, config or ServerConfig()
        self.personas = personas
        # All model work belongs on one thread: torch's OpenMP keeps a thread team per calling thread, and once two
        # teams exist on 2 cores an engine step took 95 ms instead of 63 (measured). Load the models with
        # `model_thread.submit(...)` too, then hand it here (see `fullduplex serve`). A pool brings its own threads.
        if isinstance(engine, EnginePool):
            self.pool = engine
        else:
            self.pool = EnginePool.single(engine, model_thread or new_model_thread())
        self.engine = self.pool.engines[0]  # the only one unless serving several devices
        self.speaks = self.engine.lm.config.own_q > 0
        self._executor = self.pool.lanes[0].thread  # persona preparation runs here
        self._input = asyncio.Event()  # shared by the step loops: each re-checks its own sessions when woken
        self._outputs: dict[Session, asyncio.Event] = {}  # session -> set after each step of its engine
        self._tasks: list[asyncio.Task] = []
        self._stepped = asyncio.Event()  # set (and replaced) after every step of any engine
        self.refused = 0
        self.behind = 0
        self.errors = 0
        self.paced = 0  # times a session's socket was not read for a while (pending audio or rate over a limit)
        self.max_pending = 0  # the most samples any session had waiting (after a message was taken)

    # --- app ----------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_message_bytes)
        if not self.config.static:
            app.router.add_get("/", self.index)
            app.router.add_static("/static", STATIC, follow_symlinks=False)
        app.router.add_get("/api/chat", self.chat)
        app.router.add_get("/api/voices", self.voices)
        app.router.add_get("/api/health", self.health)
        app.router.add_get("/api/metrics", self.metrics)
        if self.config.static and self.config.static != "none":  # after /api/*: the folder's files come last
            app.router.add_get("/", self.static_index)
            app.router.add_static("/", Path(self.config.static), follow_symlinks=False)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        # The model thread gives up the GIL inside every CUDA-graph replay and device copy, and must win it back from
        # the event loop (busy with Opus and sockets for every session) each time. At the default 5 ms switch
        # interval that wait inflated a 30 ms step of 32 real-time sessions (7B bf16) to 82 ms on an H200; at 0.5 ms
        # it took 34-54 ms (benchmarks/server_load.py --switch-interval).
        self._log_filter = OneLineHttpErrors()
        logging.getLogger("aiohttp.server").addFilter(self._log_filter)
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL))
        self.pool.start()
        self._input = asyncio.Event()
        self._tasks = [asyncio.create_task(self._step_loop(lane), name=f"fullduplex-steps-{i}")
                       for i, lane in enumerate(self.pool.lanes)]

    async def _stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a failed model step, already logged when it happened
                pass
        self.pool.stop()
        sys.setswitchinterval(self._switch_interval)
        logging.getLogger("aiohttp.server").removeFilter(self._log_filter)

    # --- stepping -----------------------------------------------------------------------------------------
    @staticmethod
    def _started(engine: Engine) -> list[Session]:
        return [s for s in engine.sessions if s is not None and s.started]

    async def _step_loop(self, lane: Lane) -> None:
        """Step ``lane``'s engine on its own model thread (one such loop per engine)."""
        loop = asyncio.get_running_loop()
        engine = lane.engine
        frame, period = engine.mimi.frame_size, self.config.frame_seconds
        last = loop.time()
        while True:
            prompting = any(s is not None and s.prompting for s in engine.sessions)
            if not prompting and not any(s.buffered >= frame for s in self._started(engine)):
                self._input.clear()
                await self._input.wait()
                continue
            deadline = last + period
            while not all(s.buffered >= frame for s in self._started(engine)) and loop.time() < deadline:
                self._input.clear()
                try:
                    await asyncio.wait_for(self._input.wait(), timeout=max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
            last = loop.time()
            try:
                await loop.run_in_executor(lane.thread, engine.step)
            except Exception:
                log.exception("the model step on %s failed; the server stops stepping (see /api/health)", lane.device)
                raise
            took = loop.time() - last
            if took > period:
                self.behind += 1
                lane.behind += 1
                if lane.behind == 1 or lane.behind % 100 == 0:
                    log.warning("a model step on %s took %.0f ms (> %.0f ms): falling behind real time (%d such steps)",
                                lane.device, took * 1e3, period * 1e3, lane.behind)
            for session in engine.sessions:
                event = self._outputs.get(session) if session is not None else None
                if event is not None:
                    event.set()
            self._stepped.set()
            self._stepped = asyncio.Event()

    # --- routes -------------------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        token = self.config.auth_token
        if token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        candidates = [given.strip()] if scheme.lower() == "bearer" else []
        candidates.append(request.query.get("auth_token", ""))
        want = token.encode("utf-8")
        # Compare every candidate, in constant time, so the answer's timing says nothing about the token.
        matches = [hmac.compare_digest(c.encode("utf-8", "surrogateescape"), want) for c in candidates]
        return any(matches)

    def _require_auth(self, request: web.Request) -> None:
        if not self._authorized(request):
            log.info("%s: %s %s refused: no valid auth token", request.remote, request.method, request.path)
            raise web.HTTPUnauthorized(text="a valid auth token is required (--auth-token on the client)")

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser (moshi's client, ours): nothing to protect against
            return True
        allowed = self.config.allow_origins
        if "*" in allowed:
            return True
        origin = origin.strip().rstrip("/").lower()
        host = request.headers.get("Host", "").strip().lower()
        if host and origin.partition("://")[2] == host:  # this server's own web page
            return True
        return origin in {o.strip().rstrip("/").lower() for o in allowed}

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def static_index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(Path(self.config.static) / "index.html", headers={"Cache-Control": "no-cache"})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self._require_auth(request)
        if not self._origin_allowed(request):
            log.info("%s: /api/chat refused for Origin %s", request.remote, request.headers.get("Origin"))
            raise web.HTTPForbidden(text="this page's origin may not use this server (--allow-origin on the server)")
        ws = web.WebSocketResponse(max_msg_size=self.config.max_message_bytes)
        await ws.prepare(request)
        try:
            await self._chat(request, ws)
        except ConnectionError as e:  # the client reset the connection while we wrote to it
            log.info("%s: the client went away (%s)", request.remote, type(e).__name__)
        except asyncio.CancelledError:  # aiohttp cancels the handler of a connection that is lost
            log.info("%s: the connection was lost", request.remote)
            raise
        return ws

    async def _chat(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        peer = request.remote or "?"
        if not self.healthy:
            await self._fail(ws, peer, "the server's model failed; see its log")
            return
        persona = None
        if self.personas is not None:
            query = request.query
            try:
                persona = await self._persona(query.get("text_prompt"), query.get("voice_prompt"))
            except PersonaError as e:
                await self._fail(ws, peer, str(e))
                return
            except Exception:  # not expected: the traceback goes to the log, a message without details to the client
                log.exception("%s: building the persona failed", peer)
                await self._fail(ws, peer, "the server could not build this persona; see its log")
                return
        try:
            session = await self._open(persona)
        except EngineFull as e:
            self.refused += 1
            log.info("%s: refused: %s", peer, e)
            await ws.send_bytes(protocol.error(str(e)))
            await ws.close()
            return
        ready = asyncio.Event()
        self._outputs[session] = ready
        sender = first = None
        try:
            left, first = await self._await_prompt(ws, session, ready)
            if left:
                log.info("%s: the client left while its persona prompt ran", peer)
                return
            sender = asyncio.create_task(self._send(ws, session, ready))
            await ws.send_bytes(protocol.handshake())
            await self._receive(ws, session, peer, first)
        finally:
            if first is not None and not first.done():
                first.cancel()
            self._close(session)
            self._outputs.pop(session, None)
            if sender is not None:
                sender.cancel()
                try:
                    await sender
                except (asyncio.CancelledError, ConnectionError):
                    pass
            if not ws.closed:
                await ws.close()

    # The three places a conversation meets the engines (overridden by the I/O workers of ``workers.py``, whose
    # engines live in another process).
    async def _persona(self, text_prompt: str | None, voice_prompt: str | None) -> Persona | None:
        """The persona a client asks for (PersonaError when it cannot have it); built on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.personas.persona, text_prompt, voice_prompt)

    async def _open(self, persona: Persona | None) -> Session:
        return self.pool.open(persona)

    def _close(self, session: Session) -> None:
        self.pool.close(session)

    async def _await_prompt(
        self, ws: web.WebSocketResponse, session: Session, ready: asyncio.Event,
    ) -> tuple[bool, asyncio.Future | None]:
        """Wait while the persona's prompt runs in the session's slot, reading the socket meanwhile so that a client
        that leaves frees its slot at once (a closed socket shows only when read). Returns (whether the client left,
        the read begun meanwhile: the conversation's first message, done or not)."""
        if session.live:
            return False, None
        reader = asyncio.ensure_future(ws.receive())
        try:
            while not session.live:
                self._input.set()
                waiter = asyncio.ensure_future(ready.wait())
                try:
                    await asyncio.wait({waiter} if reader.done() else {waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                ready.clear()
                if reader.done() and (reader.cancelled() or reader.exception() or reader.result().type in _GONE):
                    return True, reader
        except BaseException:  # cancelled (aiohttp cancels the handler when the connection is lost)
            reader.cancel()
            raise
        return False, reader

    async def _receive(
        self, ws: web.WebSocketResponse, session: Session, peer: str, first: asyncio.Future | None,
    ) -> None:
        config, decoder = self.config, protocol.OpusDecoder()
        rate = decoder.sample_rate
        max_samples = int(config.max_message_seconds * rate)
        max_pending = int(config.max_pending_seconds * rate)
        messages, volume = _Pace(config.max_messages_per_second), _Pace(config.max_bytes_per_second)
        started = time.monotonic()
        while True:
            remaining = config.max_session_seconds - (time.monotonic() - started)
            if remaining <= 0:
                await self._fail(ws, peer, f"the conversation reached the server's limit of {config.max_session_seconds:.0f} s")
                return
            try:
                timeout = min(config.idle_timeout, remaining)
                if first is not None:  # the read begun while the persona's prompt ran
                    reading, first = first, None
                    msg = await asyncio.wait_for(reading, timeout=timeout)
                else:
                    msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                if time.monotonic() - started >= config.max_session_seconds:
                    continue
                await self._fail(ws, peer, f"no message from the client for {config.idle_timeout:.0f} s")
                return
            if msg.type == WSMsgType.ERROR:  # aiohttp has closed the socket (1009 for a message over the size limit)
                self.errors += 1
                log.info("%s: session ended: %s", peer, msg.data)
                return
            if msg.type in _GONE:
                return
            if msg.type != WSMsgType.BINARY:
                await self._fail(ws, peer, "expected binary messages (the Moshi wire protocol)")
                return
            try:
                message = protocol.decode(msg.data)
                if message.kind == protocol.Kind.AUDIO:
                    pcm = decoder.decode(message.payload, max_samples=max_samples)
                    if len(pcm):
                        session.push(torch.from_numpy(pcm))
                        self._input.set()
            except protocol.ProtocolError as e:
                await self._fail(ws, peer, f"malformed message: {e}")
                return
            # Other kinds (control, ping, metadata, unknown) carry nothing a full-duplex session needs.
            self.max_pending = max(self.max_pending, session.buffered)
            wait = max(messages.take(1), volume.take(len(msg.data)))
            if wait > 0 or session.buffered > max_pending:
                self.paced += 1
            if wait > 0:
                await asyncio.sleep(wait)
            # Backpressure: while more audio waits than the bound, leave the socket unread (aiohttp then stops
            # reading from TCP, and the client's sends block): a --fast client is slowed to the model's pace.
            while session.buffered > max_pending and self.healthy:
                try:
                    await asyncio.wait_for(self._stepped.wait(), timeout=1.0)
                except TimeoutError:  # no step for a second: look at the server's health again
                    pass

    async def _fail(self, ws: web.WebSocketResponse, peer: str, message: str) -> None:
        """End a session for an expected reason: one log line, and an Error message while the socket is open."""
        self.errors += 1
        log.info("%s: session ended: %s", peer, message)
        if not ws.closed:
            await ws.send_bytes(protocol.error(message))
            await ws.close()

    async def _send(self, ws: web.WebSocketResponse, session: Session, ready: asyncio.Event) -> None:
        encoder = protocol.OpusEncoder()
        while not ws.closed:
            await ready.wait()
            ready.clear()
            for out in session.pop_outputs():
                ogg = encoder.encode(out.pcm.numpy()) if self.speaks else b""  # speech to text: Text messages only
                if ogg:
                    await ws.send_bytes(protocol.audio(ogg))
                if out.text is not None and self.tokenizer.is_text(out.text):
                    await ws.send_bytes(protocol.text(self.tokenizer.piece(out.text)))

    def counters(self) -> dict[str, int]:
        """The counters ``/api/metrics`` reports (refused, errors, paced, behind)."""
        return {"refused": self.refused, "errors": self.errors, "paced": self.paced, "behind": self.behind}

    @property
    def healthy(self) -> bool:
        """False once a stepping task has died (a failed model step): its sessions would get no more audio."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    async def voices(self, request: web.Request) -> web.Response:
        """The voice folder's voices and the defaults, for the web page's menu."""
        self._require_auth(request)
        lib = self.personas
        if lib is None:
            return web.json_response({"voices": [], "default_voice": None, "default_text": None, "persona_trained": False})
        return web.json_response({
            "voices": lib.voices(), "default_voice": lib.default_voice, "default_text": lib.default_text,
            "persona_trained": persona_trained(lib.config),
        })

    async def health(self, request: web.Request) -> web.Response:
        """``ok`` (200), ``full`` (503: every slot taken, so a load balancer's health check sends new
        conversations elsewhere until one ends) or ``error`` (503: a model step failed); sessions and slots in
        total and per engine."""
        pool = self.pool
        status = "error" if not self.healthy else "full" if pool.full else "ok"
        devices = [{"device": lane.device, "sessions": lane.engine.active, "max_sessions": lane.engine.max_sessions}
                   for lane in pool.lanes]
        return web.json_response(
            {"status": status, "sessions": pool.active, "max_sessions": pool.max_sessions, "devices": devices},
            status=200 if status == "ok" else 503,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return web.Response(text=metrics_text(self), content_type="text/plain")
