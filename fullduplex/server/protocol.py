"""The Moshi WebSocket wire protocol, as one module without I/O (see ``docs/protocol.md``).

Every WebSocket message is binary: byte 0 is the :class:`Kind`, the rest its payload. Audio travels both ways as
Ogg pages of Opus at 24 kHz mono; the server sends its inner-monologue text one SentencePiece piece at a time::

    frame = protocol.audio(encoder.encode(pcm))      # bytes to send; pcm float32 [S] at 24 kHz, any S
    message = protocol.decode(received)              # Message(kind, payload); ProtocolError if malformed
    if message.kind == protocol.Kind.AUDIO:
        pcm = decoder.decode(message.payload)        # float32 [S], maybe empty
    elif message.kind == protocol.Kind.TEXT:
        print(message.text(), end="")
    elif not message.known:
        pass                                         # unknown kinds are discarded, as every Moshi peer does

:class:`OpusEncoder` and :class:`OpusDecoder` wrap ``sphn`` 0.2.x streams (``OpusStreamWriter`` /
``OpusStreamReader``); the decoder checks that a payload is whole, valid Ogg pages before ``sphn`` sees it.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from ..errors import FullduplexError

__all__ = [
    "SAMPLE_RATE", "Control", "Kind", "Message", "OpusDecoder", "OpusEncoder", "ProtocolError", "audio",
    "audio_samples", "colored_text", "control", "decode", "encode", "error", "handshake", "metadata", "ping", "split_ogg_pages", "text",
]

SAMPLE_RATE = 24000  # Hz of the audio both ways
OPUS_FRAME = 960  # samples per Opus packet the writer takes (40 ms at 24 kHz)
WORD_START = "\u2581"  # SentencePiece's "▁": sent as a space


class ProtocolError(FullduplexError, ValueError):
    """A message or an Ogg/Opus payload that does not follow the protocol (empty frame, bad UTF-8, ...)."""


class Kind(IntEnum):
    """Byte 0 of every message."""

    HANDSHAKE = 0
    AUDIO = 1
    TEXT = 2
    CONTROL = 3
    METADATA = 4
    ERROR = 5
    PING = 6
    COLORED_TEXT = 7  # web client only: colour byte + UTF-8


class Control(IntEnum):
    """Payload byte of a CONTROL message (both reference servers ignore them in full-duplex streaming)."""

    START = 0
    END_TURN = 1
    PAUSE = 2
    RESTART = 3


_KINDS = frozenset(int(k) for k in Kind)


@dataclass(frozen=True)
class Message:
    """One decoded message: ``kind`` (a :class:`Kind`, or the raw byte when unknown) and its ``payload``.

    The accessors parse the payload and raise :class:`ProtocolError` when it does not fit the kind.
    """

    kind: int
    payload: bytes = b""

    @property
    def known(self) -> bool:
        """False for kinds this protocol does not define: callers discard those."""
        return int(self.kind) in _KINDS

    def text(self) -> str:
        """The UTF-8 text of a TEXT, ERROR or COLORED_TEXT message."""
        if self.kind in (Kind.TEXT, Kind.ERROR):
            return _utf8(self.payload, self.kind)
        if self.kind == Kind.COLORED_TEXT:
            return _utf8(self.payload[1:], self.kind)
        raise ProtocolError(f"a {_name(self.kind)} message carries no text")

    def color(self) -> int:
        """The colour byte of a COLORED_TEXT message."""
        if self.kind != Kind.COLORED_TEXT or not self.payload:
            raise ProtocolError(f"a {_name(self.kind)} message carries no colour byte")
        return self.payload[0]

    def json(self) -> dict[str, Any]:
        """The JSON object of a METADATA message."""
        if self.kind != Kind.METADATA:
            raise ProtocolError(f"a {_name(self.kind)} message carries no JSON")
        try:
            value = json.loads(_utf8(self.payload, self.kind))
        except json.JSONDecodeError as e:
            raise ProtocolError(f"metadata message holds malformed JSON: {e}") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"metadata message must hold a JSON object, got {type(value).__name__}")
        return value

    def control(self) -> Control:
        """The action of a CONTROL message (exactly one byte, 0..3)."""
        if self.kind != Kind.CONTROL:
            raise ProtocolError(f"a {_name(self.kind)} message carries no control action")
        if len(self.payload) != 1 or self.payload[0] not in {int(c) for c in Control}:
            raise ProtocolError(f"control message must carry one byte 0..3, got {self.payload[:8].hex() or 'nothing'}")
        return Control(self.payload[0])

    def handshake(self) -> tuple[int, int]:
        """(protocol version, model version) of a HANDSHAKE: (0, 0) for the compact ``b"\\x00"`` of Python servers,
        else the two little-endian u32 the Rust server sends."""
        if self.kind != Kind.HANDSHAKE:
            raise ProtocolError(f"a {_name(self.kind)} message is not a handshake")
        if not self.payload:
            return 0, 0
        if len(self.payload) < 8:
            raise ProtocolError(f"handshake payload must be empty or two u32 (8 bytes), got {len(self.payload)} bytes")
        version, model_version = struct.unpack_from("<II", self.payload)
        return version, model_version


def _name(kind: int) -> str:
    return Kind(kind).name.lower() if int(kind) in _KINDS else f"kind-{int(kind)}"


def _utf8(payload: bytes, kind: int) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{_name(kind)} message is not valid UTF-8 ({e.reason} at byte {e.start})") from None


# --- messages ⇄ bytes -----------------------------------------------------------------------------------------
def encode(message_or_kind: Message | int, payload: bytes = b"") -> bytes:
    """The bytes of a message: its kind byte, then its payload."""
    if isinstance(message_or_kind, Message):
        if payload:
            raise ValueError("encode(message) takes no separate payload")
        kind, payload = int(message_or_kind.kind), message_or_kind.payload
    else:
        kind = int(message_or_kind)
    if not 0 <= kind <= 255:
        raise ValueError(f"a message kind is one byte (0..255), got {kind}")
    return bytes([kind]) + bytes(payload)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse one received message. Raises :class:`ProtocolError` for an empty frame, text or error that is not
    UTF-8, metadata that is not a JSON object, and a control payload other than one byte 0..3. Unknown kinds decode
    to a message whose ``known`` is False; handshake, audio and ping payloads are not checked here."""
    data = bytes(data)
    if not data:
        raise ProtocolError("empty message: every message starts with a kind byte")
    kind = data[0]
    message = Message(Kind(kind) if kind in _KINDS else kind, data[1:])
    if kind in (Kind.TEXT, Kind.ERROR, Kind.COLORED_TEXT):
        message.text()
        if kind == Kind.COLORED_TEXT:
            message.color()
    elif kind == Kind.METADATA:
        message.json()
    elif kind == Kind.CONTROL:
        message.control()
    return message


