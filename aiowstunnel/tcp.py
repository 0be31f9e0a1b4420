"""A tunneled TCP connection's asyncio protocol, and what every TCP socket here gets.

:class:`TcpStream` holds one stream's local state (its socket, what waits to be sent,
whether it reads) and forwards each socket event to its table (``streams.StreamTable``),
which decides everything.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Protocol, cast

from .addresses import format_peer
from .limits import Slot

#: A TCP stream's write-buffer high-water mark: past it the stream's credit is held back
#: (protocol.md: "credit is returned only as the socket accepts the bytes"), so memory per
#: stream is bounded by window + STREAM_HIGH_WATER.
STREAM_HIGH_WATER = 256 * 1024
#: The most a stream reads at once. Each read is sized to the stream's credit, so what is
#: read can always be sent at once: no per-stream backlog builds up (docs/performance.md).
READ_SIZE = 256 * 1024
#: The size of a read that credit does not cover: the one that finds a busy stream's
#: credit used up (reading stops after it, until a WINDOW comes), and one a transport makes
#: despite a pause (TcpStream._repause), such as a stream's first read under uvloop, before
#: its OPEN_OK. It waits in the stream's backlog and goes out with the next credit, even
#: while the WebSocket is paused, so it is kept small: at 16 KiB, 200 streams held 3 MB of
#: backlog that way, and the WebSocket's buffer as much again (docs/performance.md, round 4).
SPILL_READ = 1024


class StreamEvents(Protocol):
    """Where a :class:`TcpStream` reports its socket's events (``streams.StreamTable``)."""

    read_view: memoryview

    def connected(self, stream: TcpStream) -> None: ...

    def read_buffer(self, stream: TcpStream) -> memoryview: ...

    def data(self, stream: TcpStream, data: memoryview) -> None: ...

    def eof(self, stream: TcpStream) -> None: ...

    def write_paused(self, stream: TcpStream, paused: bool) -> None: ...

    def lost(self, stream: TcpStream, exc: Exception | None) -> None: ...


class TcpStream(asyncio.BufferedProtocol):
    """One tunneled TCP connection: the asyncio protocol of its socket.

    It only forwards socket events to its table; the table decides everything. It is a
    BufferedProtocol so that the table chooses how much each read takes (the stream's
    credit) and where it lands (one buffer per thread, reused by every read).
    """

    def __init__(self, table: StreamEvents, stream_id: int | None = None) -> None:
        self.table = table
        self.stream_id = stream_id  # None until OPEN is sent (listener side)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        # read from the socket but not yet sent: a read that found no credit (before
        # OPEN_OK, or with the credit used up) or that the transport made despite a pause;
        # at most SPILL_READ, since reads are otherwise sized to the credit
        self.backlog: memoryview | None = None
        #: listener side, until OPEN_OK: a copy of the early data sent (protocol.md, Early
        #: data), so that a stream refused as its peer goes away can move whole (release)
        self.early: bytearray | None = None
        self.reading = True  # what we last told the transport
        self.at_eof = False  # the socket said EOF: it must never be read again
        self.slot: Slot | None = None  # server side: this stream's place in the limits
        # for the "stream closed" debug line: payload bytes each way, and when it opened
        self.sent = 0
        self.received = 0
        self.opened_at = 0.0

    #: listener side: the target its OPEN carries ("" = the session's); a subclass that
    #: learns it from its application (socks.py) sets it before connection_made reports
    target = ""
    #: dialing side: called with the new socket before anything is tunneled (a PROXY
    #: protocol header, destinations.dialer); None for nothing
    before_open: Callable[[asyncio.BaseTransport], None] | None = None

    def opened(self) -> None:
        """Listener side: the peer dialed (OPEN_OK). A hook for subclasses (socks.py)."""

    def refused(self, reason: str) -> bool:
        """Listener side: the peer could not dial (OPEN_FAIL). True when the subclass has
        answered its application and closed the socket itself (no reset is needed)."""
        return False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance-checked: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=STREAM_HIGH_WATER)
        self.peer = format_peer(transport.get_extra_info("peername"))
        if self.before_open is not None:
            self.before_open(transport)
        self.table.connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.table.read_buffer(self)

    def buffer_updated(self, nbytes: int) -> None:
        if not self.reading:
            self._repause()
        self.table.data(self, self.table.read_view[:nbytes])

    def eof_received(self) -> bool:
        self.at_eof = True
        self.table.eof(self)
        return True  # keep the write side open: half-close (protocol.md, FIN)

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.lost(self, exc)

    def pause_writing(self) -> None:
        self.table.write_paused(self, True)

    def resume_writing(self) -> None:
        self.table.write_paused(self, False)

    # helpers for the table

    def set_reading(self, on: bool) -> None:
        # After EOF, asyncio's resume_reading would re-arm the reader and report EOF again.
        if on == self.reading or self.at_eof or self.transport is None:
            return
        if self.transport.is_closing():
            return
        self.reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def _repause(self) -> None:
        """Data came while we had paused: the transport dropped the pause. Both uvloop and
        Python 3.11.2 drop a pause made in connection_made(): uvloop forgets it, 3.11.2
        believes itself paused with its reader still armed (so a second pause_reading()
        is a no-op there, and only resume + pause re-arms it). Without this the stream
        would read on into its backlog, unbounded."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.at_eof:
            return
        if not transport.is_reading():
            transport.resume_reading()
        transport.pause_reading()


_thread_buffers = threading.local()


def thread_read_buffer() -> memoryview:
    """The buffer the streams of this thread's event loop read into, READ_SIZE bytes.

    One per thread, not per session: every read is consumed within its own callback
    (get_buffer, recv_into, buffer_updated run back to back), so streams and sessions of
    one loop can share it, and a server with many sessions keeps one buffer resident, not
    one per session.
    """
    view: memoryview | None = getattr(_thread_buffers, "view", None)
    if view is None:
        view = _thread_buffers.view = memoryview(bytearray(READ_SIZE))
    return view


#: buffers link_read_buffer took so far, all threads (a new one each time the last was kept)
link_buffers_taken = 0


def link_read_buffer() -> memoryview:
    """The buffer this thread's TLS links read into (tlsreads): the last one, unless kept.

    Unlike :func:`thread_read_buffer`, what is read into it can outlive the read: a stream's
    transport may keep a received payload (a view of it) that it could not write at once.
    The buffer is then left to it and a new one taken, so the next read never overwrites
    what still waits. A live view counts in the bytearray's reference count; 3 is the
    thread's attribute, this name and getrefcount's argument. A view is returned, not the
    bytearray: asyncio's TLS transport reads the rest of a record into a slice of what it
    is given, and a bytearray's slice is a copy.
    """
    global link_buffers_taken
    buf: bytearray | None = getattr(_thread_buffers, "link", None)
    if buf is None or sys.getrefcount(buf) > 3:
        buf = _thread_buffers.link = bytearray(READ_SIZE)
        link_buffers_taken += 1
    return memoryview(buf)


def link_read_view(nbytes: int) -> memoryview:
    """The first ``nbytes`` of the buffer :func:`link_read_buffer` last returned in this
    thread (get_buffer, the read and buffer_updated run back to back in one callback)."""
    return memoryview(_thread_buffers.link)[:nbytes]
