"""``fullduplex serve``: the real-time server (Moshi wire protocol on ``/api/chat``), every conversation batched."""

from __future__ import annotations

import argparse
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from ..errors import FullduplexError
from .codec import positive_int
from .models import add_model_arguments, load_models

EPILOG = """\
examples:
  fullduplex serve                                  # the small demo model bundled with fullduplex (CPU is enough)
  fullduplex serve --hf-repo kyutai/moshiko-pytorch-bf16
  fullduplex serve --hf-repo JoshTalksAI/Human-1 --max-sessions 16
  fullduplex serve --hf-repo nu-dialogue/j-moshi-ext --host 0.0.0.0 --auth-token "$TOKEN" --ssl ./certs
  fullduplex serve --hf-repo nvidia/personaplex-7b-v1 --voice-dir voices --voice NATF2.pt \
      --text-prompt "You work for a bike shop; be brief."

With no checkpoint option the bundled demo model is served (docs/demo.md): trained on synthetic espeak-ng
dialogues, it shows the whole system working, not a conversation partner.

Clients connect to ws://HOST:PORT/api/chat (wss:// with --ssl): existing Moshi clients work unchanged, and
`fullduplex client --url ws://HOST:PORT --input talk.wav --output reply.wav` streams a file. When every session
slot is taken, a new client gets an error message and the socket closes. Reaching the server from another
machine: prefer an SSH tunnel (ssh -L 8998:localhost:8998 host); if you bind --host 0.0.0.0, set --auth-token
and --ssl.

Personas (PersonaPlex): clients pick a role and a voice with the query parameters text_prompt=... and
voice_prompt=NAME (a file in --voice-dir: .pt, .safetensors from `fullduplex voice make`, or audio), as
PersonaPlex's own client does; without them the server's --text-prompt/--voice apply. A persona's prompt runs
once, before the handshake; its state is then cached (--persona-cache-mb), so the next conversation with it
starts at once. GET /api/voices lists the voices.
"""


def register(subparsers: Any) -> None:
    """Add ``serve``."""
    parser = subparsers.add_parser(
        "serve", help="the real-time server: many conversations at once over the Moshi WebSocket protocol",
        description="Serve the model to many clients at once: one batched model step per 80 ms frame.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    net.add_argument("--port", type=int, default=8998, help="port (default: 8998)")
    net.add_argument("--ssl", metavar="DIR", help="serve wss:// with DIR/key.pem and DIR/cert.pem")
    net.add_argument("--auth-token", metavar="TOKEN", help="refuse clients that do not present this token")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-sessions", type=positive_int, default=8, metavar="N",
                        help="conversations served at once, one batch slot each (default: 8)")
    limits.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                        help="end a session after S seconds without a message from its client (default: 30)")
    limits.add_argument("--max-session-seconds", type=float, default=600.0, metavar="S",
                        help="end a conversation after S seconds (default: 600)")
    personas = parser.add_argument_group("personas (PersonaPlex)")
    personas.add_argument("--voice-dir", metavar="DIR", help="folder of voice prompts clients may pick (voice_prompt=NAME)")
    personas.add_argument("--voice", metavar="NAME", help="default voice: a file name in --voice-dir")
    personas.add_argument("--text-prompt", metavar="TEXT", help="default role prompt (default: none)")
    personas.add_argument("--persona-cache-mb", type=float, default=1024.0, metavar="MB",
                          help="memory for cached persona states, least recently used dropped first (default: 1024)")
    add_model_arguments(parser)
    parser.set_defaults(func=serve_command)


def ssl_context(folder: str | None) -> ssl.SSLContext | None:
    if folder is None:
        return None
    key, cert = Path(folder) / "key.pem", Path(folder) / "cert.pem"
    for path in (key, cert):
        if not path.is_file():
            raise FullduplexError(f"--ssl {folder}: {path.name} not found (expected key.pem and cert.pem)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as e:
        raise FullduplexError(f"--ssl {folder}: could not load the certificate: {e}") from None
    return context


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once (as the server will, address reuse on) and let it go: a clear error now beats one
    after minutes of loading the model."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise FullduplexError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise FullduplexError(
                f"port {port} on {host} is not free ({e.strerror}): stop what uses it (another `fullduplex serve`?) "
                "or pick another with --port"
            ) from None


def page_url(host: str, port: int, secure: bool) -> str:
    """The line naming the page to open once the server listens."""
    scheme = "https" if secure else "http"
    if host in ("0.0.0.0", "::", ""):
        return (f"listening on all addresses, port {port}: open {scheme}://localhost:{port}/ on this machine "
                f"({scheme}://THIS-HOST:{port}/ from others)")
    shown = f"[{host}]" if ":" in host else host
    return f"listening: open {scheme}://{shown}:{port}/"


def serve_command(args: argparse.Namespace) -> int:
    """Load the models, then serve until interrupted."""
    from aiohttp import web

    from ..inference.engine import Engine
    from ..inference.persona import PersonaCache
    from ..inference.voice import filler_codes
    from ..server.app import Server, ServerConfig, new_model_thread
    from ..server.personas import PersonaLibrary

    if not 0 < args.port < 65536:
        raise FullduplexError(f"--port must be 1..65535, got {args.port}")
    if args.idle_timeout <= 0 or args.max_session_seconds <= 0:
        raise FullduplexError("--idle-timeout and --max-session-seconds must be positive")
    if args.voice is not None and args.voice_dir is None:
        raise FullduplexError("--voice needs --voice-dir (the folder it is in)")
    if args.persona_cache_mb < 0:
        raise FullduplexError("--persona-cache-mb must be >= 0")
    context = ssl_context(args.ssl)
    check_port_free(args.host, args.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_thread = new_model_thread()  # loads and steps the models: one torch thread team (see Server)
    models = model_thread.submit(load_models, args).result()
    cache = PersonaCache(max_bytes=int(args.persona_cache_mb * 2**20))
    engine = Engine(models.mimi, models.lm, models.sampling, max_sessions=args.max_sessions, personas=cache)
    personas = model_thread.submit(lambda: PersonaLibrary(
        models.mimi, models.lm.config, models.tokenizer, filler_codes(models.mimi), args.voice_dir, args.voice,
        args.text_prompt,
    )).result()
    config = ServerConfig(
        host=args.host, port=args.port, auth_token=args.auth_token, idle_timeout=args.idle_timeout,
        max_session_seconds=args.max_session_seconds,
    )
    server = Server(engine, models.tokenizer, config, model_thread, personas)
    scheme = "wss" if context else "ws"
    print(f"serving {models.lm_path.name} to up to {args.max_sessions} conversations at "
          f"{scheme}://{args.host}:{args.port}/api/chat (health: /api/health, metrics: /api/metrics)", flush=True)
    web.run_app(server.app(), host=args.host, port=args.port, ssl_context=context,
                print=lambda _: print(page_url(args.host, args.port, context is not None), flush=True))
    return 0
