"""The wire protocol: every kind round-trips, malformed frames raise ProtocolError, Opus keeps a tone a tone."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fullduplex.errors import FullduplexError
from fullduplex.server import protocol
from fullduplex.server.protocol import Control, Kind, Message, OpusDecoder, OpusEncoder, ProtocolError

RATE = protocol.SAMPLE_RATE


def tone(seconds: float = 1.0, hz: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_kind_values_are_the_wire_bytes():
    assert [int(k) for k in Kind] == list(range(8))
    assert [int(c) for c in Control] == [0, 1, 2, 3]
    assert protocol.ping() == b"\x06"
    assert protocol.audio(b"OggS") == b"\x01OggS"


def test_handshake_variants():
    assert protocol.handshake() == b"\x00"  # moshi's Python server
    assert protocol.handshake(compact=False) == b"\x00" + bytes(8)  # the Rust server
    assert protocol.decode(protocol.handshake()).handshake() == (0, 0)
    assert protocol.decode(protocol.handshake(1, 7, compact=False)).handshake() == (1, 7)
    with pytest.raises(ValueError):
        protocol.handshake(1)
    with pytest.raises(ValueError):
        protocol.handshake(2**32, compact=False)
    with pytest.raises(ProtocolError, match="8 bytes"):
        protocol.decode(b"\x00\x01\x02").handshake()


@pytest.mark.parametrize(
    "frame, kind, check",
    [
        (protocol.handshake(), Kind.HANDSHAKE, lambda m: m.handshake() == (0, 0)),
        (protocol.audio(b"pages"), Kind.AUDIO, lambda m: m.payload == b"pages"),
        (protocol.text("\u2581hello"), Kind.TEXT, lambda m: m.text() == " hello"),
        (protocol.text("wörld"), Kind.TEXT, lambda m: m.text() == "wörld"),
        (protocol.control(Control.END_TURN), Kind.CONTROL, lambda m: m.control() is Control.END_TURN),
        (protocol.metadata({"text_temperature": 0.7, "name": "ä"}), Kind.METADATA,
         lambda m: m.json() == {"text_temperature": 0.7, "name": "ä"}),
        (protocol.error("server full"), Kind.ERROR, lambda m: m.text() == "server full"),
        (protocol.ping(), Kind.PING, lambda m: m.payload == b""),
        (protocol.colored_text("\u2581hi", 3), Kind.COLORED_TEXT, lambda m: m.color() == 3 and m.text() == " hi"),
    ],
)
def test_every_kind_round_trips(frame, kind, check):
    message = protocol.decode(frame)
    assert message.kind == kind and isinstance(message.kind, Kind) and message.known
    assert check(message)
    assert protocol.encode(message) == frame
    assert protocol.encode(message.kind, message.payload) == frame


def test_unknown_kinds_decode_for_discarding():
    message = protocol.decode(b"\x2aanything")
    assert not message.known and message.kind == 42 and message.payload == b"anything"
    assert protocol.encode(message) == b"\x2aanything"
    with pytest.raises(ProtocolError, match="no text"):
        message.text()


@pytest.mark.parametrize(
    "frame, needle",
    [
        (b"", "empty message"),
        (b"\x02\xff\xfe", "UTF-8"),
        (b"\x05\xc3", "UTF-8"),
        (b"\x04{not json", "malformed JSON"),
        (b"\x04[1, 2]", "JSON object"),
        (b"\x04\xff", "UTF-8"),
        (b"\x03", "one byte"),
        (b"\x03\x09", "one byte"),
        (b"\x03\x00\x00", "one byte"),
        (b"\x07", "colour"),
    ],
)
def test_malformed_frames_raise(frame, needle):
    with pytest.raises(ProtocolError, match=needle) as info:
        protocol.decode(frame)
    assert isinstance(info.value, FullduplexError)


def test_accessors_refuse_other_kinds_and_encode_checks_the_kind():
    with pytest.raises(ProtocolError):
        Message(Kind.AUDIO, b"x").json()
    with pytest.raises(ProtocolError):
        Message(Kind.TEXT, b"x").control()
    with pytest.raises(ProtocolError):
        Message(Kind.TEXT, b"x").handshake()
    with pytest.raises(ValueError):
        protocol.encode(256)
    with pytest.raises(ValueError):
        protocol.encode(Message(Kind.PING), b"extra")
    with pytest.raises(ValueError):
        protocol.control(7)
    with pytest.raises(ValueError):
        protocol.metadata([1])  # type: ignore[arg-type]


def test_opus_tone_round_trip():
    encoder, decoder = OpusEncoder(), OpusDecoder()
    ogg = encoder.encode(tone(1.0, 440.0))
    assert ogg.startswith(b"OggS") and encoder.pending == 0
    pcm = decoder.decode(ogg)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(len(pcm) - RATE) <= 960  # ~1 s at 24 kHz
    spectrum = np.abs(np.fft.rfft(pcm[2400:]))
    peak = np.fft.rfftfreq(len(pcm) - 2400, 1 / RATE)[spectrum.argmax()]
    assert abs(peak - 440.0) < 5.0
    assert 0.15 < np.sqrt(np.mean(pcm[2400:] ** 2)) < 0.3  # amplitude 0.3: RMS 0.21


def test_opus_encoder_buffers_any_length_into_whole_frames():
    encoder, decoder = OpusEncoder(), OpusDecoder()
    signal = tone(0.5, 300.0)
    out = []
    for start in range(0, len(signal), 700):  # 700 is no Opus frame size
        ogg = encoder.encode(signal[start : start + 700])
        out.append(decoder.decode(ogg))
        assert encoder.pending < 960
    assert encoder.encode(np.zeros(0, np.float32)) == b""
    tail = encoder.flush()
    assert (tail != b"") == (len(signal) % 960 != 0) and encoder.pending == 0 and encoder.flush() == b""
    out.append(decoder.decode(tail))
    assert sum(len(p) for p in out) == -(-len(signal) // 960) * 960
    with pytest.raises(ValueError, match=r"\[S\]"):
        encoder.encode(np.zeros((2, 960), np.float32))


def test_opus_decoder_stream_pages_one_message_at_a_time():
    encoder, decoder = OpusEncoder(), OpusDecoder()
    signal = tone(0.4)
    lengths = [len(decoder.decode(encoder.encode(signal[i : i + 1920]))) for i in range(0, len(signal), 1920)]
    assert lengths == [1920] * 5
    assert len(decoder.decode(b"")) == 0


def test_opus_garbage_and_truncated_pages_raise():
    ogg = OpusEncoder().encode(tone(0.2))
    pages = protocol.split_ogg_pages(ogg)
    assert len(pages) >= 3 and b"".join(pages) == ogg and pages[0][28:36] == b"OpusHead"
    for bad, needle in [
        (b"definitely not an ogg page", "OggS"),
        (ogg[:20], "header"),
        (ogg[: len(ogg) - 5], "bytes missing"),
        (ogg + b"junk", "OggS"),
    ]:
        with pytest.raises(ProtocolError, match=needle):
            OpusDecoder().decode(bad)
    corrupted = bytearray(ogg)
    corrupted[-3] ^= 0xFF
    with pytest.raises(ProtocolError, match="CRC"):
        OpusDecoder().decode(bytes(corrupted))


def test_undecodable_opus_packet_in_a_valid_page_raises():
    """A well-formed Ogg page around a packet Opus cannot decode: sphn's failure becomes a ProtocolError."""
    ogg = OpusEncoder().encode(tone(0.08))
    head, tags, first = protocol.split_ogg_pages(ogg)[:3]
    nseg = first[26]
    body = b"\xff" * (len(first) - 27 - nseg)
    page = bytearray(first[: 27 + nseg] + body)
    page[22:26] = b"\0\0\0\0"
    page[22:26] = struct.pack("<I", protocol._ogg_crc(bytes(page)))
    with pytest.raises(ProtocolError, match="could not decode"):
        OpusDecoder().decode(head + tags + bytes(page))


