"""``fullduplex client``: talk to a Moshi-protocol server with an audio file, and record what it answers.

The input is sent as the user would speak it: one 80 ms frame (1920 samples at 24 kHz, Opus in Ogg) every 80 ms,
or, with ``--fast``, each frame as soon as the server's audio for the previous one is back (waiting at most 0.5 s
for it). Messages from the server are read concurrently. The protocol is that of ``fullduplex serve`` and of
moshi's Python and Rust servers (the Rust one serves wss:// with a self-signed certificate, which must be trusted).

Alignment (``--output``, stereo 16-bit WAV at 24 kHz, exactly the input's length; right = the input): the left
channel is the server's audio placed by arrival, as a player that never drops audio would play it. At the tick of
frame t, just before input frame t+1 is sent (for the last frame: when it would be sent), every sample received
and not yet placed is appended to the left channel; if the channel then ends before the end of frame t, silence
fills it up to there (the server was late: a *late frame*, and what follows plays later). A server that answers
input frame t with its audio frame t before the client sends frame t+1 (``--fast`` waits for it) thus lands at
frame t, as in ``fullduplex generate``. Opus delays ~156 samples (6.5 ms) per encode/decode, so an echoing server
comes back 312 samples late. Audio that arrives during the drain after the last frame (until the server's audio
covers the input, at most 0.5 s) continues the left channel, which is finally cut or padded to the input's length.

Text pieces are placed the same way: a piece received after the tick of frame t-1 and by that of frame t belongs to
frame t; pieces received during the drain fall after the input's end and are left out. ``--transcript`` holds
generate's JSON shape (words with start = first piece's frame x 0.08 s and end = (last piece's frame + 1) x
0.08 s, cut to the duration) plus ``latency_ms``. See ``docs/protocol.md``.

Latency of frame t: the time from sending input frame t to receiving the message that brings the server's audio
stream to (t+1) x 1920 samples, i.e. its frame t, counting the stream from its first sample. p50/p95/p99 (nearest
rank) over the frames measured. Servers that send nothing while the model warms up (moshi's Python server, for
its first frame) count those frames too, so their latency includes that warm-up delay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from yarl import URL

from ..atomic import atomic_outputs
from ..codec.audio import read_audio_info
from ..errors import FullduplexError
from ..inference.offline import write_stereo_wav
from ..server import protocol
from .codec import progress

DEFAULT_URL = "ws://127.0.0.1:8998/api/chat"
SAMPLE_RATE = protocol.SAMPLE_RATE
FRAME = 1920  # samples per 80 ms frame
FRAME_SECONDS = FRAME / SAMPLE_RATE
DRAIN_SECONDS = 0.5  # after the last frame, wait at most this long for the rest of the server's audio
FAST_WAIT = 0.5  # --fast: wait at most this long per frame for the server's audio (it may stay silent at first)
_USED_KINDS = frozenset({protocol.Kind.HANDSHAKE, protocol.Kind.AUDIO, protocol.Kind.TEXT, protocol.Kind.ERROR})

EPILOG = """\
examples:
  fullduplex client --input talk.wav --output reply.wav --transcript reply.json
  fullduplex client --url wss://gpu-box:8998 --auth-token "$TOKEN" --input talk.wav --output reply.wav
  fullduplex client --input talk.wav --fast          # latency only, as fast as the server answers

