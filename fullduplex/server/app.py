"""The real-time server: every live conversation in one batched model step per 80 ms frame.

Routes: ``GET /`` (the web page: ``fullduplex/server/static``, served from the package, nothing from a CDN),
``GET /api/chat`` (WebSocket, the Moshi wire protocol: see ``docs/protocol.md``; PersonaPlex's ``text_prompt`` and
``voice_prompt`` query parameters choose a persona, see ``docs/personas.md``), ``GET /api/voices``, ``GET /api/health``
(JSON), ``GET /api/metrics`` (Prometheus text). The model runs in :class:`~fullduplex.inference.Engine` on one
worker thread; the event loop only moves bytes.

Stepping: the loop steps as soon as every started session has a whole frame of input, or 80 ms after the previous
step when some do (the others then run on silence: an underrun, counted). Real-time clients are thus served in
real time, and clients that send faster (``fullduplex client --fast``) as fast as the model runs. A step that takes
longer than 80 ms means the server falls behind real time: it is logged and counted, never hidden.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from aiohttp import WSMsgType, web

from ..inference.engine import Engine, EngineFull, Session
from ..text.tokenizer import TextTokenizer
from . import protocol
from .metrics import metrics_text
from .personas import PersonaError, PersonaLibrary, persona_trained

log = logging.getLogger("fullduplex.server")

STATIC = Path(__file__).parent / "static"
SWITCH_INTERVAL = 0.0005  # seconds; see Server._start
mimetypes.add_type("application/wasm", ".wasm")  # WebAssembly.instantiateStreaming insists on this type


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8998
    auth_token: str | None = None  # when set, /api/chat needs it (header "Authorization: Bearer T" or ?auth_token=T)
    max_message_bytes: int = 1 << 20  # one client message; Opus pages are a few hundred bytes
    idle_timeout: float = 30.0  # seconds without a message from the client end its session
    max_session_seconds: float = 600.0  # a conversation longer than this is ended (the LM's context is 240 s)
    frame_seconds: float = 0.08


def new_model_thread() -> ThreadPoolExecutor:
    """The single worker thread that loads and steps the models."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="fullduplex-model")


