"""A local connection accepted while a tunnel's session is being replaced.

When a server sends GOAWAY (it is stopping, or restarting), the client opens a new session
at once while the old one drains; a CONNECT tunnel with no other live session has nothing
to open a stream on for those few milliseconds. Refusing the connection would fail an
application for a change it should not see, so it is held instead: accepted, its first
bytes kept (bounded: reading pauses past :data:`HELD_BUFFER`), and handed to the new
session's stream table as soon as that session is open (the transport's protocol becomes
the stream's). A held connection that waits longer than its bound, or whose replacement
fails, is reset like any connection accepted while the tunnel is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from .resets import Abortable
from .tcp import TcpStream

#: What a held connection may send before reading pauses (it waits in memory meanwhile).
HELD_BUFFER = 64 * 1024


class HeldConnection(asyncio.Protocol):
    """The protocol of a connection waiting for a session.

    Args:
        refuse: resets the transport and counts it (the client's refusal while down).
        timeout: the most it waits, in seconds.
        place: called once the connection is made: attaches it at once if a session is
            open by then, refuses it if none is coming, or keeps it until one is.
        on_gone: told when it stops waiting (attached, refused or lost by its peer).
    """

    def __init__(
        self,
        refuse: Callable[[Abortable], None],
        timeout: float,
        place: Callable[[HeldConnection], None],
        on_gone: Callable[[HeldConnection], None],
    ) -> None:
        self._refuse = refuse
        self._timeout = timeout
        self._place = place
        self._on_gone = on_gone
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._timer: asyncio.TimerHandle | None = None
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.waiting = True
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self.refuse)
        # The event loop may make the connection a turn after the protocol was built
        # (uvloop does): the new session may be open by now.
        self._place(self)

    def adopt(self, transport: asyncio.Transport, data: bytes, eof: bool) -> None:
        """Take over a connection a session gave back (streams.StreamTable.release):
        what it read and its EOF go to the next session with it."""
        transport.set_protocol(self)
        self._buffer += data
        self._eof = eof
        self.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= HELD_BUFFER and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        return True  # a half-close: the stream sends FIN once it is open

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def _done(self) -> None:
        if self.waiting:
            self.waiting = False
            if self._timer is not None:
                self._timer.cancel()
            self._on_gone(self)

    def refuse(self) -> None:
        """Stop waiting: reset the connection (counted as refused while down)."""
        if not self.waiting or self.transport is None:
            return
        transport = self.transport
        self._done()
        self._refuse(cast(Abortable, transport))

    def attach(self, stream: TcpStream) -> None:
        """Hand the connection to ``stream`` (a new session's): the stream takes over the
        transport, then gets what was read meanwhile, and the EOF if one came."""
        if not self.waiting or self.transport is None:
            return
        transport = self.transport
        self._done()
        if transport.is_closing():
            return
        transport.set_protocol(stream)
        # The stream starts out reading (TcpStream.reading), so the socket must too, however
        # our full buffer or the session it came from (StreamTable.release) left it; its
        # table pauses it again where it may not read yet (no OPEN_OK, no early data).
        if not self._eof and not transport.is_reading():
            transport.resume_reading()
        stream.connection_made(transport)  # OPEN goes out
        if self._buffer:
            # Sent early as far as the peer takes it, the rest waits for OPEN_OK.
            stream.table.data(stream, memoryview(bytes(self._buffer)))
            self._buffer.clear()
        if self._eof:
            stream.eof_received()
        # From here the stream's table decides when the socket reads.