--url accepts ws://, wss://, http:// (-> ws://), https:// (-> wss://) or a bare HOST:PORT; /api/chat is appended
unless the path already ends with it. Output: left channel the server's audio placed by arrival, right channel
the input, exactly the input's length. Latency p50/p95/p99 (input frame sent -> the server's audio for that frame
received) is printed on stderr and stored in the transcript under "latency_ms".
"""


def register(subparsers: Any) -> None:
    """Add ``client``."""
    parser = subparsers.add_parser(
        "client", help="stream an audio file to a server (Moshi WebSocket protocol) and record its answer",
        description="Talk to a running server with an audio file: send it in real time (or --fast), record the "
        "server's audio and words, and measure the round-trip latency.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server's chat socket (default: {DEFAULT_URL})")
    parser.add_argument("--input", "-i", required=True, metavar="USER.wav", help="the user's side: an audio file")
    parser.add_argument("--output", "-o", metavar="OUT.wav", help="stereo WAV: left the server, right the input")
    parser.add_argument("--transcript", metavar="OUT.json", help="the server's words with times, and latency")
    parser.add_argument("--fast", action="store_true", help="send each frame as soon as the server answered the last")
    parser.add_argument("--auth-token", metavar="TOKEN", help="sent as ?auth_token= and 'Authorization: Bearer'")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, metavar="S",
                        help="give up after S seconds without a message from the server (default: 10)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=client_command)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def chat_url(url: str) -> URL:
    """``--url`` as a ``ws://`` / ``wss://`` URL whose path ends with ``/api/chat`` (query kept)."""
    text = url.strip()
    bare = "://" not in text
    parsed = URL(f"ws://{text}" if bare else text)
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parsed.scheme)
    if scheme is None or not parsed.host:
        raise FullduplexError(f"--url {url!r}: expected ws://HOST:PORT, wss://, http://, https:// or HOST:PORT")
    if bare and parsed.explicit_port is None:
        parsed = parsed.with_port(8998)
    path = parsed.path.rstrip("/")
    if not path.endswith("/api/chat"):
        path += "/api/chat"
    return parsed.with_scheme(scheme).with_path(path).with_query(parsed.query)


@dataclass
class Conversation:
    """What one session produced: ``left`` float32 [S] (the server's audio, placed), text ``pieces`` as
    (frame, text), per-frame ``latency`` in seconds (frames measured), and the count of ``late_frames``."""

    left: np.ndarray
    pieces: list[tuple[int, str]]
    latency: list[float]
    late_frames: int