def test_ogg_crc_through_zlib_equals_the_bitwise_crc():
    """protocol's CRC (zlib on bit-reversed bytes) gives the values of the plain table CRC, on random data."""
    from tests.server.ogg_craft import reference_crc

    rng = np.random.default_rng(0)
    for size in [0, 1, 2, 3, 27, 255, 4096, *rng.integers(1, 3000, 40)]:
        data = rng.integers(0, 256, int(size), dtype=np.uint8).tobytes()
        assert protocol._ogg_crc(data) == reference_crc(data)
    assert protocol._ogg_crc(b"\xff" * 64) == reference_crc(b"\xff" * 64)


def test_declared_audio_matches_decoded_audio_and_bombs_are_refused_before_decoding():
    """``audio_samples`` reads the packets' durations exactly for a real stream; a 227-byte page declaring 4 s is
    refused under ``max_samples`` without being decoded, and decodes to exactly its 4 s without a bound."""
    from tests.server.ogg_craft import bomb
    from tests.server.ogg_craft import page as ogg_craft_page

    rng = np.random.default_rng(1)
    pcm = (0.1 * rng.standard_normal(24000 * 2)).astype(np.float32)
    encoder, decoder = OpusEncoder(), OpusDecoder()
    serial, headers = None, 2
    for i in range(0, len(pcm), 1000):
        ogg = encoder.encode(pcm[i : i + 1000])
        if ogg:
            serial = struct.unpack_from("<I", ogg, 14)[0]
            declared = protocol.audio_samples(protocol.split_ogg_pages(ogg), headers=headers)
            assert len(decoder.decode(ogg, max_samples=declared)) == declared
            headers = 0
    page = bomb(serial, 1000)
    assert len(page) == 227 and protocol.audio_samples([page]) == 4 * 24000
    with pytest.raises(ProtocolError, match="holds 4.00 s of audio"):
        decoder.decode(page, max_samples=2 * 24000)
    assert len(decoder.decode(page)) == 4 * 24000  # the refusal left the stream intact
    # Packets that merely look like stream headers count as audio once the stream's two headers have passed.
    disguised = ogg_craft_page([b"OpusHead" + bytes(11)] * 40, serial, 1001)
    with pytest.raises(ProtocolError, match="holds 4.80 s"):
        decoder.decode(disguised, max_samples=2 * 24000)
