"""A SOCKS5 listener's connections: the negotiation (socks5.py), then an ordinary stream.

A :class:`Socks5Stream` is the asyncio protocol of one accepted SOCKS client. It reads the
greeting and the CONNECT request itself; then it opens its stream with the request's
target in the OPEN (protocol.md, Frames), and answers the client with the outcome the
other side reports: success on OPEN_OK, and on OPEN_FAIL the reply its cause stands for
(0x02 refused by the rules, 0x05 connection refused, 0x04 unreachable; socks5.reply_for).
From then on it is a plain TcpStream. Either side of a tunnel may hold the listener:
the client in ``socks5`` mode, the server in ``reverse-socks5``.
"""

from __future__ import annotations

import asyncio
import logging

from .addresses import format_peer
from .limits import QuietLog
from .logs import escape
from .session import Session
from .socks5 import Credentials, Reply, Socks5Server, SocksError, reply, reply_for
from .tcp import TcpStream

log = logging.getLogger("aiowstunnel.socks")
quiet = QuietLog(log)

#: Seconds a SOCKS client has to finish its greeting and request.
NEGOTIATION_TIMEOUT = 10.0


class Socks5Stream(TcpStream):
    """One SOCKS5 client: negotiation first, then the stream to the target it asked for."""

    def __init__(self, session: Session, credentials: Credentials | None = None) -> None:
        super().__init__(session.table)
        self.session = session  # its limits, counters and name, before the table knows it
        self.socks = Socks5Server(credentials)
        self._negotiating = True
        self._buffer = bytearray(1024)
        self._timer: asyncio.TimerHandle | None = None

    # Before the request is complete the stream belongs to the negotiation: reads land in
    # its own small buffer, and the session hears of it only once the target is known.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = _peer(transport)
        guard = self.session.guard
        if guard is not None:  # the server's limits count a negotiating client already
            self.slot = guard.stream_slot(self.peer)
            if self.slot is None:
                self._negotiating = False
                self.session.stats.stream_open_failures["stream_limit"] += 1
                self.transport.abort()  # type: ignore[union-attr]
                return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(NEGOTIATION_TIMEOUT, self._too_slow)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._negotiating:
            return memoryview(self._buffer)
        return super().get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if not self._negotiating:
            super().buffer_updated(nbytes)
            return
        assert self.transport is not None
        try:
            answer = self.socks.receive(bytes(self._buffer[:nbytes]))
        except SocksError as exc:
            self._fail(str(exc), exc.answer)
            return
        if answer:
            self.transport.write(answer)
        if self.socks.done:
            self._start()

    def eof_received(self) -> bool:
        if self._negotiating:
            self._fail("the client closed during the negotiation", b"")
            return False
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.stream_id is None:  # the session never heard of it
            self._negotiating = False
            if self.slot is not None:
                self.slot.release()
                self.slot = None
            return
        super().connection_lost(exc)

    def _start(self) -> None:
        """The request is complete: open the stream, with its target in the OPEN."""
        self._cancel_timer()
        self._negotiating = False
        assert self.socks.target is not None
        self.target = str(self.socks.target)
        if self.socks.rest:  # sent without waiting for our reply: goes after OPEN_OK
            self.backlog = memoryview(self.socks.rest)
        # Hand over to the session as TcpStream.connection_made would, now.
        super().connection_made(self.transport)  # type: ignore[arg-type]

    def opened(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply(Reply.SUCCEEDED))

    def refused(self, reason: str) -> bool:
        code = reply_for(reason)
        # The session's own line already says why, at warning: this one adds the reply.
        log.debug(
            "SOCKS request from %s for %s refused (reply %#04x): %s",
            self.peer,
            self.target,
            int(code),
            escape(reason),
            extra={"tunnel": self.session.name, "peer": self.peer},
        )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply(code))
            self.transport.close()  # after the reply: a clean close, as RFC 1928 asks
        return True

    # -- failures before any stream ----------------------------------------------------

    def _fail(self, why: str, answer: bytes) -> None:
        self._cancel_timer()
        self._negotiating = False
        self.session.stats.stream_open_failures["socks"] += 1
        quiet.warning(
            "socks",
            "SOCKS client %s refused: %s",
            self.peer,
            escape(why),
            extra={"tunnel": self.session.name, "peer": self.peer},
        )
        if self.transport is not None:
            if answer:
                self.transport.write(answer)
            self.transport.close()

    def _too_slow(self) -> None:
        self._timer = None
        if self._negotiating:
            self._fail(f"no complete request within {NEGOTIATION_TIMEOUT:g} s", b"")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _peer(transport: asyncio.BaseTransport) -> str:
    return format_peer(transport.get_extra_info("peername"))
