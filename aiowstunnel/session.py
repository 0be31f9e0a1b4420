"""One WebSocket connection carrying many TCP streams: the asyncio glue.

A :class:`Session` is the asyncio protocol of the WebSocket's TCP connection. It drives
websockets' sans-I/O protocol for framing, and :class:`wire.Mux` for streams and credit.
Every callback runs to completion without awaiting: a frame for one stream is handed to
that stream's transport at once, so one slow stream never stalls the others; credit
(protocol.md, Flow control) bounds what each stream may buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from . import wire, wsframe
from .addresses import format_peer, host_port
from .errors import HandshakeRefused, ProtocolViolation, describe, os_reason
from .limits import DEFAULT_MAX_VIOLATIONS, LOGGED_VIOLATIONS, QuietLog, SessionGuard, Slot
from .logs import escape, quote
from .resets import Cut, reset
from .stats import TunnelStats

log = logging.getLogger("aiowstunnel.session")
#: websockets logs every connection opened and closed at INFO; our own lines say what
#: matters (docs/operations.md, Logging), so its logger only passes warnings.
ws_log = logging.getLogger("aiowstunnel.websockets")
ws_log.setLevel(logging.WARNING)
#: Lines a peer can cause (its refusals, resets, violations) go through here: a flood of
#: frames costs a few lines per period, not one line per frame.
quiet = QuietLog(log)

#: Write-buffer high-water marks. The WebSocket's pauses every stream's reading; a TCP
#: stream's holds back credit (protocol.md: "credit is returned only as the socket accepts
#: the bytes"). Memory per stream is then bounded by window + STREAM_HIGH_WATER.
WS_HIGH_WATER = 1024 * 1024
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
#: Pings a peer may send within PING_PERIOD seconds (a keepalive sends one per interval).
PING_BURST = 64
PING_PERIOD = 10.0
#: Seconds to wait for the peer's side of the WebSocket closing handshake.
CLOSE_TIMEOUT = 5.0


class Dial(Protocol):
    """Opens the connection for a stream the peer asked for (the dialing side).

    ``target`` is the OPEN's own target (``""``: the session's); a dial that may not go
    there raises PermissionError with the rule set's words (destinations.py).
    """

    def __call__(
        self, factory: Callable[[], asyncio.Protocol], origin: str, target: str
    ) -> Awaitable[tuple[asyncio.BaseTransport, asyncio.Protocol]]: ...


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    DRAINING = "draining"  # GOAWAY sent or received: no new streams
    CLOSED = "closed"


class TcpStream(asyncio.BufferedProtocol):
    """One tunneled TCP connection: the asyncio protocol of its socket.

    It only forwards socket events to its session; the session decides everything. It is a
    BufferedProtocol so that the session chooses how much each read takes (the stream's
    credit) and where it lands (one buffer per thread, reused by every read).
    """

    def __init__(self, session: Session, stream_id: int | None = None) -> None:
        self.session = session
        self.stream_id = stream_id  # None until OPEN is sent (listener side)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        # read from the socket but not yet sent: a read that found no credit (before
        # OPEN_OK, or with the credit used up) or that the transport made despite a pause;
        # at most SPILL_READ, since reads are otherwise sized to the credit
        self.backlog: memoryview | None = None
        self.eof_pending = False  # socket EOF seen while the backlog still waits
        self.write_paused = False
        self.ungranted = 0  # bytes written while paused: credit owed to the peer
        self.reading = True
        self.at_eof = False  # the socket said EOF: it must never be read again
        self.accepted = False  # OPEN_OK exchanged: data may flow
        self.slot: Slot | None = None  # server side: this stream's place in the limits
        # for the "stream closed" debug line: payload bytes each way, and when it opened
        self.sent = 0
        self.received = 0
        self.opened_at = 0.0

    #: listener side: the target its OPEN carries ("" = the session's); a subclass that
    #: learns it from its application (socks.py) sets it before stream_connected
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
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=STREAM_HIGH_WATER)  # type: ignore[attr-defined]
        _no_delay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = format_peer(peer)
        if self.before_open is not None:
            self.before_open(transport)
        self.session.stream_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.session.read_buffer(self)

    def buffer_updated(self, nbytes: int) -> None:
        if not self.reading:
            self._repause()
        self.session.stream_data(self, self.session.read_view[:nbytes])

    def eof_received(self) -> bool:
        self.at_eof = True
        self.session.stream_eof(self)
        return True  # keep the write side open: half-close (protocol.md, FIN)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.stream_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.session.stream_writable(self)

    # helpers for the session

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


class Session(asyncio.Protocol):
    """One tunnel connection: handshake, then frames for many streams.

    Args:
        ws: websockets' sans-I/O protocol, ClientProtocol or ServerProtocol, CONNECTING.
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
        window: int = wire.DEFAULT_WINDOW,
        max_streams: int = wire.DEFAULT_MAX_STREAMS,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        on_request: Callable[[Session, Request], None] | None = None,
        name: str = "",
        guard: SessionGuard | None = None,
    ) -> None:
        self.ws = ws
        self.guard = guard
        # Server side, until the upgrade is answered: the request head as it arrives, then
        # what came after it, held unread (websockets would answer pings before the 101).
        self._head: bytearray | None = None if guard is None else bytearray()
        self._early: bytearray | None = None
        self._upgrade: Response | None = None  # websockets' 101, checked before accept()
        self.violations = 0
        self._pings = 0  # pings received since _ping_window began (see _count_ping)
        self._ping_window = 0.0
        self.max_violations = guard.max_violations if guard else DEFAULT_MAX_VIOLATIONS
        self.stats = stats
        self.client_side = isinstance(ws, ClientProtocol)
        self.mux = wire.Mux(self.client_side, window=window, max_streams=max_streams)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.on_request = on_request
        self.name = name
        #: server side: the client entry's name, beside ``name`` (the tunnel's) in logs
        self.client: str | None = None
        self.on_goaway: list[Callable[[Session], None]] = []  # the peer sent GOAWAY
        self.dial: Dial | None = None  # set once accepted, on the dialing side
        self.streams: dict[int, TcpStream] = {}
        self.phase = Phase.HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[Response | Request] = self.loop.create_future()
        # A failed handshake nobody awaits any more (timed out) is not an error to report.
        self.handshake.add_done_callback(_retrieve)
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.close_reason = ""
        self._ws_paused = False
        self._fragments: list[bytes] | None = None
        # The data path: after the handshake, BINARY frames are cut and built here
        # (wsframe), everything else still goes through websockets.
        self._splitter: wsframe.BinarySplitter | None = None
        self._mask_keys = wsframe.MaskKeys() if self.client_side else None
        # Both parts of the data path lean on two attributes of websockets' sans-I/O
        # protocol (its send queue and its reader's buffer); should a release rename them,
        # every frame simply goes through websockets, as before the data path existed.
        self._own_framing = isinstance(getattr(ws, "writes", None), list) and isinstance(
            getattr(getattr(ws, "reader", None), "buffer", None), bytearray
        )
        #: where every stream reads into; see read_buffer()
        self.read_view = _read_buffer()
        self._last_rx = self.loop.time()
        self._last_ping = 0.0
        self._ping_timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._dials: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()
        self.on_close: list[Callable[[Session], None]] = []
        self.cut_streams = 0  # streams the session's end cut (set in connection_lost)
        self.drain_cut = 0  # streams reset because the drain of shutdown() ran out

    # -- WebSocket transport callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop: not a subclass)
        transport.set_write_buffer_limits(high=WS_HIGH_WATER)  # type: ignore[attr-defined]
        _no_delay(transport)
        peername = transport.get_extra_info("peername")
        self.peer = format_peer(peername)
        if self.guard is not None:
            address = peername[0] if isinstance(peername, tuple) else str(peername)
            if not self.guard.admit(self.peer, address):
                self.abort("too many handshakes in progress")

    def data_received(self, data: bytes) -> None:
        self._last_rx = self.loop.time()
        splitter = self._splitter
        if splitter is None:
            if self._head is not None:
                data = self._hold_handshake(data)
                if not data:
                    return
            self.ws.receive_data(data)
            self._process()
            self._start_data_path()
            return
        # No state check per item: websockets can only reach CLOSED through a close frame,
        # and the splitter hands that over as the last item, with the rest of the read.
        try:
            for is_binary, chunk in splitter.feed(data):
                if is_binary:
                    self._message(chunk)
                else:
                    self.ws.receive_data(chunk)  # type: ignore[arg-type]
                    self._process()
        except ProtocolViolation as exc:
            self._violation(exc)
        self._flush()
        if self._ws_paused and self.guard is not None:
            self._check_send_buffer()

    def _hold_handshake(self, data: bytes) -> bytes:
        """Server side, before the answer: what websockets may parse now.

        websockets gets exactly the request head (it reads no body: a request ends at its
        blank line); what follows is held until accept() and dropped by reject(), so that
        nothing pipelined is answered before the 101 or the refusal. Head and held bytes
        together are bounded by max_handshake_bytes (431 past it).
        """
        assert self._head is not None and self.guard is not None
        budget = self.guard.max_handshake_bytes
        if self._early is not None:  # the request is in, its answer pending
            self._early += data
            if len(self._early) + len(self._head) > budget:
                self.guard.hit("handshake_bytes", self.peer)
                self.abort(f"more than {budget} bytes before the upgrade was answered")
            return b""
        head = self._head
        start = max(0, len(head) - 3)
        head += data
        end = head.find(b"\r\n\r\n", start)
        if end < 0 or end + 4 > budget:
            if len(head) > budget:
                self._head = None
                self.guard.hit("handshake_bytes", self.peer)
                self.reject(431, f"request head larger than {budget} bytes")
            return b""
        end += 4
        self._early = head[end:]
        del head[end:]
        return bytes(head)

    def _check_send_buffer(self) -> None:
        """Server side: a peer that lets more than max_send_buffer pile up is dropped."""
        assert self.guard is not None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.guard.max_send_buffer:
            self.guard.hit("send_buffer", self.peer)
            self.abort(f"peer does not read: over {self.guard.max_send_buffer} bytes queued")

    def _start_data_path(self) -> None:
        # Only at a frame boundary: websockets must have nothing half-read.
        if (
            self._own_framing
            and self.phase is Phase.OPEN
            and self.ws.state is State.OPEN
            and self._fragments is None
            and not self.ws.reader.buffer
        ):
            self._splitter = wsframe.BinarySplitter(
                expect_mask=not self.client_side, max_size=_max_size(self.ws)
            )

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._process()
        return None  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.close_reason:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed by peer"
        self.phase = Phase.CLOSED
        for timer in (self._ping_timer, self._deadline, self._close_timer):
            if timer is not None:
                timer.cancel()
        for task in self._dials:
            task.cancel()
        #: streams this session's end cut (reset toward their applications), for the
        #: "tunnel down" and "session ended" lines
        self.cut_streams = len(self.streams)
        for stream in list(self.streams.values()):
            self._cut(stream, Cut.SESSION_LOST, self.close_reason)
        self.streams.clear()
        self._idle.set()
        if self.guard is not None:
            self.guard.answered()
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(self.close_reason))
        if not self.closed.done():
            self.closed.set_result(self.close_reason)
        for callback in self.on_close:
            callback(self)

    def pause_writing(self) -> None:
        self._ws_paused = True
        for stream in self.streams.values():
            stream.set_reading(False)
        # Server side: what the peer sends (pings, frames earning an RST) is answered into
        # this buffer, so a peer that does not read is not read either until it drains.
        # Only one side does this: two sessions that both stopped reading would deadlock.
        if self.guard is not None and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._ws_paused = False
        for stream in self.streams.values():
            self._update_reading(stream)
        transport = self.transport
        if self.guard is not None and transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- handshake -----------------------------------------------------------------

    def send_request(self, request: Request) -> None:
        """Client side: send the upgrade request (see client.py for its headers)."""
        assert isinstance(self.ws, ClientProtocol)
        self.ws.send_request(request)
        self._flush()

    def accept(
        self, request: Request, dial: Dial | None, extra_headers: dict[str, str] | None = None
    ) -> None:
        """Server side: answer the request with 101 and start the session.

        Args:
            request: the upgrade request, as received.
            dial: opens the connection for each stream the peer opens; None refuses them.
            extra_headers: added to the 101 response (e.g. the address bound for LISTEN).
        """
        assert isinstance(self.ws, ServerProtocol)
        response = self._upgrade or self.ws.accept(request)
        for key, value in (extra_headers or {}).items():
            response.headers[key] = value
        self.ws.send_response(response)
        early, self._head, self._early = self._early, None, None
        if self.guard is not None:
            self.guard.answered()
        if response.status_code != 101:  # websockets found the upgrade itself invalid
            self._fail_handshake(f"invalid upgrade: {response.status_code}")
            self._flush()
            return
        self.dial = dial
        self._open()
        self._flush()
        self._process()
        if early:  # frames that came with the request, read only now
            self.data_received(bytes(early))

    def check_upgrade(self, request: Request) -> bool:
        """Server side: whether websockets accepts the upgrade itself; if not, its refusal
        (400) is sent. Called before anything is granted (a session, a LISTEN port)."""
        assert isinstance(self.ws, ServerProtocol)
        response = self.ws.accept(request)
        if response.status_code == 101:
            self._upgrade = response
            return True
        self.ws.send_response(response)
        self._head = self._early = None
        if self.guard is not None:
            self.guard.answered()
        self._fail_handshake(f"invalid upgrade: {response.status_code}")
        self._flush()
        return False

    def reject(self, status: int, reason: str) -> None:
        """Server side: refuse the upgrade with an HTTP status and a plain-text reason."""
        assert isinstance(self.ws, ServerProtocol)
        response = self.ws.reject(status, reason + "\n")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="aiowstunnel"'
        self.ws.send_response(response)
        self._head = self._early = None  # nothing after the request is read
        if self.guard is not None:
            self.guard.answered()
        self._fail_handshake(f"refused {status}: {reason}")
        self._flush()

    def _fail_handshake(self, reason: str) -> None:
        self.close_reason = reason
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(reason))
        self._close_later()

    def _open(self) -> None:
        self.phase = Phase.OPEN
        if self.ping_interval:
            self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)

    # -- keepalive (protocol.md, Keepalive) ----------------------------------------

    def _ping(self) -> None:
        if self.phase is Phase.CLOSED or self.ws.state is not State.OPEN:
            return
        now = self.loop.time()
        self.ws.send_ping(os.urandom(4))
        self._flush()
        self._last_ping = now
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.ping_timeout, self._ping_deadline, now)
        self._ping_timer = self.loop.call_later(self.ping_interval or 1.0, self._ping)

    def _ping_deadline(self, sent_at: float) -> None:
        # Any byte from the peer since the ping proves it alive: under load the pong may
        # queue behind data, which must not count as silence. A peer silent from time s is
        # caught by the first ping after s (<= s + interval) plus ping_timeout.
        self._deadline = None
        if self.phase is Phase.CLOSED:
            return
        if self._last_rx < sent_at:
            silent = self.loop.time() - self._last_rx
            self.abort(f"peer silent for {silent:.1f} s (no pong within {self.ping_timeout:g} s)")
        elif self._last_ping > sent_at:  # a later ping is still unanswered: watch it
            delay = self._last_ping + self.ping_timeout - self.loop.time()
            self._deadline = self.loop.call_later(
                max(0.0, delay), self._ping_deadline, self._last_ping
            )

    # -- incoming frames ------------------------------------------------------------

    def _process(self) -> None:
        try:
            for event in self.ws.events_received():
                if isinstance(event, Frame):
                    self._frame(event)
                elif isinstance(event, Request):
                    self._request(event)
                else:
                    self._response(event)
        except ProtocolViolation as exc:
            self._violation(exc)
        self._flush()
        if self.ws.state is State.CLOSED and self.transport and not self.transport.is_closing():
            self.transport.close()

    def _stop_data_path(self) -> None:
        # Closing: websockets takes the rest (after fail() it discards every frame).
        if self._splitter is not None:
            self._splitter.stop()

    def _violation(self, exc: ProtocolViolation) -> None:
        quiet.warning(
            "violation",
            "protocol violation: %s",
            escape(exc),
            extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
        )
        self.fail(CloseCode.PROTOCOL_ERROR, str(exc))

    def _stream_violation(self, stream_id: int, reason: str) -> None:
        """A stream-level violation (answered with RST): counted; the first few logged;
        past max_violations the session closes with 1002."""
        self.violations += 1
        if self.violations <= LOGGED_VIOLATIONS:
            more = " (further ones are counted, not logged)" if (
                self.violations == LOGGED_VIOLATIONS
            ) else ""
            quiet.warning(
                "stream-violation",
                "stream %d: protocol violation: %s%s",
                stream_id,
                escape(reason),
                more,
                extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
            )
        if self.violations >= self.max_violations and self.ws.state is State.OPEN:
            self._fail_abuse("violations", f"too many protocol violations ({self.violations})")

    def _request(self, request: Request) -> None:
        if self.ws.handshake_exc is not None or self.on_request is None:
            self._fail_handshake(f"bad upgrade request: {self.ws.handshake_exc}")
            return
        self.handshake.set_result(request)
        self.on_request(self, request)

    def _response(self, response: Response) -> None:
        exc = self.ws.handshake_exc
        if exc is None:
            self._open()
            self.handshake.set_result(response)
            return
        if response.status_code != 101:
            body = (response.body or b"").decode("utf-8", "replace").strip()
            error: Exception = HandshakeRefused(
                response.status_code, body or response.reason_phrase
            )
        else:
            error = HandshakeRefused(response.status_code, f"bad upgrade response: {exc}")
        self.close_reason = str(error)
        if not self.handshake.done():
            self.handshake.set_exception(error)
        self._close_later()

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY:
            if frame.fin:
                self._message(frame.data)
            else:
                self._fragments = [frame.data]
        elif opcode is Opcode.CONT:
            if self._fragments is None:
                return  # websockets already failed the connection for this
            self._fragments.append(frame.data)
            if frame.fin:
                message, self._fragments = b"".join(self._fragments), None
                self._message(message)
        elif opcode is Opcode.TEXT:
            raise ProtocolViolation("text message: aiowstunnel.v1 uses binary messages only")
        elif opcode is Opcode.CLOSE:
            rcvd = self.ws.close_rcvd
            said = f"closed by peer: {rcvd.code} {escape(rcvd.reason)}" if rcvd else ""
            self.close_reason = self.close_reason or said.strip() or "closed by peer"
            self.phase = Phase.CLOSED  # nothing can be sent any more; connection_lost cleans up
            self._close_later()
        elif opcode is Opcode.PING:
            self._count_ping()
        # PING is answered by websockets itself; PONG only proves liveness (_last_rx).

    def _count_ping(self) -> None:
        """A peer's pings are answered by websockets as they are parsed: a flood of them
        costs a PONG each and the CPU to make it, whoever else waits (docs/reliability.md,
        Limits). A keepalive needs one per ping_interval; more than PING_BURST within
        PING_PERIOD seconds is a violation: 1002, and the connection is dropped."""
        now = self.loop.time()
        if now - self._ping_window >= PING_PERIOD:
            self._ping_window, self._pings = now, 0
        self._pings += 1
        if self._pings > PING_BURST and self.ws.state is State.OPEN:
            reason = f"ping flood: more than {PING_BURST} pings in {PING_PERIOD:g} s"
            # No closing handshake: a flooder does not read, and waiting CLOSE_TIMEOUT for
            # it would mean reading (and discarding) its flood all that time.
            self._fail_abuse("ping-flood", reason, drop=True)

    def _fail_abuse(self, key: str, reason: str, drop: bool = False) -> None:
        """Close with 1002 for a peer past a violation limit (counted as the
        ``violations`` limit hit, logged rate-limited); ``drop``: without waiting for the
        closing handshake."""
        if self.guard is not None:
            self.guard.hit("violations", self.peer)
        quiet.warning(
            key,
            "closing the session: %s",
            reason,
            extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
        )
        self.fail(CloseCode.PROTOCOL_ERROR, reason)
        if drop:
            self.abort(reason)

    def _message(self, message: bytes | bytearray) -> None:
        if self.phase is Phase.HANDSHAKE:
            raise ProtocolViolation("frame before the handshake completed")
        data = self.mux.receive_data(message)
        if data is not None:
            self._deliver_data(*data)
            return
        for event in self.mux.receive(message):
            self._event(event)
        for answer in self.mux.take_outbox():
            self._send(answer)

    def _event(self, event: wire.Event) -> None:
        if isinstance(event, wire.DataReceived):
            self._deliver_data(event.stream_id, event.data)
        elif isinstance(event, wire.CreditGranted):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._send_backlog(stream)
        elif isinstance(event, wire.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.transport is not None:
                if event.stream_id in self.mux.streams:
                    stream.transport.write_eof()  # after what is buffered (asyncio)
                else:
                    self._finish(stream)
        elif isinstance(event, wire.StreamRequested):
            self._stream_requested(event.stream_id, event.origin, event.target)
        elif isinstance(event, wire.StreamAccepted):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.accepted = True
                stream.opened()
                self._send_backlog(stream)  # early data or EOF, if any; resumes reading
        elif isinstance(event, wire.StreamRefused):
            stream = self.streams.get(event.stream_id)
            # The peer's words are a log field, never a label: labels are a fixed set.
            self._count_open_failure("peer_refused")
            quiet.warning(
                "refused",
                "stream %d from %s refused by the other side: %s",
                event.stream_id,
                stream.peer if stream else "?",
                quote(event.reason),
                extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
            )
            if stream is not None and stream.refused(event.reason):
                self._forget(stream, f"refused: {event.reason}")
            elif stream is not None:
                self._cut(stream, Cut.OPEN_FAILED, event.reason)
        elif isinstance(event, wire.StreamReset | wire.StreamViolated):
            stream = self.streams.get(event.stream_id)
            if isinstance(event, wire.StreamViolated):
                self._stream_violation(event.stream_id, event.reason)
            if stream is not None:
                cause = Cut.VIOLATION if isinstance(event, wire.StreamViolated) else Cut.PEER_RESET
                self._cut(stream, cause, event.reason)
        elif isinstance(event, wire.StreamLimited):
            self._count_open_failure("stream_limit")
            log.debug(
                "stream %d refused: %s",
                event.stream_id,
                event.reason,
                extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
            )
        elif isinstance(event, wire.GoAwayReceived):
            if self.phase is Phase.DRAINING:
                return  # said once is enough
            log.info(
                "peer going away: %s",
                quote(event.reason),
                extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
            )
            self.phase = Phase.DRAINING
            self.close_reason = f"peer going away: {escape(event.reason)}"
            for callback in self.on_goaway:
                callback(self)
            if not self.streams:
                self.close(CloseCode.GOING_AWAY, "going away")

    def _deliver_data(self, stream_id: int, data: bytes | memoryview) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.transport is None:
            return
        n = len(data)
        self.stats.received_bytes += n
        stream.received += n
        stream.transport.write(data)
        if stream.write_paused:
            stream.ungranted += n
        else:
            self._grant(stream_id, n)

    def _grant(self, stream_id: int, n: int) -> None:
        update = self.mux.grant(stream_id, n)
        if update is not None:
            self._send(update)

    # -- streams the peer opens (the dialing side) -----------------------------------

    def _stream_requested(self, stream_id: int, origin: str, target: str = "") -> None:
        if self.dial is None or self.phase is not Phase.OPEN:
            reason = "this side does not accept streams" if self.dial is None else "going away"
            self._send(self.mux.refuse_stream(stream_id, reason))
            return
        slot = None
        if self.guard is not None:
            slot = self.guard.stream_slot(self.peer)
            if slot is None:
                self._count_open_failure("stream_limit")
                self._send(self.mux.refuse_stream(stream_id, "server stream limit reached"))
                return
        task = self.loop.create_task(self._dial(stream_id, origin, target, slot))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _dial(
        self, stream_id: int, origin: str, target: str = "", slot: Slot | None = None
    ) -> None:
        assert self.dial is not None
        stream = TcpStream(self, stream_id)
        stream.slot = slot
        try:
            await self.dial(lambda: stream, origin, target)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = describe(exc)
            label = _failure_label(exc)
            self._count_open_failure(label)
            # The origin is the peer's claim: its own field, escaped; PEER= stays the socket.
            quiet.warning(
                ("dial", label),
                "stream %d%s%s not opened: %s",
                stream_id,
                f" for {quote(origin)}" if origin else "",
                f" to {quote(target)}" if target else "",
                reason,
                extra={
                    "client": self.client,
                    "tunnel": self.name,
                    "peer": self.peer,
                    "origin": escape(origin),
                },
            )
            if stream_id in self.mux.streams:
                # The cause word first (protocol.md, OPEN_FAIL), so that the opener can
                # tell its application why (a SOCKS reply code) without parsing prose.
                self._send(self.mux.refuse_stream(stream_id, f"{label}: {reason}"))
                self._flush()
        finally:
            if self.streams.get(stream_id) is not stream and stream.slot is not None:
                stream.slot.release()  # never registered: _forget will not see it

    # -- stream callbacks (from TcpStream) ---------------------------------------

    def stream_connected(self, stream: TcpStream) -> None:
        if self.phase is not Phase.OPEN:
            self._count_open_failure("tunnel_down")
            self._cut(stream, Cut.TUNNEL_DOWN, "the tunnel is going down")
            return
        if stream.stream_id is None:  # listener side: ask the peer to dial
            if self.guard is not None and stream.slot is None:  # (socks.py takes it earlier)
                stream.slot = self.guard.stream_slot(stream.peer)
                if stream.slot is None:
                    self._count_open_failure("stream_limit")
                    assert stream.transport is not None
                    stream.transport.abort()
                    return
            try:
                stream.stream_id, message = self.mux.open_stream(stream.peer, stream.target)
            except ProtocolViolation as exc:  # stream ids exhausted (2**31 streams)
                self._count_open_failure("tunnel_down")
                log.warning(
                    "cannot open a stream for %s: %s; starting a new session",
                    stream.peer,
                    exc,
                    extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
                )
                self._cut(stream, Cut.OPEN_FAILED, str(exc))
                self.goaway(str(exc))  # the open streams finish; the client reconnects
                return
            self._send(message)
        else:  # dialing side: the connection is up, tell the opener
            if stream.stream_id not in self.mux.streams:  # reset while we dialed
                self._cut(stream, Cut.PEER_RESET, "the other side gave up while we dialed")
                return
            self._send(self.mux.accept_stream(stream.stream_id))
            stream.accepted = True
        self.streams[stream.stream_id] = stream
        self._idle.clear()
        self.stats.streams_opened += 1
        self.stats.streams_active += 1
        stream.opened_at = self.loop.time()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "stream %d opened: %s %s",
                stream.stream_id,
                "to" if stream.accepted else "from",  # dialing side: accepted already
                stream.peer,
                extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
            )
        self._update_reading(stream)
        self._flush()

    def read_buffer(self, stream: TcpStream) -> memoryview:
        """Where ``stream``'s next read goes: the thread's read buffer, cut to its credit.

        A read never takes more than can be sent at once, so nothing read waits in memory
        for credit; memory under load stays at the windows in flight, not at one read per
        stream on top (docs/performance.md, memory).
        """
        sid = stream.stream_id
        credit = 0
        # A paused stream reads only when its transport dropped the pause: that read must
        # not take the stream's credit, since the session paused it for a reason (no OPEN_OK
        # yet, a backlog, the WebSocket's buffer full).
        if sid is not None and stream.reading and stream.accepted and stream.backlog is None:
            credit = self.mux.credit(sid)
        if credit <= 0:
            return self.read_view[:SPILL_READ]
        return self.read_view[: min(credit, READ_SIZE)]

    def stream_data(self, stream: TcpStream, data: memoryview) -> None:
        """``data`` is a view of :attr:`read_view`: valid only until this returns."""
        sid = stream.stream_id
        if sid is None or sid not in self.mux.streams:
            return
        if stream.backlog is not None:  # rare: reading is paused while a backlog waits
            stream.backlog = memoryview(bytes(stream.backlog) + data)
            self._send_backlog(stream)
            return
        if not stream.accepted:  # a read before OPEN_OK (the pause was dropped): it waits
            stream.backlog = memoryview(bytes(data))  # (it outlives the buffer)
            self._update_reading(stream)
            return
        n = self._send_data(sid, data)
        self.stats.sent_bytes += n
        stream.sent += n
        if n < len(data):  # what credit did not cover waits, and outlives the buffer
            stream.backlog = memoryview(bytes(data[n:]))
            self._update_reading(stream)
        self._flush()

    def _send_backlog(self, stream: TcpStream) -> None:
        """Send what credit allows, then FIN if EOF waits; set reading to match.

        Before OPEN_OK nothing is sent: reading is paused until then, but a transport that
        dropped that pause (TcpStream._repause) may have delivered one read, which waits here.
        """
        sid = stream.stream_id
        backlog = stream.backlog
        if not stream.accepted:
            self._update_reading(stream)
            return
        if backlog is not None and sid is not None and sid in self.mux.streams:
            n = self._send_data(sid, backlog)
            self.stats.sent_bytes += n
            stream.sent += n
            stream.backlog = backlog[n:] if n < len(backlog) else None
        if stream.backlog is None and stream.eof_pending:
            stream.eof_pending = False
            self._send_fin(stream)
        self._update_reading(stream)
        self._flush()

    def stream_eof(self, stream: TcpStream) -> None:
        if stream.backlog is not None or not stream.accepted:
            stream.eof_pending = True
            return
        self._send_fin(stream)
        self._flush()

    def _send_fin(self, stream: TcpStream) -> None:
        sid = stream.stream_id
        if sid is None or sid not in self.mux.streams:
            return
        self._send(self.mux.send_fin(sid))
        if sid not in self.mux.streams:  # both sides finished
            self._finish(stream)

    def stream_writable(self, stream: TcpStream) -> None:
        if stream.ungranted and stream.stream_id is not None:
            n, stream.ungranted = stream.ungranted, 0
            self._grant(stream.stream_id, n)
            self._flush()

    def stream_lost(self, stream: TcpStream, exc: Exception | None) -> None:
        sid = stream.stream_id
        how = ""
        if sid is not None and sid in self.mux.streams and self.phase is not Phase.CLOSED:
            reason = f"connection lost: {describe(exc)}" if exc else "connection closed"
            how = f"ended here ({reason}), RST sent"
            self._send(self.mux.reset_stream(sid, reason))
            self._flush()
        self._forget(stream, how)

    def _update_reading(self, stream: TcpStream) -> None:
        stream.set_reading(
            stream.accepted
            and stream.backlog is None
            and not self._ws_paused
            and self.phase is not Phase.CLOSED
        )

    def _finish(self, stream: TcpStream) -> None:
        """Both directions ended cleanly: close once the socket's buffer is written."""
        if stream.transport is not None:
            stream.transport.close()
        self._forget(stream)

    def _cut(self, stream: TcpStream, cause: Cut, detail: str) -> None:
        """A broken stream: reset its socket (the application sees ECONNRESET, never a
        clean EOF), count it by cause, forget it."""
        if stream.transport is not None:
            reset(stream.transport)
        self.stats.stream_resets[cause.value] += 1
        self._forget(stream, f"reset ({cause}): {detail}" if detail else f"reset ({cause})")

    def reset_streams(self, cause: Cut, reason: str) -> int:
        """Reset every open stream, on both ends (RST to the peer too). Returns how many.

        For a drain that ran out (:meth:`shutdown`), and the hook for a stream kept for
        resumption whose session did not come back in time (:attr:`Cut.EXPIRED`).
        """
        streams = list(self.streams.values())
        for stream in streams:
            sid = stream.stream_id
            if sid is not None and sid in self.mux.streams:
                self._send(self.mux.reset_stream(sid, reason))
            self._cut(stream, cause, reason)
        self._flush()
        return len(streams)

    def _forget(self, stream: TcpStream, how: str = "") -> None:
        """Drop ``stream`` from the session; ``how`` says why it ended, "" if cleanly."""
        if stream.slot is not None:
            stream.slot.release()
        sid = stream.stream_id
        if sid is not None and self.streams.get(sid) is stream:
            del self.streams[sid]
            self.stats.streams_active -= 1
            self.mux.streams.pop(sid, None)
            if log.isEnabledFor(logging.DEBUG):  # one line per stream, never per chunk
                log.debug(
                    "stream %d closed: %s, %d bytes sent, %d received, %.1f s%s",
                    sid,
                    stream.peer,
                    stream.sent,
                    stream.received,
                    self.loop.time() - stream.opened_at,
                    f"; {how}" if how else "",
                    extra={"client": self.client, "tunnel": self.name, "peer": self.peer},
                )
            if not self.streams:
                self._idle.set()
                if self.phase is Phase.DRAINING and self.ws.state is State.OPEN:
                    self.close(CloseCode.GOING_AWAY, "going away")

    def _count_open_failure(self, reason: str) -> None:
        self.stats.stream_open_failures[reason] += 1

    # -- outgoing --------------------------------------------------------------------

    def _send(self, message: bytes) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_binary(message)

    def _send_data(self, stream_id: int, data: memoryview) -> int:
        """DATA for as much of ``data`` as credit allows, framed here; returns the count.

        The frames join websockets' own queue (``ws.writes``), so they keep their order
        with pings and the close; a single frame with nothing queued before it goes
        straight to the transport, which keeps that order too. Once the WebSocket is
        closing nothing is sent.
        """
        n = self.mux.reserve_data(stream_id, len(data))
        if n and self.ws.state is State.OPEN:
            header = wire.data_header(stream_id)
            step = self.mux.max_data
            if not self._own_framing:
                for i in range(0, n, step):
                    self.ws.send_binary(header + data[i : min(i + step, n)])
                return n
            keys = self._mask_keys
            transport = self.transport
            if n <= step and not self.ws.writes and transport is not None:
                # The rtt case: one frame, with no round through the queue and _flush.
                key = keys.next() if keys is not None else None
                _write(transport, wsframe.binary_frame(header, data[:n], key))
                return n
            writes = self.ws.writes
            for i in range(0, n, step):
                key = keys.next() if keys is not None else None
                writes.extend(wsframe.binary_frame(header, data[i : min(i + step, n)], key))
        return n

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or (self._own_framing and not self.ws.writes):
            return  # nothing queued: most calls, once DATA goes straight to the transport
        chunks = self.ws.data_to_send()
        if not chunks:
            return
        eof = chunks[-1] == b""  # websockets' SEND_EOF comes last, if at all
        if eof:
            chunks.pop()
        if chunks:
            _write(transport, chunks)
        if eof:
            if transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
            else:
                transport.close()

    # -- closing ---------------------------------------------------------------------

    def goaway(self, reason: str) -> None:
        """Announce that no new streams will be opened; open ones may finish."""
        if self.phase is Phase.OPEN and self.ws.state is State.OPEN:
            self.phase = Phase.DRAINING
            self._send(self.mux.goaway(reason))
            self._flush()
            if not self.streams:
                self.close(CloseCode.GOING_AWAY, reason)

    async def shutdown(self, reason: str, timeout: float) -> None:
        """GOAWAY, let open streams finish for up to ``timeout``, then close; bounded.

        The one stop sequence of both ends (protocol.md, GOAWAY); safe to call twice.
        """
        self.goaway(reason)
        if not await self.drain(timeout) and self.streams:
            self.drain_cut += self.reset_streams(
                Cut.DRAIN_TIMEOUT, f"{reason}: not finished within {timeout:g} s"
            )
        self.close(CloseCode.GOING_AWAY, reason)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT)
        if not self.closed.done() and self.transport is not None:
            self.transport.abort()

    async def drain(self, timeout: float) -> bool:
        """Wait until no stream is open, at most ``timeout`` seconds. True if drained."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the WebSocket closing handshake; open streams are cut."""
        if not self.close_reason:
            self.close_reason = f"closed locally: {reason}" if reason else "closed locally"
        self._stop_data_path()
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._flush()
        elif self.ws.state is State.CONNECTING and self.transport is not None:
            self.transport.close()
        self._close_later()

    def fail(self, code: int, reason: str) -> None:
        """Close because of an error (protocol violation: 1002), with the reason."""
        self.close_reason = self.close_reason or reason
        self._stop_data_path()
        if self.ws.state is State.OPEN:
            self.ws.fail(code, reason)
            self._flush()
        self._close_later()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (dead peer)."""
        self.close_reason = self.close_reason or reason
        if self.transport is not None:
            self.transport.abort()

    def _close_later(self) -> None:
        # The peer has CLOSE_TIMEOUT to finish the closing handshake, then we cut.
        if self._close_timer is None and not self.closed.done():
            self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self._close_timeout)

    def _close_timeout(self) -> None:
        if self.transport is not None and not self.closed.done():
            self.transport.abort()

    async def wait_closed(self) -> str:
        return await asyncio.shield(self.closed)


def _write(transport: asyncio.Transport, chunks: list[bytes]) -> None:
    """Write ``chunks`` in one call, unless the transport is closing. One write per flush,
    not one per frame: a burst of WINDOW frames would otherwise cost a send() each
    (writelines uses sendmsg() from Python 3.12)."""
    if transport.is_closing():
        return
    if len(chunks) == 1:
        transport.write(chunks[0])
    else:
        transport.writelines(chunks)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY: a 9-byte WINDOW frame must leave now, not after a delayed ACK (Nagle
    would hold it ~40 ms and starve the sender). asyncio sets it on TCP transports; uvloop
    does not."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_thread_buffers = threading.local()


def _read_buffer() -> memoryview:
    """The buffer the streams of this thread's event loop read into, READ_SIZE bytes.

    One per thread, not per session: every read is consumed within its own callback
    (get_buffer, recv_into, buffer_updated run back to back), so streams and sessions of
    one loop can share it, and a server with many sessions keeps one buffer resident, not
    one per session.
    """
    view = getattr(_thread_buffers, "view", None)
    if view is None:
        view = _thread_buffers.view = memoryview(bytearray(READ_SIZE))
    return view


def _max_size(ws: ClientProtocol | ServerProtocol) -> int | None:
    """The largest message the WebSocket accepts (the attribute's name changed in 16)."""
    size = getattr(ws, "max_message_size", getattr(ws, "max_size", None))
    return size if isinstance(size, int) else None


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def tcp_dialer(host: str, port: int, timeout: float) -> Dial:
    """A :class:`Dial` that connects to one fixed TCP target, with a timeout; an OPEN that
    names a target of its own is refused (destinations.py checks those)."""
    where = host_port(host, port)

    async def dial(
        factory: Callable[[], asyncio.Protocol], origin: str, target: str = ""
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        if target:
            raise PermissionError(f"{target}: this side dials only {where}")
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"connect to {where} timed out after {timeout:g} s") from None
        except OSError as exc:
            # asyncio's own text ("Connect call failed (...)") hides the errno's meaning.
            raise type(exc)(exc.errno, f"connect to {where} failed: {os_reason(exc)}") from exc

    return dial


def _failure_label(exc: BaseException) -> str:
    """A short, bounded metric label for why a dial failed."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, PermissionError):
        return "forbidden"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, OSError):
        return "unreachable"
    return "error"
