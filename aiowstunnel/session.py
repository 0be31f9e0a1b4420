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
import logging
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from .detachment import Detachment
from .detachment import Phase as Phase  # the session's phase, imported from here by its users
from .dial import Dial, Dialer
from .drain import Linger, shutdown
from .errors import ProtocolViolation, ResumeRefused
from .events import (
    CreditGranted,
    DataReceived,
    Event,
    GoAwayReceived,
    Reply,
    StreamAccepted,
    StreamEnded,
    StreamLimited,
    StreamRefused,
    StreamRequested,
    StreamReset,
    StreamViolated,
)
from .faults import PeerFaults
from .limits import QuietLog, SessionGuard
from .link import DEFAULT_SETTINGS, Link, Message
from .logs import escape, quote
from .mux import Mux
from .resets import Cut
from .resumption import Resumption
from .serverlink import ServerLink
from .settings import SessionSettings
from .stats import TunnelStats
from .streams import StreamTable
from .tcp import TcpStream
from .udp import FlowTable

log = logging.getLogger("aiowstunnel.session")
#: Lines a peer can cause (its refusals, resets, violations) go through here: a flood of
#: frames costs a few lines per period, not one line per frame.
quiet = QuietLog(log)


#: the phases with a link whose loss detaches a resumable session
_ATTACHED = frozenset((Phase.OPEN, Phase.DRAINING))


