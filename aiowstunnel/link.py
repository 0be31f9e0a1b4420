"""The WebSocket link: one TCP (or TLS) connection carrying a session's messages.

A :class:`Link` is the asyncio protocol of the connection. It drives websockets' sans-I/O
protocol for the handshake, pings, the close and every framing error; the data path's
BINARY frames are its :class:`~linkframes.Framer`'s, which cuts them out of the received
bytes and builds them into websockets' own send queue (and alone knows websockets'
internals); the link says when it starts and stops. It also keeps the connection alive
(protocol.md, Keepalive) and bounds what a peer may do to it before and after the upgrade.
Everything about streams is its owner's, reached through :class:`LinkOwner`, so that a
session can outlive one link and attach another.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Protocol, cast

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from . import resumeauth
from .addresses import format_peer
from .errors import HandshakeRefused, ProtocolViolation
from .handshake import HEADER_REFUSAL
from .keepalive import Keepalive, PingBudget
from .linkframes import Framer, write_chunks
from .logs import escape
from .settings import SessionSettings
from .wire import DEFAULT_MAX_DATA

#: websockets logs every connection opened and closed at INFO; our own lines say what
#: matters (docs/operations.md, Logging), so its logger only passes warnings.
ws_log = logging.getLogger("aiowstunnel.websockets")
ws_log.setLevel(logging.WARNING)

#: The longest Retry-After taken from a server, in seconds; a longer one is not a number
#: this client trusts (the backoff decides instead).
MAX_RETRY_AFTER = 3600


def retry_after(value: str | None) -> float | None:
    """A server's ``Retry-After`` in whole seconds, 1 to :data:`MAX_RETRY_AFTER`, else None
    (absent, an HTTP date, out of range: the peer's number is not used unchecked)."""
    digits = (value or "").strip()
    if not (digits.isascii() and digits.isdigit()):  # "²".isdigit(), yet int("²") fails
        return None
    seconds = int(digits)
    return float(seconds) if 1 <= seconds <= MAX_RETRY_AFTER else None


#: The WebSocket's write-buffer high-water mark: past it every stream stops reading.
WS_HIGH_WATER = 1024 * 1024
#: Seconds to wait for the peer's side of the WebSocket closing handshake.
CLOSE_TIMEOUT = 5.0

Message = bytes | bytearray | memoryview


#: the settings of a link built without any (tests, the library's defaults)
DEFAULT_SETTINGS = SessionSettings()


class LinkOwner(Protocol):
    """What a :class:`Link` tells the session it carries (passed down: no upward import).

    A callback may raise :class:`ProtocolViolation` only from :meth:`link_message`; the link
    then hands it to :meth:`link_violation`.
    """

    def link_request(self, request: Request) -> None:
        """Server side: the upgrade request; answer with accept() or reject()."""
        ...

    def link_open(self) -> None:
        """The upgrade is done (101 sent or received): messages may flow from now on."""
        ...

    def link_message(self, message: Message) -> None: ...

    def link_violation(self, exc: ProtocolViolation) -> None:
        """The peer broke the protocol: log it and fail the link."""
        ...

    def link_abuse(self, key: str, reason: str, drop: bool) -> None:
        """The peer is past a limit of the link (a ping flood)."""
        ...

    def link_paused(self, paused: bool) -> None:
        """The link's write buffer crossed its high-water mark (or drained below it)."""
        ...

    def link_closing(self) -> None:
        """The peer's close frame arrived: nothing can be sent any more."""
        ...

    def link_lost(self, reason: str) -> None:
        """The connection is gone (``reason``: why, for the logs)."""
        ...


class Link(asyncio.Protocol):
    """One WebSocket connection of a session.

    Args:
        ws: websockets' sans-I/O protocol, ClientProtocol or ServerProtocol, CONNECTING.
        owner: who the link's messages and events go to (can change: :attr:`owner`).
        settings: the session's settings; the link takes its keepalive (``ping_interval``,
            ``ping_timeout``: a peer silent for their sum is dead).
        max_data: the largest DATA payload in one frame.
    """

    def __init__(
        self,
        ws: ClientProtocol | ServerProtocol,
        owner: LinkOwner,
        settings: SessionSettings = DEFAULT_SETTINGS,
        *,
        max_data: int = DEFAULT_MAX_DATA,
    ) -> None:
        self.ws = ws
        self.owner = owner
        self.client_side = isinstance(ws, ClientProtocol)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.loop = asyncio.get_running_loop()
        # The client's: the 101 (or why there was none). The server's: done when the
        # request came (it went to the owner, and is not kept: its parsed headers would
        # be 3 KiB of every idle session).
        self.handshake: asyncio.Future[Response | None] = self.loop.create_future()
        # A failed handshake nobody awaits any more (timed out) is not an error to report.
        self.handshake.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.close_reason = ""
        self.opened = False  # the upgrade is done
        self.paused = False  # the write buffer is over WS_HIGH_WATER
        self.ended = False  # the peer's close arrived, or the connection is gone
        self.lost = False  # connection_lost came
        self._holding = False  # ServerLink, until the upgrade is answered
        self.keepalive = Keepalive(
            self.loop, settings.ping_interval, settings.ping_timeout, self._send_ping, self.abort
        )
        self._ping_budget = PingBudget()
        #: the quickest pong on this link, in seconds (time.monotonic): its path's round
        #: trip without queues, for the replay log's limit (resume.paced_limit)
        self.round_trip = math.inf
        self._ping: tuple[bytes, float] | None = None  # the last ping: payload, sent at
        self._fragments: list[Message] | None = None
        # The data path: after the handshake, BINARY frames are cut and built by the
        # framer (wsframe), everything else still goes through websockets.
        self.framer = Framer(ws, max_data=max_data)
        # Called for every DATA: the framer's own methods, not wrappers (a call less each).
        #: ``data`` as the frames of its DATA messages (:meth:`Framer.frame_data`)
        self.frame_data: Callable[[int, memoryview], list[list[bytes]]] = self.framer.frame_data
        #: send frames of :attr:`frame_data`, unless closing (:meth:`Framer.send_frames`)
        self.send_frames: Callable[[list[list[bytes]]], None] = self.framer.send_frames
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def can_send(self) -> bool:
        """Messages can still be sent (the WebSocket is open, no close begun)."""
        return self.ws.state is State.OPEN

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.transport.set_write_buffer_limits(high=WS_HIGH_WATER)
        self.framer.transport = self.transport
        self.peer = format_peer(transport.get_extra_info("peername"))

    def data_received(self, data: bytes | memoryview) -> None:
        self.keepalive.last_rx = self.loop.time()
        splitter = self.framer.splitter
        if splitter is None:
            data = bytes(data)  # a view of a reused buffer (tlsreads): websockets may keep it
            if self._holding:
                data = self._hold(data)
                if not data:
                    return
            self.ws.receive_data(data)
            self._process()
            self._start_data_path()
            return
        # No state check per item: websockets can only reach CLOSED through a close frame,
        # and the splitter hands that over as the last item, with the rest of the read.
        # Nor the handshake's (_message): the splitter starts only once the link is open.
        try:
            for is_binary, chunk in splitter.feed(data):
                if is_binary:
                    self.owner.link_message(chunk)  # the owner may change: a resume
                else:
                    self.ws.receive_data(cast(bytes, chunk))
                    self._process()
        except ProtocolViolation as exc:
            self.owner.link_violation(exc)
        self.flush()
        if self.paused:
            self._check_send_buffer()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._process()
        return None  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.close_reason:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed by peer"
        self.ended = self.lost = True
        self.keepalive.stop()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(self.close_reason))
        self.owner.link_lost(self.close_reason)

    def pause_writing(self) -> None:
        self.paused = True
        self.owner.link_paused(True)

    def resume_writing(self) -> None:
        self.paused = False
        self.owner.link_paused(False)

    def _hold(self, data: bytes) -> bytes:
        return data  # ServerLink holds what follows the request until it is answered

    def _check_send_buffer(self) -> None:
        pass  # ServerLink drops a peer that lets too much pile up

    # -- the client's side of the handshake ---------------------------------------------

    def send_request(self, request: Request) -> None:
        """Client side: send the upgrade request (see client.py for its headers); nothing
        when the server has answered before it was asked (a busy server's 503 comes as the
        connection opens): websockets has then closed our side, and the answer stands."""
        assert isinstance(self.ws, ClientProtocol)
        if self.handshake.done():
            return
        self.ws.send_request(request)
        self.flush()

    def _response(self, response: Response) -> None:
        exc = self.ws.handshake_exc
        if exc is None:
            self._open()
            self.handshake.set_result(response)
            return
        refused = response.headers.get(resumeauth.HEADER_REFUSED)
        if response.status_code != 101:
            body = (response.body or b"").decode("utf-8", "replace").strip()
            error: Exception = HandshakeRefused(
                response.status_code,
                body or response.reason_phrase,
                # only a busy server's: a proxy's 401 or 403 with one is no invitation
                retry_after(response.headers.get("Retry-After"))
                if response.status_code == 503
                else None,
                response.headers.get(HEADER_REFUSAL),
            )
            if refused is not None:  # a resume refused before the upgrade, with its code
                try:
                    error = resumeauth.refusal_from_header(
                        refused, body.removeprefix(f"{refused}: ")
                    )
                except ProtocolViolation as bad:
                    error = HandshakeRefused(response.status_code, str(bad))
        else:
            error = HandshakeRefused(response.status_code, f"bad upgrade response: {exc}")
        self.close_reason = str(error)
        if not self.handshake.done():
            self.handshake.set_exception(error)
        self._close_later()

    def _request(self, request: Request) -> None:
        if self.ws.handshake_exc is not None:
            self._fail_handshake(f"bad upgrade request: {self.ws.handshake_exc}")
            return
        self.handshake.set_result(None)
        self.owner.link_request(request)

    def _fail_handshake(self, reason: str) -> None:
        self.close_reason = reason
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(reason))
        self._close_later()

    def _open(self) -> None:
        self.opened = True
        # One ping at once, keepalive or not: its pong, on a link with nothing queued yet,
        # times the path's round trip (round_trip; the keepalive's pings refine it).
        self._send_ping()
        self.keepalive.start()
        self.owner.link_open()

    def _send_ping(self) -> bool:
        if self.ended or self.ws.state is not State.OPEN:
            return False
        payload = os.urandom(4)
        self.ws.send_ping(payload)
        self._ping = (payload, time.monotonic())
        self.flush()
        return True

    # -- incoming frames ------------------------------------------------------------------

    def _start_data_path(self) -> None:
        # Only at a message boundary (the framer checks that websockets has no frame
        # half-read).
        if (
            self.opened
            and not self.ended
            and self.ws.state is State.OPEN
            and self._fragments is None
        ):
            self.framer.start()

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
            self.owner.link_violation(exc)
        self.flush()
        transport = self.transport
        if self.ws.state is State.CLOSED and transport and not transport.is_closing():
            transport.close()

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
            self.ended = True
            self.keepalive.stop()
            self.owner.link_closing()  # nothing can be sent any more; link_lost follows
            self._close_later()
        elif opcode is Opcode.PONG:  # also proves liveness (Keepalive.last_rx)
            ping = self._ping
            if ping is not None and frame.data == ping[0]:
                self.round_trip = min(self.round_trip, time.monotonic() - ping[1])
                self._ping = None
        elif (
            opcode is Opcode.PING  # answered by websockets itself, counted here
            and not self._ping_budget.spend(self.loop.time())
            and self.ws.state is State.OPEN
        ):
            # No closing handshake: a flooder does not read, and waiting CLOSE_TIMEOUT for
            # it would mean reading (and discarding) its flood all that time.
            self.owner.link_abuse("ping-flood", PingBudget.reason(), drop=True)

    def _message(self, message: Message) -> None:
        if not self.opened:
            raise ProtocolViolation("frame before the handshake completed")
        self.owner.link_message(message)

    # -- outgoing ---------------------------------------------------------------------------

    # Sending is the framer's (linkframes); these are what the session and resumption call.

    def send_message(self, message: bytes) -> None:
        """Queue one binary message (sent at the next :meth:`flush`), unless closing."""
        self.framer.send_message(message)

    def send_data(self, stream_id: int, data: memoryview) -> None:
        """All of ``data`` as DATA messages of at most ``max_data``, framed by the framer."""
        framer = self.framer
        framer.send_frames(framer.frame_data(stream_id, data))

    def send_frame(self, header: bytes, payload: bytes | memoryview) -> None:
        """One message, ``header + payload`` (a DATAGRAM), framed as DATA is."""
        self.framer.send_frame(header, payload)

    def flush(self) -> None:
        """Write what websockets has queued (frames, and its EOF after a close)."""
        transport = self.transport
        # websockets' send queue is known to be empty (inline: this runs after every read)
        if transport is None or (self.framer.own and not self.ws.writes):
            return  # nothing queued: most calls, once DATA goes straight to the transport
        chunks = self.ws.data_to_send()
        if not chunks:
            return
        eof = chunks[-1] == b""  # websockets' SEND_EOF comes last, if at all
        if eof:
            chunks.pop()
        write_chunks(transport, chunks)  # nothing, after a bare EOF
        if eof:
            if transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
            else:
                transport.close()

    # -- closing ------------------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the WebSocket closing handshake (the peer has CLOSE_TIMEOUT to answer)."""
        self.framer.stop()
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self.flush()
        elif self.ws.state is State.CONNECTING and self.transport is not None:
            self.transport.close()
        self._close_later()

    def fail(self, code: int, reason: str) -> None:
        """Close because of an error (protocol violation: 1002), with the reason."""
        self.close_reason = self.close_reason or reason
        self.framer.stop()
        if self.ws.state is State.OPEN:
            self.ws.fail(code, reason)
            self.flush()
        self._close_later()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (dead peer, a limit, a stop that ran out)."""
        self.close_reason = self.close_reason or reason
        if self.transport is not None:
            self.transport.abort()

    def _close_later(self) -> None:
        # The peer has CLOSE_TIMEOUT to finish the closing handshake, then we cut.
        if self._close_timer is None and not self.lost:
            self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self._close_timeout)

    def _close_timeout(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()