def handshake(version: int = 0, model_version: int = 0, compact: bool = True) -> bytes:
    """The server's first message: ``b"\\x00"`` when ``compact`` (as moshi's Python server sends), else the kind
    byte and two little-endian u32 (as the Rust server sends)."""
    if compact:
        if version or model_version:
            raise ValueError("a compact handshake carries no versions; pass compact=False")
        return encode(Kind.HANDSHAKE)
    for value in (version, model_version):
        if not 0 <= value < 2**32:
            raise ValueError(f"handshake versions are u32, got {value}")
    return encode(Kind.HANDSHAKE, struct.pack("<II", version, model_version))


def audio(ogg: bytes) -> bytes:
    """An AUDIO message: Ogg pages of Opus (what :meth:`OpusEncoder.encode` returns)."""
    return encode(Kind.AUDIO, ogg)


def text(piece: str) -> bytes:
    """A TEXT message: one SentencePiece piece, its ``▁`` sent as spaces."""
    return encode(Kind.TEXT, piece.replace(WORD_START, " ").encode("utf-8"))


def colored_text(piece: str, color: int) -> bytes:
    """A COLORED_TEXT message (web client only): a colour byte, then the piece as :func:`text` sends it."""
    if not 0 <= color <= 255:
        raise ValueError(f"the colour is one byte (0..255), got {color}")
    return encode(Kind.COLORED_TEXT, bytes([color]) + piece.replace(WORD_START, " ").encode("utf-8"))


