"""Hand-made Ogg pages for hostile-client tests and ``benchmarks/hostile_load.py``: an Opus "bomb" (a few hundred
bytes declaring seconds of audio) and empty pages (valid, decoding to nothing). The CRC here is the plain
bit-by-bit table version of Ogg's CRC-32, kept independent of ``protocol``'s zlib-based one."""

from __future__ import annotations

import struct

import numpy as np

from fullduplex.server import protocol

SILK_40MS = bytes([2 << 3])  # TOC of a one-byte Opus packet: SILK narrowband, one 40 ms frame, no data


def _table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_TABLE = _table()


def reference_crc(data: bytes) -> int:
    """Ogg's CRC-32 byte by byte (polynomial 0x04C11DB7, not reflected, initial value 0, no final xor)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[(crc >> 24) ^ byte]
    return crc


def page(packets: list[bytes], serial: int = 1, sequence: int = 2, granule: int = 0) -> bytes:
    """One Ogg page holding ``packets`` (each under 255 bytes), with a correct CRC."""
    lacing = bytes(len(p) for p in packets)
    assert all(len(p) < 255 for p in packets) and len(lacing) <= 255
    head = b"OggS" + bytes([0, 0]) + struct.pack("<qIII", granule, serial, sequence, 0) + bytes([len(lacing)])
    body = head + lacing + b"".join(packets)
    return body[:22] + struct.pack("<I", reference_crc(body)) + body[26:]


def stream_start() -> tuple[bytes, int]:
    """The first audio message of a real Opus stream (its header pages and 80 ms of silence) and its serial."""
    first = protocol.OpusEncoder().encode(np.zeros(1920, np.float32))
    return first, struct.unpack_from("<I", first, 14)[0]


def bomb(serial: int, sequence: int, packets: int = 100) -> bytes:
    """A page of ``packets`` one-byte Opus packets: 27 + 2 × packets bytes declaring packets × 40 ms of audio
    (100 packets: 227 bytes, 4 s)."""
    return page([SILK_40MS] * packets, serial, sequence)


def empty_pages(size: int, serial: int = 1) -> bytes:
    """``size`` bytes (rounded down to whole pages) of valid, empty Ogg pages (27 bytes each)."""
    one = page([], serial, 1000)
    return one * (size // len(one))
