"""``fullduplex serve``: the real-time server (Moshi wire protocol on ``/api/chat``), every conversation batched."""

from __future__ import annotations

import argparse
import logging
import re
import socket
import ssl
from pathlib import Path
from typing import Any

from ..errors import FullduplexError
from .codec import positive_int, resolve_device
from .models import add_model_arguments, load_models

EPILOG = """\
examples:
  fullduplex serve                                  # the small demo model bundled with fullduplex (CPU is enough)
  fullduplex serve --hf-repo kyutai/moshiko-pytorch-bf16
  fullduplex serve --hf-repo JoshTalksAI/Human-1 --max-sessions 16
  fullduplex serve --hf-repo kyutai/moshiko-pytorch-bf16 --devices cuda:0,cuda:1 --max-sessions 32
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

Several GPUs: --devices cuda:0,cuda:1 loads the model once per device and steps each copy on its own thread;
a new conversation goes to the device with the most free slots. Several machines: run a server on each behind
a load balancer; GET /api/health answers 503 {"status": "full"} while every slot is taken, so the balancer
sends new conversations elsewhere (a tested HAProxy config: examples/deploy/haproxy.cfg, docs/deploy.md).
"""


MAX_PROMPT_TOKENS = 256  # about 20 s of prompt frames at real time


def register(subparsers: Any) -> None:
    """Add ``serve``."""
    from ..server.app import ServerConfig

    defaults = ServerConfig()
    parser = subparsers.add_parser(
        "serve", help="the real-time server: many conversations at once over the Moshi WebSocket protocol",
        description="Serve the model to many clients at once: one batched model step per 80 ms frame.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    net.add_argument("--port", type=int, default=8998, help="port (default: 8998)")
    net.add_argument("--ssl", metavar="DIR", help="serve wss:// with DIR/key.pem and DIR/cert.pem")
    net.add_argument("--auth-token", metavar="TOKEN",
                     help="refuse clients of /api/chat, /api/voices and /api/metrics that do not present this token "
                          "(/api/health stays open)")
    net.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="a web page origin (https://host[:port]) allowed to open /api/chat besides pages of this server's "
                          "own host; repeatable; '*' for any (clients that send no Origin, as non-browsers, always "
                          "pass)")
    net.add_argument("--io-workers", type=int, default=0, metavar="N",
                     help="run the sockets and the Ogg/Opus work in N worker processes sharing the port, so the model "
                     "never waits for them (see docs/architecture.md: worth it from a few dozen sessions on a "
                     "many-core machine); 0: in the model's process (default: %(default)s)")
    net.add_argument("--static", metavar="DIR", default="",
                     help="the web page at /: a folder with an index.html to serve instead of fullduplex's own, or "
                     "'none' for no page (the API only), as moshi.server's --static (default: fullduplex's page)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-sessions", type=positive_int, default=8, metavar="N",
                        help="conversations served at once, one batch slot each (default: 8); per device with --devices")
    limits.add_argument("--devices", metavar="LIST",
                        help="one model copy and engine per device, comma-separated, e.g. cuda:0,cuda:1 (cpu,cpu to "
                             "try it); each new conversation goes to the least-loaded one (default: --device alone)")
    limits.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                        help="end a session after S seconds without a message from its client (default: 30)")
    limits.add_argument("--max-session-seconds", type=float, default=600.0, metavar="S",
                        help="end a conversation after S seconds (default: 600)")
    limits.add_argument("--max-message-bytes", type=positive_int, default=defaults.max_message_bytes, metavar="B",
                        help=f"largest client message; a bigger one ends its session (close 1009) "
                             f"(default: {defaults.max_message_bytes})")
    limits.add_argument("--max-message-seconds", type=float, default=defaults.max_message_seconds, metavar="S",
                        help=f"audio one message may hold, checked before decoding; more ends the session with an "
                             f"error (default: {defaults.max_message_seconds})")
    limits.add_argument("--max-pending-seconds", type=float, default=defaults.max_pending_seconds, metavar="S",
                        help=f"received audio a session may have waiting for the model; beyond it its socket is not "
                             f"read until the model catches up (default: {defaults.max_pending_seconds})")
    limits.add_argument("--max-messages-per-second", type=float, default=defaults.max_messages_per_second,
                        metavar="N", help=f"per session; a faster client is slowed down, not dropped "
                                          f"(default: {defaults.max_messages_per_second:.0f})")
    limits.add_argument("--max-bytes-per-second", type=float, default=defaults.max_bytes_per_second, metavar="B",
                        help=f"per session; a faster client is slowed down, not dropped "
                             f"(default: {defaults.max_bytes_per_second:.0f})")
    personas = parser.add_argument_group("personas (PersonaPlex)")
    personas.add_argument("--voice-dir", metavar="DIR", help="folder of voice prompts clients may pick (voice_prompt=NAME)")
    personas.add_argument("--voice", metavar="NAME", help="default voice: a file name in --voice-dir")
    personas.add_argument("--text-prompt", metavar="TEXT", help="default role prompt (default: none)")
    personas.add_argument("--max-prompt-tokens", type=positive_int, default=MAX_PROMPT_TOKENS, metavar="N",
                          help="longest text_prompt a client may send, in tokens: each holds a slot for one 80 ms "
                               f"prompt frame before the conversation starts (default: {MAX_PROMPT_TOKENS})")
    personas.add_argument("--persona-cache-mb", type=float, default=1024.0, metavar="MB",
                          help="memory for cached persona states, least recently used dropped first (default: 1024; "
                               "per device with --devices)")
    add_model_arguments(parser, cfg_help="classifier-free guidance for Hibiki (towards its \"very_good\" description; 1 "
                        "is none, above 1 costs twice the compute); the dialogue models take only 1.0")
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