def error(message: str) -> bytes:
    """An ERROR message: UTF-8 text meant for the user (the sender closes the socket after it)."""
    return encode(Kind.ERROR, message.encode("utf-8"))


def metadata(values: dict[str, Any]) -> bytes:
    """A METADATA message: a JSON object (UTF-8)."""
    if not isinstance(values, dict):
        raise ValueError(f"metadata must be a dict (a JSON object), got {type(values).__name__}")
    return encode(Kind.METADATA, json.dumps(values, ensure_ascii=False).encode("utf-8"))


def control(action: Control | int) -> bytes:
    """A CONTROL message: one byte (:class:`Control`)."""
    return encode(Kind.CONTROL, bytes([Control(action)]))


def ping() -> bytes:
    """A PING message (empty; no Moshi peer sends or answers it)."""
    return encode(Kind.PING)


# --- Ogg / Opus -----------------------------------------------------------------------------------------------
# Ogg's CRC-32 is the non-reflected CRC of polynomial 0x04C11DB7, initial value 0, no final xor. zlib computes the
# reflected CRC of the same polynomial (in C, ~20x faster than a Python loop), and the two are mirror images:
# reversing the bits of every input byte and of the result turns one into the other. zlib's start value
# 0xFFFFFFFF and the final xor undo its own initial and final inversion.
_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reverse32(value: int) -> int:
    return int(f"{value:032b}"[::-1], 2)