class Session:
    """One tunnel session: handshake, then frames for many streams.

    Args:
        ws: websockets' sans-I/O protocol, ClientProtocol or ServerProtocol, CONNECTING:
            the session's first link is built around it (:attr:`link`, the asyncio
            protocol to give the connection).
        stats: the counters of the tunnel (or the server's client entry) this belongs to.
        settings: the session's knobs, whole: the Mux takes window and max_streams, the
            link the keepalive (a peer silent for ping_interval + ping_timeout is dead).
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
        settings: SessionSettings = DEFAULT_SETTINGS,
        on_request: Callable[[Session, Request], None] | None = None,
        name: str = "",
        guard: SessionGuard | None = None,
    ) -> None:
        self.guard = guard
        self.faults = PeerFaults(self, guard, lambda: self.link.can_send)
        self.client_side = isinstance(ws, ClientProtocol)
        self.settings = settings
        self.mux = Mux(self.client_side, window=settings.window, max_streams=settings.max_streams)
        self.table = StreamTable(self.mux, self, stats, guard)
        # made once: passed with every message (room made in a full log reads again)
        self._update_all = self.table.update_all
        self.flows = FlowTable(self)  # UDP datagram flows (udp.py), beside the streams
        self.on_request = on_request
        self.name = name
        #: server side: the client entry's name, beside ``name`` (the tunnel's) in logs
        self.client: str | None = None
        self.on_goaway: list[Callable[[Session], None]] = []  # the peer sent GOAWAY
        #: a stream the peer refused after its GOAWAY: True if taken elsewhere (the client
        #: opens it on another session) instead of being reset
        self.on_refused: Callable[[Session, int], bool] = lambda session, stream_id: False
        self.on_close: list[Callable[[Session], None]] = []
        self.dialer = Dialer(self.table)  # the streams the peer opens
        self.phase = Phase.HANDSHAKE
        self.loop = asyncio.get_running_loop()
        self.linger = Linger(self.loop)  # after our GOAWAY, the peer closes first
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.close_reason = ""
        self.cut_streams = 0  # streams the session's end cut (set in link_lost)
        self.drain_cut = 0  # streams reset because the drain of shutdown() ran out
        #: set once the server issued a session id and secret (protocol.md, Resumption)
        self.resumption: Resumption | None = None
        self.on_detach: list[Callable[[Session], None]] = []
        self.on_resume: list[Callable[[Session], None]] = []
        self.detachment = Detachment(self, self.loop)
        self.ended_detached = False
        self._ending = False  # a close (ours or the peer's): losing the link ends the session
        self.link: Link
        if isinstance(ws, ServerProtocol):
            self.link = ServerLink(ws, self, settings, guard=guard, max_data=self.mux.max_data)
        else:
            self.link = Link(ws, self, settings, max_data=self.mux.max_data)

    @property
    def dial(self) -> Dial | None:
        """Opens the connection of each stream the peer opens; None refuses them."""
        return self.dialer.dial

    @dial.setter
    def dial(self, dial: Dial | None) -> None:
        self.dialer.dial = dial

    def round_trip(self) -> float:
        """The round trip of the session's link now, for the replay log's limit."""
        return self.link.round_trip

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
    def handshake(self) -> asyncio.Future[Response | None]:
        return self.link.handshake

    def new_stream(self) -> TcpStream:
        """The protocol for a local connection accepted for this session (listener side)."""
        return TcpStream(self.table)

    def log_extra(self) -> dict[str, str | None]:
        return {"client": self.client, "tunnel": self.name, "peer": self.peer}

    # -- handshake (the server link does the HTTP: check_upgrade, accept, reject) ------------

    @property
    def server_link(self) -> ServerLink:
        """Server side: the link that answers the upgrade request."""
        assert isinstance(self.link, ServerLink), "an upgrade is answered on the server"
        return self.link

    def accept(self, request: Request, dial: Dial | None, headers: dict[str, str]) -> None:
        """Server side: answer with 101 (``headers`` added) and start the session; ``dial``
        opens the connection of each stream the peer opens (None refuses them)."""
        self.dial = dial
        self.server_link.accept(request, headers)

    def hand_over(self) -> None:
        """Server side: this session, only a resume's handshake, ends: its link is the
        resumed session's once the resume is proven (serverresume)."""
        self.phase = Phase.CLOSED
        self.closed.set_result("handed over to the resumed session")

    # -- the link's events (LinkOwner) -------------------------------------------------------

    def link_request(self, request: Request) -> None:
        if self.on_request is None:
            self.link.abort("this side does not answer upgrade requests")
            return
        self.on_request(self, request)

    def link_open(self) -> None:
        self.phase = Phase.OPEN

    def link_message(self, message: Message) -> None:
        resumption = self.resumption
        if resumption is not None:
            # counted; ACK and WINDOW counts confirm, and room made in a full log reads again
            given = resumption.received(message, self._update_all)
            if given is None:
                return
            message = given
        data = self.mux.receive_data(message)
        if data is not None:
            stream_id, payload = data
            self.table.deliver(stream_id, payload)
        elif not self.flows.receive(message):  # a DATAGRAM's fast path, as DATA's above
            for event in self.mux.receive(message):
                self._event(event)
        if resumption is not None and resumption.counter.ack_due:
            self.link.send_message(resumption.counter.ack())

    def link_violation(self, exc: ProtocolViolation) -> None:
        self.faults.session_violation(exc)

    def link_abuse(self, key: str, reason: str, drop: bool) -> None:
        self.faults.abuse(key, reason, drop)

    def link_paused(self, paused: bool) -> None:
        self.table.update_all()  # the streams stop (or resume) reading

    def link_closing(self) -> None:
        self._ending = True  # the peer closed on purpose: no resume
        self.phase = Phase.CLOSED  # nothing can be sent any more; link_lost cleans up

    def link_lost(self, reason: str) -> None:
        if self.resumption is not None and not self._ending and self.phase in _ATTACHED:
            self.detachment.detach(reason)
        else:
            self._end(reason)

    def _end(self, reason: str) -> None:
        if self.closed.done():
            return
        self.close_reason = self.close_reason or reason
        self.ended_detached = self.phase is Phase.DETACHED  # expired, or closed meanwhile
        self.phase = Phase.CLOSED
        self.detachment.ended()
        self.dialer.cancel()
        #: streams this session's end cut (reset toward their applications), for the
        #: "tunnel down" and "session ended" lines
        self.cut_streams += self.table.cut_all(Cut.SESSION_LOST, self.close_reason)
        self.flows.close_all()
        self.closed.set_result(self.close_reason)
        if not self.link.lost:  # an expiry during a resume attempt
            self.link.abort(self.close_reason)
        for callback in self.on_close:
            callback(self)

    # -- resumption (protocol.md, Resumption) ------------------------------------------

    def expire(self, cause: Cut, reason: str) -> None:
        """End a detached session: every stream reset (its socket with an RST), counted
        under ``cause``, with ``reason`` in the log."""
        if self.closed.done():
            return
        self._ending = True
        self.cut_streams = self.reset_streams(cause, reason)
        self._end(reason)

    async def wait_detached(self) -> bool:
        """Until the link is lost: True if detached (resumable), False if it ended."""
        return await self.detachment.wait()

    def resume(self, link: Link, claimed: int) -> None:
        """Carry on over ``link``, its resume proven (:meth:`Detachment.resume`)."""
        self.detachment.resume(link, claimed)

    def detached(self) -> None:
        for callback in self.on_detach:
            callback(self)

    def resumed(self) -> None:
        for callback in self.on_resume:
            callback(self)

    # -- what the streams need (StreamHost) --------------------------------------------------

    @property
    def accepting(self) -> bool:
        # Detached: a local connection waits (opened, not read) until resumed or expired.
        phase = self.phase
        return phase is Phase.OPEN or (
            phase is Phase.DETACHED and self.detachment.before is Phase.OPEN
        )

    @property
    def sending(self) -> bool:
        return self.phase is not Phase.CLOSED

    @property
    def paused(self) -> bool:
        if self.resumption is None:
            return self.link.paused
        return self.link.paused or self.phase is Phase.DETACHED or self.resumption.full

    def send(self, message: bytes) -> None:
        if self.resumption is not None:
            try:
                message = self.resumption.sent(message)  # logged until confirmed
            except ResumeRefused as refused:  # the peer confirms nothing: no resume
                self._log_overflow(refused)
                return
            if self.resumption.full_changed():  # a control message may fill the log too
                self.table.update_all()
        if self.phase is not Phase.DETACHED:
            self.link.send_message(message)

    def send_data(self, stream_id: int, data: memoryview) -> None:
        if self.resumption is None:
            self.link.send_data(stream_id, data)
            return
        try:  # framed once: the frames sent are the ones logged; a full log stops reading
            attached = self.phase is not Phase.DETACHED
            self.resumption.send_data(self.link, stream_id, data, attached, self._update_all)
        except ResumeRefused as refused:
            self._log_overflow(refused)

    def _log_overflow(self, refused: ResumeRefused) -> None:
        quiet.warning("log-overflow", "closing the session: %s", refused, extra=self.log_extra())
        self.resumption = None  # what follows is not logged: the session ends, no resume
        self.fail(CloseCode.POLICY_VIOLATION, str(refused))

    def flush(self) -> None:
        self.link.flush()

    def ids_exhausted(self, reason: str) -> None:
        self.goaway(reason)  # the open streams finish; the client reconnects

    def streams_idle(self) -> None:
        if self.phase is Phase.DRAINING and self.link.can_send:
            self.linger.then(self._close_idle, "going away")

    def _close_idle(self, reason: str) -> None:
        if self.phase is Phase.DRAINING and not len(self.table) and self.link.can_send:
            self.close(CloseCode.GOING_AWAY, reason)

    # -- the peer's frames ---------------------------------------------------------------

    def _event(self, event: Event) -> None:
        table = self.table
        if self.flows.took(event):  # a datagram, or news of a flow
            return
        if isinstance(event, DataReceived):
            table.deliver(event.stream_id, event.data)
        elif isinstance(event, CreditGranted):
            table.credit_granted(event.stream_id)
        elif isinstance(event, Reply):
            self.send(event.message)
        elif isinstance(event, StreamEnded):
            table.peer_ended(event.stream_id)
        elif isinstance(event, StreamRequested):
            self.dialer.request(event.stream_id, event.origin, event.target)
        elif isinstance(event, StreamAccepted):
            table.peer_accepted(event.stream_id)
        elif isinstance(event, StreamRefused):
            if self.phase is Phase.DRAINING and self.on_refused(self, event.stream_id):
                return  # refused because the peer goes away: opened on another session
            table.peer_refused(event.stream_id, event.reason)
        elif isinstance(event, StreamViolated):
            self.faults.stream_violation(event.stream_id, event.reason)
            table.cut_id(event.stream_id, Cut.VIOLATION, event.reason)
        elif isinstance(event, StreamReset):
            table.cut_id(event.stream_id, Cut.PEER_RESET, event.reason)
        elif isinstance(event, StreamLimited):
            table.limited(event.stream_id, event.reason)
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

    # -- closing ----------------------------------------------------------------------------

    def goaway(self, reason: str) -> None:
        """Announce that no new streams will be opened; open ones may finish."""
        if self.phase is Phase.OPEN and self.link.can_send:
            self.phase = Phase.DRAINING
            self.linger.sent()
            self.send(self.mux.goaway(reason))
            self.flush()
            if not len(self.table):
                self.linger.then(self._close_idle, reason)

    def reset_streams(self, cause: Cut, reason: str) -> int:
        """Reset every open stream, on both ends (RST to the peer too). Returns how many:
        a drain that ran out (:meth:`shutdown`), a detached session expired (:meth:`expire`)."""
        return self.table.reset_all(cause, reason)

    async def shutdown(self, reason: str, timeout: float) -> None:
        """GOAWAY, let open streams finish for up to ``timeout``, then close; bounded
        (drain.shutdown: the one stop sequence of both ends); safe to call twice.
        A detached session has nothing to drain over: it ends at once.
        """
        if self.phase is Phase.DETACHED:
            self.close(CloseCode.GOING_AWAY, reason)
        else:
            await shutdown(self, reason, timeout)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the WebSocket closing handshake; open streams are cut."""
        if not self.close_reason:
            self.close_reason = f"closed locally: {reason}" if reason else "closed locally"
        self._ending = True
        if self.phase is Phase.DETACHED:
            self._end(self.close_reason)
        else:
            self.link.close(code, reason)

    def fail(self, code: int, reason: str) -> None:
        """Close because of an error (protocol violation: 1002), with the reason."""
        self.close_reason = self.close_reason or reason
        self._ending = True
        self.link.fail(code, reason)

    def abort(self, reason: str) -> None:
        """Drop the connection at once (dead peer); the session ends with it."""
        self.close_reason = self.close_reason or reason
        self._ending = True
        if self.phase is Phase.DETACHED:
            self._end(self.close_reason)
        else:
            self.link.abort(reason)

    async def wait_closed(self) -> str:
        return await asyncio.shield(self.closed)