@dataclass
class _Link:
    """The receiving half of the socket: a task reads every message and keeps what arrived, and when."""

    ws: Any
    timeout: float
    ready: bool = False  # handshake received
    closed: bool = False  # the reader stopped: socket closed, or failure set
    failure: FullduplexError | None = None
    unplaced: list[np.ndarray] = field(default_factory=list)  # server audio not yet on the left channel
    unplaced_samples: int = 0
    received: int = 0  # samples of server audio so far
    completed: list[float] = field(default_factory=list)  # per server audio frame: when it was complete
    pieces: list[str] = field(default_factory=list)  # text since the last tick
    last_message: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        from aiohttp import WSMsgType

        loop = asyncio.get_running_loop()
        decoder = protocol.OpusDecoder()
        try:
            async for msg in self.ws:  # ends when the socket closes; text frames are not part of the protocol
                self.last_message = now = loop.time()
                if msg.type == WSMsgType.BINARY and not self._handle(msg.data, decoder, now):
                    break
                self.changed.set()
        finally:
            self.closed = True
            self.changed.set()

    def _handle(self, data: bytes, decoder: protocol.OpusDecoder, now: float) -> bool:
        """Take one message; False once the conversation cannot go on (failure set)."""
        if not data or data[0] not in _USED_KINDS:
            return True  # control, metadata, ping and unknown kinds carry nothing for us: not even parsed
        try:
            message = protocol.decode(data)
            if message.kind == protocol.Kind.AUDIO:
                pcm = decoder.decode(message.payload)
                self.unplaced.append(pcm)
                self.unplaced_samples += len(pcm)
                self.received += len(pcm)
                self.completed.extend([now] * (self.received // FRAME - len(self.completed)))
            elif message.kind == protocol.Kind.TEXT:
                self.pieces.append(message.text())
            elif message.kind == protocol.Kind.HANDSHAKE:
                self.ready = True
            elif message.kind == protocol.Kind.ERROR:
                self.failure = FullduplexError(f"the server says: {message.text()}")
                return False
        except protocol.ProtocolError as e:
            self.failure = FullduplexError(f"the server sent a malformed message: {e}")
            return False
        return True

    async def wait(self, done: Callable[[], bool], until: float | None = None) -> None:
        """Until ``done()``, the reader stops, or loop time ``until``; raises after ``timeout`` s of silence."""
        loop = asyncio.get_running_loop()
        while not (done() or self.closed):
            now = loop.time()
            if until is not None and now >= until:
                return
            silent = self.last_message + self.timeout
            if now >= silent:
                raise FullduplexError(f"the server sent nothing for {self.timeout:g} s; raise --timeout if it is slow")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(silent, until if until is not None else silent) - now)

    def take_audio(self) -> list[np.ndarray]:
        audio, self.unplaced, self.unplaced_samples = self.unplaced, [], 0
        return audio


async def converse(
    url: URL | str, pcm: np.ndarray, *, fast: bool = False, auth_token: str | None = None, timeout: float = 10.0,
    on_frame: Callable[[], None] | None = None,
) -> Conversation:
    """One session with the server at ``url``: send ``pcm`` float32 [S] (24 kHz) frame by frame, record the answer
    (see the module docstring for the alignment). Raises :class:`FullduplexError` with a message for the user."""
    import aiohttp

    url = chat_url(url) if isinstance(url, str) else url
    shown = url.with_query(None)
    headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
    if auth_token:
        url = url.update_query(auth_token=auth_token)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        try:
            ws = await asyncio.wait_for(http.ws_connect(url, headers=headers, autoping=True), timeout)
        except asyncio.TimeoutError:
            raise FullduplexError(f"could not connect to {shown}: no answer within {timeout:g} s") from None
        except aiohttp.WSServerHandshakeError as e:
            if e.status in (401, 403):
                raise FullduplexError(f"{shown} refused the connection (HTTP {e.status}): give the server's token "
                                      "with --auth-token") from None
            raise FullduplexError(f"{shown} did not open a WebSocket (HTTP {e.status}); is it the chat socket of a "
                                  "Moshi server (path /api/chat)?") from None
        except aiohttp.ClientConnectorError as e:
            error = e.os_error
            reason = os.strerror(error.errno) if error.errno else str(error) or type(error).__name__
            raise FullduplexError(f"could not connect to {shown}: {reason}; is the server running there "
                                  "(fullduplex serve)?") from None
        except aiohttp.ClientError as e:
            raise FullduplexError(f"could not connect to {shown}: {' '.join(str(e).split()) or type(e).__name__}") from None
        link = _Link(ws, timeout, last_message=loop.time())
        reader = asyncio.create_task(link.read())
        try:
            try:
                await link.wait(lambda: link.ready)
            except FullduplexError:
                raise FullduplexError(f"{shown} sent no handshake within {timeout:g} s: it may be serving another "
                                      "conversation (moshi's own server takes one at a time); try later or raise "
                                      "--timeout") from None
            if link.failure is not None:
                raise link.failure
            if not link.ready:
                raise FullduplexError(f"{shown} closed the connection before its handshake")
            return await _stream(link, pcm, fast, on_frame, loop)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _stream(
    link: _Link, pcm: np.ndarray, fast: bool, on_frame: Callable[[], None] | None, loop: asyncio.AbstractEventLoop
) -> Conversation:
    """Send every frame, placing the server's audio and text at each tick; then drain."""
    frames = -(-len(pcm) // FRAME)
    padded = np.zeros(frames * FRAME, dtype=np.float32)
    padded[: len(pcm)] = pcm
    encoder = protocol.OpusEncoder()
    left: list[np.ndarray] = []
    placed = late = 0
    pieces: list[tuple[int, str]] = []
    sent: list[float] = []
    for t in range(frames):
        if link.failure is not None:
            raise link.failure
        if link.closed:
            raise FullduplexError(f"the server closed the connection after {t * FRAME_SECONDS:.2f} s of "
                                  f"{len(pcm) / SAMPLE_RATE:.2f} s of input")
        sent.append(loop.time())
        try:
            await link.ws.send_bytes(protocol.audio(encoder.encode(padded[t * FRAME : (t + 1) * FRAME])))
        except ConnectionError:
            await link.wait(lambda: False, loop.time() + 1.0)  # let the reader see the server's last words
            raise link.failure or FullduplexError("the server closed the connection while we were sending") from None
        if on_frame is not None:
            on_frame()
        end = (t + 1) * FRAME
        if fast:  # as soon as the server's audio covers frame t, or FAST_WAIT (a server silent while warming up)
            missing = end - placed
            await link.wait(lambda missing=missing: link.unplaced_samples >= missing, sent[t] + FAST_WAIT)
        else:
            await link.wait(lambda: False, sent[0] + (t + 1) * FRAME_SECONDS)
        if link.failure is not None:
            raise link.failure
        # The tick of frame t: what has arrived continues the left channel; silence if it falls short.
        for chunk in link.take_audio():
            left.append(chunk)
            placed += len(chunk)
        if placed < end:
            left.append(np.zeros(end - placed, dtype=np.float32))
            placed, late = end, late + 1
        pieces.extend((t, piece) for piece in link.pieces)
        link.pieces.clear()
    await link.wait(lambda: link.received >= frames * FRAME, loop.time() + DRAIN_SECONDS)
    if link.failure is not None:
        raise link.failure
    left.extend(link.take_audio())
    audio = np.concatenate(left) if left else np.zeros(0, dtype=np.float32)
    audio = np.pad(audio[: len(pcm)], (0, max(0, len(pcm) - len(audio))))
    latency = [done - start for done, start in zip(link.completed, sent, strict=False)]
    return Conversation(audio, pieces, latency, late)


def words(pieces: list[tuple[int, str]], duration: float) -> list[dict[str, Any]]:
    """Words from text pieces placed at frames: a piece starting with a space begins a word; start = its first
    piece's frame x 0.08 s, end = (its last piece's frame + 1) x 0.08 s, cut to ``duration``."""
    out: list[dict[str, Any]] = []
    current: list[str] = []
    first = last = 0

    def close() -> None:
        word = "".join(current).strip()
        start = first * FRAME_SECONDS
        if word and start < duration:
            out.append({"text": word, "start": round(start, 6), "end": round(min((last + 1) * FRAME_SECONDS, duration), 6)})

    for frame, piece in pieces:
        if current and piece.startswith(" "):
            close()
            current = []
        if not current:
            first = frame
        current.append(piece)
        last = frame
    close()
    return out


def latency_summary(latency: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 in milliseconds (nearest rank; None when no frame was measured)."""
    ordered = sorted(latency)

    def rank(q: float) -> float | None:
        return round(1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3) if ordered else None

    return {"p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99)}


def _check_target(path: Path, option: str, given: list[Path]) -> Path:
    if path.is_dir():
        raise FullduplexError(f"{option} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise FullduplexError(f"{option}: folder {path.parent} does not exist")
    if any(path.resolve() == g.resolve() for g in given):
        raise FullduplexError(f"{option} {path} is also the input or another output; choose another name")
    return path


def client_command(args: argparse.Namespace) -> int:
    """Check the outputs, read the input, converse, report latency, then write the outputs."""
    given = [Path(args.input)]
    output = _check_target(Path(args.output), "--output", given) if args.output else None
    transcript = _check_target(Path(args.transcript), "--transcript", [*given, *filter(None, [output])]) if args.transcript else None
    url = chat_url(args.url)
    wav, _, _ = read_audio_info(args.input, SAMPLE_RATE)  # [1, S]
    pcm = wav[0].numpy()
    duration = len(pcm) / SAMPLE_RATE
    with progress(-(-len(pcm) // FRAME), "client", args.quiet) as bar:
        result = asyncio.run(converse(url, pcm, fast=args.fast, auth_token=args.auth_token, timeout=args.timeout,
                                      on_frame=lambda: bar.update(1)))
    stats = latency_summary(result.latency)
    if stats["p50"] is None:
        print("latency: no frame of the server's audio came back", file=sys.stderr)
    else:
        print(f"latency (input frame sent -> the server's audio for it received): p50 {stats['p50']:.1f} ms, "
              f"p95 {stats['p95']:.1f} ms, p99 {stats['p99']:.1f} ms over {len(result.latency)} frames; "
              f"{result.late_frames} late frame(s) filled with silence", file=sys.stderr)
    written: list[tuple[Path, str]] = []
    with atomic_outputs() as stage:
        if output is not None:
            write_stereo_wav(stage(output), torch.from_numpy(np.stack([result.left, pcm])), SAMPLE_RATE)
            written.append((output, f"stereo audio, {duration:.2f} s (left: server, right: input)"))
        if transcript is not None:
            found = words(result.pieces, duration)
            content = {
                "input": args.input, "duration": duration, "frame_rate": SAMPLE_RATE / FRAME,
                "text": " ".join(w["text"] for w in found), "words": found,
                "latency_ms": {**stats, "frames": len(result.latency), "late_frames": result.late_frames,
                               "mode": "fast" if args.fast else "real-time"},
            }
            stage(transcript).write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            written.append((transcript, f"transcript, {len(found)} words"))
    for target, what in written:
        print(f"wrote {what} to {target}")
    return 0