def _ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 of ``page`` (its CRC field zeroed by the caller)."""
    return _reverse32(zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF)


def split_ogg_pages(data: bytes) -> list[bytes]:
    """The Ogg pages of ``data``, checked: each starts with ``OggS``, is version 0, fits whole in ``data`` and has
    a correct CRC. Raises :class:`ProtocolError` otherwise (garbage, a truncated page, corrupted bytes)."""
    pages, offset = [], 0
    while offset < len(data):
        head = data[offset : offset + 27]
        if head[:4] != b"OggS":
            raise ProtocolError(f"audio payload is not Ogg pages: no 'OggS' capture pattern at byte {offset}")
        if len(head) < 27 or len(data) < offset + 27 + head[26]:
            raise ProtocolError(f"audio payload ends inside an Ogg page header at byte {offset}")
        if head[4] != 0:
            raise ProtocolError(f"unsupported Ogg version {head[4]} at byte {offset}")
        segments = data[offset + 27 : offset + 27 + head[26]]
        end = offset + 27 + len(segments) + sum(segments)
        if end > len(data):
            raise ProtocolError(f"audio payload ends inside an Ogg page: {end - len(data)} bytes missing")
        page = data[offset:end]
        (crc,) = struct.unpack_from("<I", page, 22)
        if _ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            raise ProtocolError(f"Ogg page at byte {offset} is corrupted (CRC mismatch)")
        pages.append(page)
        offset = end
    return pages


_FRAME_MS = (10, 20, 40, 60) * 3 + (10, 20) * 2 + (2.5, 5, 10, 20) * 4  # per TOC config (RFC 6716, 3.1)


def _packet_samples(packet: bytes, sample_rate: int) -> int:
    """Samples an Opus audio packet decodes to, from its TOC byte; a packet too short to say counts as the most a
    packet may hold (120 ms)."""
    most = sample_rate * 120 // 1000
    if not packet:
        return most
    toc = packet[0]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(packet) < 2:
            return most
        frames = packet[1] & 0x3F
    return min(most, int(frames * _FRAME_MS[toc >> 3] * sample_rate) // 1000)


def _packets(pages: list[bytes]) -> list[bytes]:
    """The packets that start in ``pages`` (a packet going on into the next page: its first part)."""
    packets = []
    for page in pages:
        lacing = page[27 : 27 + page[26]]
        offset, start, size = 27 + len(lacing), 0, 0
        first_continues = bool(page[5] & 1)  # the page's first packet began on an earlier page: its TOC is there
        for value in lacing:
            size += value
            if value < 255:
                if not first_continues:
                    packets.append(page[offset + start : offset + start + size])
                first_continues, start, size = False, start + size, 0
        if size and not first_continues:
            packets.append(page[offset + start : offset + start + size])
    return packets


def audio_samples(pages: list[bytes], sample_rate: int = SAMPLE_RATE, headers: int = 0) -> int:
    """Samples the Opus packets in ``pages`` (from :func:`split_ogg_pages`) will decode to, read from the packets'
    TOC bytes without decoding them; the first ``headers`` packets are the stream's header packets (``OpusHead``,
    ``OpusTags``: 2 at the start of a stream) and count nothing. A few hundred bytes of Ogg can declare seconds of
    audio (packets of one byte, each 40-120 ms of silence), so a receiver checks this before it decodes."""
    return sum(_packet_samples(p, sample_rate) for p in _packets(pages)[headers:])


def _sphn_failure(what: str, e: BaseException) -> ProtocolError:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ProtocolError(f"could not {what}: {detail}")


class OpusEncoder:
    """PCM → Ogg pages of Opus, one stream (its header pages come with the first audio).

    ``encode`` takes float32 [S] at 24 kHz of any length: ``sphn``'s writer takes whole Opus frames of 960 samples,
    so a remainder waits for the next call (:attr:`pending`), or :meth:`flush` pads it with silence.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        import sphn

        self._writer = sphn.OpusStreamWriter(sample_rate)
        self._rest = np.zeros(0, dtype=np.float32)

    @property
    def pending(self) -> int:
        """Samples received but not yet encoded (fewer than 960)."""
        return len(self._rest)

    def encode(self, pcm: Any) -> bytes:
        """Ogg pages for ``pcm`` float32 [S] (an array or CPU tensor); ``b""`` while under 960 samples wait."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim != 1:
            raise ValueError(f"OpusEncoder.encode expects mono PCM shaped [S], got shape {list(pcm.shape)}")
        buffer = np.concatenate([self._rest, pcm]) if len(self._rest) else pcm
        whole = len(buffer) // OPUS_FRAME * OPUS_FRAME
        self._rest = buffer[whole:].copy()
        try:
            return b"".join(self._writer.append_pcm(buffer[i : i + OPUS_FRAME]) for i in range(0, whole, OPUS_FRAME))
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as e:  # sphn raises ValueError, or pyo3's PanicException (a BaseException)
            raise _sphn_failure("encode audio as Opus", e) from None

    def flush(self) -> bytes:
        """Encode the waiting remainder padded with silence to 960 samples (``b""`` if nothing waits)."""
        if not len(self._rest):
            return b""
        return self.encode(np.zeros(OPUS_FRAME - len(self._rest), dtype=np.float32))


class OpusDecoder:
    """Ogg pages of Opus → PCM float32 [S] at 24 kHz, one stream.

    Each payload must be whole Ogg pages (as every Moshi client and server sends them); anything else raises
    :class:`ProtocolError`, as do Opus packets ``sphn`` cannot decode. Opus delays the audio by its look-ahead
    (about 156 samples, 6.5 ms, per encode-decode round).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        import sphn

        self.sample_rate = sample_rate
        self._packets = 0  # packets received so far: the first two are the stream's headers
        self._reader = sphn.OpusStreamReader(sample_rate)

    def decode(self, ogg: bytes, max_samples: int | None = None) -> np.ndarray:
        """PCM float32 [S] decoded from ``ogg`` (empty while the stream holds only headers). ``max_samples``: raise
        :class:`ProtocolError` before decoding anything when the packets declare more audio than that."""
        if ogg:
            pages = split_ogg_pages(ogg)
            headers = max(0, 2 - self._packets)
            self._packets += len(_packets(pages))
            if max_samples is not None:
                declared = audio_samples(pages, self.sample_rate, headers)
                if declared > max_samples:
                    raise ProtocolError(
                        f"an audio message holds {declared / self.sample_rate:.2f} s of audio; this server takes at "
                        f"most {max_samples / self.sample_rate:.2f} s per message (send one frame at a time)")
        try:
            pcm = self._reader.append_bytes(bytes(ogg)) if ogg else None
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as e:  # as in OpusEncoder.encode
            raise _sphn_failure("decode the Opus audio", e) from None
        if pcm is None:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(pcm, dtype=np.float32).reshape(-1)
