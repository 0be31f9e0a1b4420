"""In-memory stand-ins for asyncio transports, for the unit tests of the link and the
stream table (tests/test_link.py, tests/test_streams.py): no socket, no event loop I/O.

A :class:`FakeTransport` keeps what its protocol writes, honours the write-buffer
high-water mark the way asyncio does (pause_writing past it, resume_writing once the
"socket" took the bytes, see :meth:`FakeTransport.drain`), and records pauses, EOF, close
and abort. :func:`pump` connects two of them, as a TCP connection would.
"""

from __future__ import annotations

import asyncio
from typing import Any


class FakeTransport:
    def __init__(
        self, protocol: asyncio.BaseProtocol, peername: tuple[str, int] = ("127.0.0.1", 40000)
    ) -> None:
        self.protocol = protocol
        self.peername = peername
        self.written = bytearray()
        self.high = 64 * 1024
        self.buffered = 0  # written and not yet taken by the "socket" (drain)
        self.write_paused = False
        self.reading = True
        self.closing = False
        self.aborted = False
        self.eof_written = False

    # asyncio.Transport's methods that the protocols call

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" else default  # no "socket": no setsockopt

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.high = high

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_written:  # as uvloop's and asyncio's transports
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.closing:
            return
        self.written += data
        self.buffered += len(data)
        if self.buffered > self.high and not self.write_paused:
            self.write_paused = True
            self.protocol.pause_writing()

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    # for the tests

    def take(self) -> bytes:
        """What was written since the last take (the "socket" sends it)."""
        out = bytes(self.written)
        self.written.clear()
        return out

    def drain(self) -> None:
        """The socket took everything buffered: resume_writing if paused."""
        self.buffered = 0
        if self.write_paused:
            self.write_paused = False
            self.protocol.resume_writing()


def pump(a: FakeTransport, b: FakeTransport, rounds: int = 20) -> None:
    """Carry bytes both ways between two protocols until neither writes any more."""
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src.take()
            src.drain()
            if data and not dst.closing:
                assert isinstance(dst.protocol, asyncio.Protocol)
                dst.protocol.data_received(data)
                moved = True
        if not moved:
            return
    raise AssertionError(f"still talking after {rounds} rounds")
