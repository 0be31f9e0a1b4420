"""One tunnel session: many TCP streams over a WebSocket link.

A :class:`Session` owns the protocol state (:class:`~mux.Mux`), the streams
(:class:`~streams.StreamTable`), the dialing of streams the peer opens, and the session's
one phase: handshake, open, draining (GOAWAY), closed. It is not an asyncio protocol: the
WebSocket connection is its :class:`~link.Link`, attached with :meth:`attach`, and every
callback from link or stream runs to completion without awaiting, so one slow stream
never stalls the others; credit (protocol.md, Flow control) bounds what each may buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from .dial import Dial, failure_label
from .errors import ProtocolViolation, describe
from .limits import DEFAULT_MAX_VIOLATIONS, LOGGED_VIOLATIONS, QuietLog, SessionGuard, Slot
from .link import CLOSE_TIMEOUT, Link, Message
from .logs import escape, quote
from .mux import (
    CreditGranted,
    DataReceived,
    Event,
    GoAwayReceived,
    Mux,
    Reply,
    StreamAccepted,
    StreamEnded,
    StreamLimited,
    StreamRefused,
    StreamRequested,
    StreamReset,
    StreamViolated,
)
from .resets import Cut
from .serverlink import ServerLink
from .stats import TunnelStats
from .streams import StreamTable
from .tcp import TcpStream
from .wire import DEFAULT_MAX_STREAMS, DEFAULT_WINDOW

log = logging.getLogger("aiowstunnel.session")
#: Lines a peer can cause (its refusals, resets, violations) go through here: a flood of
#: frames costs a few lines per period, not one line per frame.
quiet = QuietLog(log)


#: How long a side that sent GOAWAY keeps a session with no stream open for the peer to
#: close it: an OPEN the peer sent before it saw the GOAWAY is answered (OPEN_FAIL "going
#: away", which a client opens again on another session) instead of being lost with the
#: session. The peer closes at once when idle (protocol.md, GOAWAY), so this rarely waits.
GOAWAY_LINGER = 1.0


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    DRAINING = "draining"  # GOAWAY sent or received: no new streams
    CLOSED = "closed"


class Session:
    """One tunnel session: handshake, then frames for many streams.

    Args:
        ws: websockets' sans-I/O protocol, ClientProtocol or ServerProtocol, CONNECTING:
            the session's first link is built around it (:attr:`link`, the asyncio
            protocol to give the connection).
        stats: the counters of the tunnel (or the server's client entry) this belongs to.
        window: our receive window per stream.
        max_streams: streams the peer may open at once.
        ping_interval, ping_timeout: keepalive; a peer silent for their sum is dead.
        on_request: server side: called with the upgrade request; the server answers
            later with :meth:`accept` or :meth:`reject`.
        name: for logs (tunnel or client name).
        guard: server side: the server's limits (handshake, streams, send buffer,
            violations); None for no limits (the client side).
    """

    def __init__(
        self,
        ws: ClientProtocol | ServerProtocol,
        stats: TunnelStats,
        *,
        window: int = DEFAULT_WINDOW,
        max_streams: int = DEFAULT_MAX_STREAMS,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        on_request: Callable[[Session, Request], None] | None = None,
        name: str = "",
        guard: SessionGuard | None = None,
    ) -> None:
        self.guard = guard
        self.violations = 0
        self.max_violations = guard.max_violations if guard else DEFAULT_MAX_VIOLATIONS
        self.client_side = isinstance(ws, ClientProtocol)
        self.mux = Mux(self.client_side, window=window, max_streams=max_streams)
        self.table = StreamTable(self.mux, self, stats, guard)
        self.on_request = on_request
        self.name = name
        #: server side: the client entry's name, beside ``name`` (the tunnel's) in logs
        self.client: str | None = None
        self.on_goaway: list[Callable[[Session], None]] = []  # the peer sent GOAWAY
        #: a stream the peer refused after its GOAWAY: True if it was taken elsewhere (the
        #: client opens it on another session) instead of being reset
        self.on_refused: Callable[[Session, int], bool] | None = None
        self._goaway_at: float | None = None  # when this side sent GOAWAY
        self.on_close: list[Callable[[Session], None]] = []
        self.dial: Dial | None = None  # set once accepted, on the dialing side
        self.phase = Phase.HANDSHAKE
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.close_reason = ""
        self._dials: set[asyncio.Task[None]] = set()
        self.cut_streams = 0  # streams the session's end cut (set in link_lost)
        self.drain_cut = 0  # streams reset because the drain of shutdown() ran out
        pings = (ping_interval, ping_timeout)
        self.link: Link
        if isinstance(ws, ServerProtocol):
            self.link = ServerLink(ws, self, pings, guard=guard, max_data=self.mux.max_data)
        else:
            self.link = Link(ws, self, pings, max_data=self.mux.max_data)

    def attach(self, link: Link) -> None:
        """Carry the session over ``link`` from now on (one link at a time)."""
        self.link = link
        link.owner = self

    # -- what the others read ------------------------------------------------------------

    @property
    def stats(self) -> TunnelStats:
        return self.table.stats

    @stats.setter
    def stats(self, stats: TunnelStats) -> None:  # the server's, once authenticated
        self.table.stats = stats

    @property
    def streams(self) -> StreamTable:
        return self.table

    @property
    def peer(self) -> str:
        return self.link.peer

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.link.transport

    @property
    def handshake(self) -> asyncio.Future[Response | Request]:
        return self.link.handshake

    def new_stream(self) -> TcpStream:
        """The protocol for a local connection accepted for this session (listener side)."""
        return TcpStream(self.table)

    def log_extra(self) -> dict[str, str | None]:
        return {"client": self.client, "tunnel": self.name, "peer": self.peer}

    # -- handshake (the link does the HTTP) ------------------------------------------------

    def send_request(self, request: Request) -> None:
        """Client side: send the upgrade request (see client.py for its headers)."""
        self.link.send_request(request)

    def accept(
        self, request: Request, dial: Dial | None, extra_headers: dict[str, str] | None = None
    ) -> None:
        """Server side: answer the request with 101 and start the session.

        Args:
            request: the upgrade request, as received.
            dial: opens the connection for each stream the peer opens; None refuses them.
            extra_headers: added to the 101 response (e.g. the address bound for LISTEN).
        """
        self.dial = dial
        self._server_link().accept(request, extra_headers)

    def check_upgrade(self, request: Request) -> bool:
        """Server side: whether websockets accepts the upgrade itself (else its 400 is
        sent). Called before anything is granted (a session, a LISTEN port)."""
        return self._server_link().check_upgrade(request)

    def reject(self, status: int, reason: str) -> None:
        """Server side: refuse the upgrade with an HTTP status and a plain-text reason."""
        self._server_link().reject(status, reason)

    def _server_link(self) -> ServerLink:
        assert isinstance(self.link, ServerLink), "an upgrade is answered on the server"
        return self.link

    # -- the link's events (LinkOwner) -------------------------------------------------------

    def link_request(self, request: Request) -> None:
        if self.on_request is None:
            self.link.abort("this side does not answer upgrade requests")
            return
        self.on_request(self, request)

    def link_open(self) -> None:
        self.phase = Phase.OPEN

    def link_message(self, message: Message) -> None:
        data = self.mux.receive_data(message)
        if data is not None:
            self.table.deliver(*data)
            return
        for event in self.mux.receive(message):
            self._event(event)

    def link_violation(self, exc: ProtocolViolation) -> None:
        quiet.warning("violation", "protocol violation: %s", escape(exc), extra=self.log_extra())
        self.fail(CloseCode.PROTOCOL_ERROR, str(exc))

    def link_abuse(self, key: str, reason: str, drop: bool) -> None:
        self._fail_abuse(key, reason, drop)

    def link_paused(self, paused: bool) -> None:
        self.table.update_all()  # the streams stop (or resume) reading

    def link_closing(self) -> None:
        self.phase = Phase.CLOSED  # nothing can be sent any more; link_lost cleans up

    def link_lost(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        self.phase = Phase.CLOSED
        for task in self._dials:
            task.cancel()
        #: streams this session's end cut (reset toward their applications), for the
        #: "tunnel down" and "session ended" lines
        self.cut_streams = self.table.cut_all(Cut.SESSION_LOST, self.close_reason)
        if not self.closed.done():
            self.closed.set_result(self.close_reason)
        for callback in self.on_close:
            callback(self)

    # -- what the streams need (StreamHost) --------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.phase is Phase.OPEN

    @property
    def sending(self) -> bool:
        return self.phase is not Phase.CLOSED

    @property
    def paused(self) -> bool:
        return self.link.paused

    def send(self, message: bytes) -> None:
        self.link.send_message(message)

    def send_data(self, stream_id: int, data: memoryview) -> None:
        self.link.send_data(stream_id, data)

    def flush(self) -> None:
        self.link.flush()

    def ids_exhausted(self, reason: str) -> None:
        self.goaway(reason)  # the open streams finish; the client reconnects

    def streams_idle(self) -> None:
        if self.phase is Phase.DRAINING and self.link.can_send:
            self._close_when_idle("going away")

    def _linger_left(self) -> float:
        """Of GOAWAY_LINGER since this side's GOAWAY, what is left (0 without one)."""
        if self._goaway_at is None:
            return 0.0
        return max(0.0, self._goaway_at + GOAWAY_LINGER - self.loop.time())

    def _close_when_idle(self, reason: str) -> None:
        """Close a draining session with no stream open; after our own GOAWAY, not before
        the peer had GOAWAY_LINGER to answer it (it closes first, as a rule)."""
        left = self._linger_left()
        if left > 0:
            self.loop.call_later(left, self._close_when_idle, reason)
        elif self.phase is Phase.DRAINING and not len(self.table) and self.link.can_send:
            self.close(CloseCode.GOING_AWAY, reason)

    # -- the peer's frames ---------------------------------------------------------------

    def _event(self, event: Event) -> None:
        table = self.table
        if isinstance(event, DataReceived):
            table.deliver(event.stream_id, event.data)
        elif isinstance(event, CreditGranted):
            table.credit_granted(event.stream_id)
        elif isinstance(event, Reply):
            self.send(event.message)
        elif isinstance(event, StreamEnded):
            table.peer_ended(event.stream_id)
        elif isinstance(event, StreamRequested):
            self._stream_requested(event.stream_id, event.origin)
        elif isinstance(event, StreamAccepted):
            table.peer_accepted(event.stream_id)
        elif isinstance(event, StreamRefused):
            if (
                self.phase is Phase.DRAINING
                and self.on_refused is not None
                and self.on_refused(self, event.stream_id)
            ):
                return  # refused because the peer goes away: opened on another session
            stream = table.get(event.stream_id)
            # The peer's words are a log field, never a label: labels are a fixed set.
            self.stats.stream_open_failures["peer_refused"] += 1
            quiet.warning(
                "refused",
                "stream %d from %s refused by the other side: %s",
                event.stream_id,
                stream.peer if stream else "?",
                quote(event.reason),
                extra=self.log_extra(),
            )
            table.cut_id(event.stream_id, Cut.OPEN_FAILED, event.reason)
        elif isinstance(event, StreamViolated):
            self._stream_violation(event.stream_id, event.reason)
            table.cut_id(event.stream_id, Cut.VIOLATION, event.reason)
        elif isinstance(event, StreamReset):
            table.cut_id(event.stream_id, Cut.PEER_RESET, event.reason)
        elif isinstance(event, StreamLimited):
            self.stats.stream_open_failures["stream_limit"] += 1
            log.debug(
                "stream %d refused: %s", event.stream_id, event.reason, extra=self.log_extra()
            )
        elif isinstance(event, GoAwayReceived):
            self._goaway_received(event.reason)

    def _goaway_received(self, reason: str) -> None:
        if self.phase is Phase.DRAINING:
            return  # said once is enough
        log.info("peer going away: %s", quote(reason), extra=self.log_extra())
        self.phase = Phase.DRAINING
        self.close_reason = f"peer going away: {escape(reason)}"
        for callback in self.on_goaway:
            callback(self)
        if not len(self.table):
            self.close(CloseCode.GOING_AWAY, "going away")

    def _stream_violation(self, stream_id: int, reason: str) -> None:
        """A stream-level violation (answered with RST): counted; the first few logged;
        past max_violations the session closes with 1002."""
        self.violations += 1
        if self.violations <= LOGGED_VIOLATIONS:
            more = (
                " (further ones are counted, not logged)"
                if self.violations == LOGGED_VIOLATIONS
                else ""
            )
            quiet.warning(
                "stream-violation",
                "stream %d: protocol violation: %s%s",
                stream_id,
                escape(reason),
                more,
                extra=self.log_extra(),
            )
        if self.violations >= self.max_violations and self.link.can_send:
            self._fail_abuse("violations", f"too many protocol violations ({self.violations})")

    def _fail_abuse(self, key: str, reason: str, drop: bool = False) -> None:
        """Close with 1002 for a peer past a violation limit (counted as the
        ``violations`` limit hit, logged rate-limited); ``drop``: without waiting for the
        closing handshake."""
        if self.guard is not None:
            self.guard.hit("violations", self.peer)
        quiet.warning(key, "closing the session: %s", reason, extra=self.log_extra())
        self.fail(CloseCode.PROTOCOL_ERROR, reason)
        if drop:
            self.abort(reason)

    # -- streams the peer opens (the dialing side) -----------------------------------------

    def _stream_requested(self, stream_id: int, origin: str) -> None:
        if self.dial is None or self.phase is not Phase.OPEN:
            reason = "this side does not accept streams" if self.dial is None else "going away"
            self.send(self.mux.refuse_stream(stream_id, reason))
            return
        slot = None
        if self.guard is not None:
            slot = self.guard.stream_slot(self.peer)
            if slot is None:
                self.stats.stream_open_failures["stream_limit"] += 1
                self.send(self.mux.refuse_stream(stream_id, "server stream limit reached"))
                return
        task = self.loop.create_task(self._dial(stream_id, origin, slot))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _dial(self, stream_id: int, origin: str, slot: Slot | None = None) -> None:
        assert self.dial is not None
        stream = TcpStream(self.table, stream_id)
        stream.slot = slot
        try:
            await self.dial(lambda: stream, origin)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = describe(exc)
            label = failure_label(exc)
            self.stats.stream_open_failures[label] += 1
            # The origin is the peer's claim: its own field, escaped; PEER= stays the socket.
            quiet.warning(
                ("dial", label),
                "stream %d%s not opened: %s",
                stream_id,
                f" for {quote(origin)}" if origin else "",
                reason,
                extra={**self.log_extra(), "origin": escape(origin)},
            )
            if stream_id in self.mux:
                self.send(self.mux.refuse_stream(stream_id, reason))
                self.flush()
        finally:
            if self.table.get(stream_id) is not stream and stream.slot is not None:
                stream.slot.release()  # never registered: forget() will not see it

    # -- closing ----------------------------------------------------------------------------

    def goaway(self, reason: str) -> None:
        """Announce that no new streams will be opened; open ones may finish."""
        if self.phase is Phase.OPEN and self.link.can_send:
            self.phase = Phase.DRAINING
            self._goaway_at = self.loop.time()
            self.send(self.mux.goaway(reason))
            self.flush()
            if not len(self.table):
                self._close_when_idle(reason)

    def reset_streams(self, cause: Cut, reason: str) -> int:
        """Reset every open stream, on both ends (RST to the peer too). Returns how many.

        For a drain that ran out (:meth:`shutdown`), and the hook for a stream kept for
        resumption whose session did not come back in time (:attr:`Cut.EXPIRED`).
        """
        return self.table.reset_all(cause, reason)

    async def shutdown(self, reason: str, timeout: float) -> None:
        """GOAWAY, let open streams finish for up to ``timeout``, then close; bounded.

        The one stop sequence of both ends (protocol.md, GOAWAY); safe to call twice.
        """
        self.goaway(reason)
        if not await self.drain(timeout) and len(self.table):
            self.drain_cut += self.reset_streams(
                Cut.DRAIN_TIMEOUT, f"{reason}: not finished within {timeout:g} s"
            )
        linger = min(self._linger_left(), timeout)
        if linger > 0 and not self.closed.done():  # the peer closes first, as a rule
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.closed), linger)
        self.close(CloseCode.GOING_AWAY, reason)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT)
        if not self.closed.done():
            self.link.abort(reason)

    async def drain(self, timeout: float) -> bool:
        """Wait until no stream is open, at most ``timeout`` seconds. True if drained."""
        try:
            await asyncio.wait_for(self.table.idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the WebSocket closing handshake; open streams are cut."""
        if not self.close_reason:
            self.close_reason = f"closed locally: {reason}" if reason else "closed locally"
        self.link.close(code, reason)

    def fail(self, code: int, reason: str) -> None:
        """Close because of an error (protocol violation: 1002), with the reason."""
        self.close_reason = self.close_reason or reason
        self.link.fail(code, reason)

    def abort(self, reason: str) -> None:
        """Drop the connection at once (dead peer)."""
        self.close_reason = self.close_reason or reason
        self.link.abort(reason)

    async def wait_closed(self) -> str:
        return await asyncio.shield(self.closed)