def parse_devices(devices: str | None, device: str | None) -> list[str | None]:
    """The devices to serve on, one engine each: ``--devices`` split at commas and checked, else ``--device``."""
    if devices is None:
        return [device]
    if device is not None:
        raise FullduplexError("give --device or --devices, not both")
    names = [name.strip() for name in devices.split(",")]
    if not all(names):
        raise FullduplexError(f"--devices {devices!r}: expected comma-separated devices, e.g. cuda:0,cuda:1 or cpu,cpu")
    for name in names:
        try:
            resolve_device(name)
        except FullduplexError as e:
            raise FullduplexError(f"--devices {devices}: {str(e).removeprefix('--device ')}") from None
    return names


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
    from ..server.app import RedactingAccessLogger, Server, ServerConfig, new_model_thread
    from ..server.personas import PersonaLibrary
    from ..server.pool import EnginePool, Lane

    if not 0 < args.port < 65536:
        raise FullduplexError(f"--port must be 1..65535, got {args.port}")
    if args.idle_timeout <= 0 or args.max_session_seconds <= 0:
        raise FullduplexError("--idle-timeout and --max-session-seconds must be positive")
    if args.voice is not None and args.voice_dir is None:
        raise FullduplexError("--voice needs --voice-dir (the folder it is in)")
    if args.persona_cache_mb < 0:
        raise FullduplexError("--persona-cache-mb must be >= 0")
    devices = parse_devices(args.devices, args.device)
    if args.io_workers < 0:
        raise FullduplexError(f"--io-workers must be >= 0, got {args.io_workers}")
    if args.static and args.static != "none" and not (Path(args.static) / "index.html").is_file():
        raise FullduplexError(f"--static {args.static}: no index.html there; give a folder holding one, or 'none'")
    try:
        config = ServerConfig(
            host=args.host, port=args.port, auth_token=args.auth_token, allow_origins=tuple(args.allow_origin),
            idle_timeout=args.idle_timeout, max_session_seconds=args.max_session_seconds,
            max_message_bytes=args.max_message_bytes, max_message_seconds=args.max_message_seconds,
            max_pending_seconds=args.max_pending_seconds, max_messages_per_second=args.max_messages_per_second,
            max_bytes_per_second=args.max_bytes_per_second, static=args.static,
        )
    except ValueError as e:  # names the field; the option is its name with dashes
        option = re.sub(r"ServerConfig\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))
        raise FullduplexError(option) from None
    context = ssl_context(args.ssl)
    check_port_free(args.host, args.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A load balancer asks for /api/health every second or so: keep those requests out of the access log.
    logging.getLogger("aiohttp.access").addFilter(lambda record: "GET /api/health " not in record.getMessage())
    lanes, loaded = [], []
    for device in devices:  # a model copy per device, loaded and stepped on its own thread (see Server)
        thread = new_model_thread()
        loaded.append(thread.submit(load_models, argparse.Namespace(**{**vars(args), "device": device})).result())
        cache = PersonaCache(max_bytes=int(args.persona_cache_mb * 2**20))  # a state lives on its engine's device
        engine = Engine(loaded[-1].mimi, loaded[-1].lm, loaded[-1].sampling, max_sessions=args.max_sessions,
                        personas=cache, cfg_coef=args.cfg_coef)
        lanes.append(Lane(engine, thread))
    models = loaded[0]  # prepares personas (on the first device) and gives the tokenizer
    personas = lanes[0].thread.submit(lambda: PersonaLibrary(
        models.mimi, models.lm.config, models.tokenizer, filler_codes(models.mimi), args.voice_dir, args.voice,
        args.text_prompt, max_prompt_tokens=args.max_prompt_tokens,
    )).result()
    server = Server(EnginePool(lanes), models.tokenizer, config, personas=personas)
    scheme = "wss" if context else "ws"
    where = f" ({args.max_sessions} on each of {', '.join(lane.device for lane in lanes)})" if len(lanes) > 1 else ""
    print(f"serving {models.lm_path.name} to up to {args.max_sessions * len(lanes)} conversations{where} at "
          f"{scheme}://{args.host}:{args.port}/api/chat (health: /api/health, metrics: /api/metrics)", flush=True)
    announce = lambda *_: print(page_url(args.host, args.port, context is not None), flush=True)
    if args.io_workers:
        from ..server.workers import serve_with_workers

        serve_with_workers(server, args.io_workers, args.ssl, on_ready=announce)
    else:
        web.run_app(server.app(), host=args.host, port=args.port, ssl_context=context, print=announce,
                    access_log_class=RedactingAccessLogger)
    return 0