class Server:
    """Holds the engine, the stepping task and the per-session senders; :meth:`app` builds the aiohttp app."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: TextTokenizer,
        config: ServerConfig | None = None,
        model_thread: ThreadPoolExecutor | None = None,
        personas: PersonaLibrary | None = None,
    ) -> None:
        self.engine, self.tokenizer, self.config = engine, tokenizer, config or ServerConfig()
        self.personas = personas
        # All model work belongs on one thread: torch's OpenMP keeps a thread team per calling thread, and once two
        # teams exist on 2 cores an engine step took 95 ms instead of 63 (measured). Load the models with
        # `model_thread.submit(...)` too, then hand it here (see `fullduplex serve`).
        self._executor = model_thread or new_model_thread()
        self._input = asyncio.Event()
        self._outputs: dict[int, asyncio.Event] = {}  # slot -> set after each step
        self._task: asyncio.Task | None = None
        self.refused = 0
        self.behind = 0
        self.errors = 0

    # --- app ----------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_message_bytes)
        app.router.add_get("/", self.index)
        app.router.add_static("/static", STATIC, follow_symlinks=False)
        app.router.add_get("/api/chat", self.chat)
        app.router.add_get("/api/voices", self.voices)
        app.router.add_get("/api/health", self.health)
        app.router.add_get("/api/metrics", self.metrics)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        # The model thread gives up the GIL inside every CUDA-graph replay and device copy, and must win it back from
        # the event loop (busy with Opus and sockets for every session) each time. At the default 5 ms switch
        # interval that wait inflated a 30 ms step of 32 real-time sessions (7B bf16) to 82 ms on an H200; at 0.5 ms
        # it took 34-54 ms (benchmarks/server_load.py --switch-interval).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL))
        self.engine.start()
        self._input = asyncio.Event()
        self._task = asyncio.create_task(self._step_loop(), name="fullduplex-steps")

    async def _stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # a failed model step, already logged when it happened
                pass
        self._executor.shutdown(wait=True)
        self.engine.stop()
        sys.setswitchinterval(self._switch_interval)

    # --- stepping -----------------------------------------------------------------------------------------
    def _started(self) -> list[Session]:
        return [s for s in self.engine.sessions if s is not None and s.started]

    async def _step_loop(self) -> None:
        loop = asyncio.get_running_loop()
        frame, period = self.engine.mimi.frame_size, self.config.frame_seconds
        last = loop.time()
        while True:
            prompting = any(s is not None and s.prompting for s in self.engine.sessions)
            if not prompting and not any(s.buffered >= frame for s in self._started()):
                self._input.clear()
                await self._input.wait()
                continue
            deadline = last + period
            while not all(s.buffered >= frame for s in self._started()) and loop.time() < deadline:
                self._input.clear()
                try:
                    await asyncio.wait_for(self._input.wait(), timeout=max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
            last = loop.time()
            try:
                await loop.run_in_executor(self._executor, self.engine.step)
            except Exception:
                log.exception("the model step failed; the server stops stepping (see /api/health)")
                raise
            took = loop.time() - last
            if took > period:
                self.behind += 1
                if self.behind == 1 or self.behind % 100 == 0:
                    log.warning("a model step took %.0f ms (> %.0f ms): falling behind real time (%d such steps)",
                                took * 1e3, period * 1e3, self.behind)
            for event in self._outputs.values():
                event.set()

    # --- routes -------------------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        token = self.config.auth_token
        if token is None:
            return True
        header = request.headers.get("Authorization", "")
        return header == f"Bearer {token}" or request.query.get("auth_token") == token

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="a valid auth token is required (--auth-token on the client)")
        ws = web.WebSocketResponse(max_msg_size=self.config.max_message_bytes)
        await ws.prepare(request)
        if not self.healthy:
            await ws.send_bytes(protocol.error("the server's model failed; see its log"))
            await ws.close()
            return ws
        persona = None
        if self.personas is not None:
            query = request.query
            try:
                persona = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.personas.persona, query.get("text_prompt"), query.get("voice_prompt"))
            except PersonaError as e:
                self.errors += 1
                await ws.send_bytes(protocol.error(str(e)))
                await ws.close()
                return ws
        try:
            session = self.engine.open(persona)
        except EngineFull as e:
            self.refused += 1
            await ws.send_bytes(protocol.error(str(e)))
            await ws.close()
            return ws
        ready = asyncio.Event()
        self._outputs[session.slot] = ready
        sender = None
        try:
            while not session.live and not ws.closed:  # the persona's prompt runs in the slot: handshake after it
                self._input.set()
                await ready.wait()
                ready.clear()
            sender = asyncio.create_task(self._send(ws, session, ready))
            await ws.send_bytes(protocol.handshake())
            await self._receive(ws, session)
        finally:
            self.engine.close(session)
            self._outputs.pop(session.slot, None)
            if sender is not None:
                sender.cancel()
                try:
                    await sender
                except (asyncio.CancelledError, ConnectionError):
                    pass
            if not ws.closed:
                await ws.close()
        return ws

    async def _receive(self, ws: web.WebSocketResponse, session: Session) -> None:
        decoder = protocol.OpusDecoder()
        started = time.monotonic()
        while True:
            remaining = self.config.max_session_seconds - (time.monotonic() - started)
            if remaining <= 0:
                await self._fail(ws, f"the conversation reached the server's limit of {self.config.max_session_seconds:.0f} s")
                return
            try:
                msg = await ws.receive(timeout=min(self.config.idle_timeout, remaining))
            except TimeoutError:
                if time.monotonic() - started >= self.config.max_session_seconds:
                    continue
                await self._fail(ws, f"no message from the client for {self.config.idle_timeout:.0f} s")
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type != WSMsgType.BINARY:
                await self._fail(ws, "expected binary messages (the Moshi wire protocol)")
                return
            try:
                message = protocol.decode(msg.data)
                if message.kind == protocol.Kind.AUDIO:
                    pcm = decoder.decode(message.payload)
                    if len(pcm):
                        session.push(torch.from_numpy(pcm))
                        self._input.set()
            except protocol.ProtocolError as e:
                await self._fail(ws, f"malformed message: {e}")
                return
            # Other kinds (control, ping, metadata, unknown) carry nothing a full-duplex session needs.

    async def _fail(self, ws: web.WebSocketResponse, message: str) -> None:
        self.errors += 1
        if not ws.closed:
            await ws.send_bytes(protocol.error(message))
            await ws.close()

    async def _send(self, ws: web.WebSocketResponse, session: Session, ready: asyncio.Event) -> None:
        encoder = protocol.OpusEncoder()
        while not ws.closed:
            await ready.wait()
            ready.clear()
            for out in session.pop_outputs():
                ogg = encoder.encode(out.pcm.numpy())
                if ogg:
                    await ws.send_bytes(protocol.audio(ogg))
                if out.text is not None and self.tokenizer.is_text(out.text):
                    await ws.send_bytes(protocol.text(self.tokenizer.piece(out.text)))

    @property
    def healthy(self) -> bool:
        """False once the stepping task has died (a failed model step): sessions would get no more audio."""
        return self._task is not None and not self._task.done()

    async def voices(self, request: web.Request) -> web.Response:
        """The voice folder's voices and the defaults, for the web page's menu."""
        lib = self.personas
        if lib is None:
            return web.json_response({"voices": [], "default_voice": None, "default_text": None, "persona_trained": False})
        return web.json_response({
            "voices": lib.voices(), "default_voice": lib.default_voice, "default_text": lib.default_text,
            "persona_trained": persona_trained(lib.config),
        })

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok" if self.healthy else "error", "sessions": self.engine.active,
             "max_sessions": self.engine.max_sessions},
            status=200 if self.healthy else 503,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=metrics_text(self), content_type="text/plain")
