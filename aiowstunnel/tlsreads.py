"""A link's protocol on a TLS connection: decrypted bytes read straight into one buffer.

uvloop's and asyncio's TLS transports hand a plain protocol each decrypted read as a new
bytes object, copied out of the TLS object record by record and joined; a buffered
protocol gets the decrypted bytes written into its own buffer instead (measured in
docs/performance.md, TLS). :class:`TlsReads` is that buffered protocol in front of a
:class:`~link.Link`, which stays a plain protocol: on a plain TCP connection the transport's
own read buffer is already one copy, and a buffer of ours there saved nothing measurable.
"""

from __future__ import annotations

import asyncio
import sys
import threading

from .link import Link
from .tcp import READ_SIZE

_buffers = threading.local()
#: buffers taken so far, all threads (a new one each time the last was still in use)
taken = 0


def read_buffer() -> memoryview:
    """The buffer this thread's TLS links read into: the last one, unless still in use.

    A view, not the bytearray: asyncio's TLS transport reads the rest of a record into a
    slice of what it is given, and a bytearray's slice is a copy.

    A stream's transport may keep a received payload (a view of this buffer) it could not
    write at once; the buffer is then left to it and a new one taken, so what is read next
    never overwrites what still waits. A view, or a transport's hold on the buffer, counts
    in its reference count: 3 is the thread's attribute, this name and getrefcount's
    argument.
    """
    global taken
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or sys.getrefcount(buf) > 3:
        buf = _buffers.buf = bytearray(READ_SIZE)
        taken += 1
    return memoryview(buf)


class TlsReads(asyncio.BufferedProtocol):
    """The transport's protocol for ``link`` on a TLS connection; everything but the read
    is the link's."""

    __slots__ = ("link",)

    def __init__(self, link: Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        # get_buffer, the read and buffer_updated run back to back in one callback, so the
        # thread's buffer is still the one just read into.
        self.link.data_received(memoryview(_buffers.buf)[:nbytes])

    def eof_received(self) -> bool | None:
        return self.link.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.connection_lost(exc)

    def pause_writing(self) -> None:
        self.link.pause_writing()

    def resume_writing(self) -> None:
        self.link.resume_writing()


def link_protocol(link: Link, tls: bool) -> asyncio.BaseProtocol:
    """What the transport of ``link``'s connection runs: the link, or TlsReads over TLS."""
    return TlsReads(link) if tls else link
