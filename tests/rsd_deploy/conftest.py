"""Fixtures of the core tests."""

from __future__ import annotations

import struct
import zlib

import pytest


@pytest.fixture
def declared_png():
    """``write(path, width, height)``: a PNG whose header declares width x height but whose data
    is one byte, as a decompression bomb (or a file cut short) looks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def write(path, width: int, height: int) -> None:
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))

    return write
