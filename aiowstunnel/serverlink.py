"""The server's side of a WebSocket link: the upgrade and the limits a peer meets.

A :class:`ServerLink` holds what a client sends until its upgrade is answered (the
request head goes to websockets, the rest waits, bounded), answers it (101, websockets'
own 400, or a refusal with a reason), and keeps a peer that does not read from piling up
answers: it stops reading such a peer, and drops it past max_send_buffer.
"""

from __future__ import annotations

import asyncio

from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from .addresses import peer_host
from .handshake import HEADER_REFUSAL
from .limits import SessionGuard, Slot
from .link import DEFAULT_SETTINGS, Link, LinkOwner
from .settings import SessionSettings
from .wire import DEFAULT_MAX_DATA

#: A connection over a handshake limit is told to come back in this many seconds (503,
#: Retry-After): the client waits that, jittered, instead of a failure's growing backoff.
BUSY_RETRY_AFTER = 1
#: ... and has this long to send its request, read the answer and close before it is
#: dropped.
BUSY_LINGER = 1.0
BUSY_REASON = "too many handshakes in progress"


class ServerLink(Link):
    """A :class:`~link.Link` on the server's side of the upgrade.

    Args:
        guard: the server's limits as this connection sees them (handshakes in progress,
            the handshake's size, the send buffer); None for none.
        (the rest as :class:`~link.Link`)
    """

    def __init__(
        self,
        ws: ServerProtocol,
        owner: LinkOwner,
        settings: SessionSettings = DEFAULT_SETTINGS,
        *,
        guard: SessionGuard | None = None,
        max_data: int = DEFAULT_MAX_DATA,
    ) -> None:
        super().__init__(ws, owner, settings, max_data=max_data)
        self.guard = guard
        # Until the upgrade is answered: the request head as it arrives, then what came
        # after it, held unread (websockets would answer pings before the 101).
        self._holding = guard is not None
        self._head: bytearray | None = bytearray() if guard is not None else None
        self._early: bytearray | None = None
        self._upgrade: Response | None = None  # websockets' 101, checked before accept()
        self._busy: Slot | None = None  # while told to come back later (a 503, lingering)
        self._busy_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.guard is not None:
            address = peer_host(transport.get_extra_info("peername"))
            if not self.guard.admit(self.peer, address):
                self._refuse_busy()

    def _refuse_busy(self) -> None:
        """Over the per-address limit: a 503 with Retry-After, not an RST, so that a client
        turned away in a burst (one daemon's many tunnels after a server restart) comes
        back in a second rather than after a failure's growing backoff. The answer goes out
        with the request's first bytes (a client of an older version wrote its request
        after an answer that came first, and failed); the connection keeps its handshake
        slot and has BUSY_LINGER from now to send them, read the answer and close. Past the
        busy slots (and over the total limit, where it holds no slot) it is dropped with an
        RST."""
        assert self.guard is not None
        self._busy = self.guard.busy_slot()
        if self._busy is None:
            self.abort(BUSY_REASON)
            return
        self._busy_timer = self.loop.call_later(BUSY_LINGER, self.abort, BUSY_REASON)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.guard is not None:
            self.guard.answered()
        if self._busy is not None:
            self._busy.release()
        if self._busy_timer is not None:
            self._busy_timer.cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        # What the peer sends (pings, frames earning an RST) is answered into this buffer,
        # so a peer that does not read is not read either until it drains. Only the server
        # does this: two sides that both stopped reading would deadlock.
        if self.guard is not None and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        transport = self.transport
        if self.guard is not None and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _hold(self, data: bytes) -> bytes:
        """Before the answer: what websockets may parse now.

        websockets gets exactly the request head (it reads no body: a request ends at its
        blank line); what follows is held until accept() and dropped by reject(), so that
        nothing pipelined is answered before the 101 or the refusal. Head and held bytes
        together are bounded by max_handshake_bytes (431 past it).
        """
        assert self._head is not None and self.guard is not None
        if self._busy is not None:  # the request's first bytes: the answer, nothing parsed
            retry = {"Retry-After": str(BUSY_RETRY_AFTER)}
            self.reject(
                503, f"{BUSY_REASON}: retry later", retry, False, label="too_many_handshakes"
            )
            return b""  # and what follows goes to websockets, which discards it now
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
                self._head, self._holding = None, False
                self.guard.hit("handshake_bytes", self.peer)
                self.reject(
                    431, f"request head larger than {budget} bytes", label="handshake_too_large"
                )
            return b""
        end += 4
        self._early = head[end:]
        del head[end:]
        return bytes(head)

    def accept(self, request: Request, extra_headers: dict[str, str] | None = None) -> bool:
        """Answer the request with 101 and open the link (False: websockets
        found the upgrade itself invalid, and its refusal was sent)."""
        assert isinstance(self.ws, ServerProtocol)
        response = self._upgrade or self.ws.accept(request)
        self._upgrade = None  # sent now; an idle session need not keep its headers
        for key, value in (extra_headers or {}).items():
            response.headers[key] = value
        self.ws.send_response(response)
        # websockets' parser keeps the request as a local of its generator for the
        # connection's life: its headers, answered now, would be 3 KiB of each idle session.
        request.headers = Headers()
        early, self._head, self._early = self._early, None, None
        self._holding = False
        if self.guard is not None:
            if response.status_code == 101:
                self.guard.settled()
            else:
                self.guard.answered()
        if response.status_code != 101:
            self._fail_handshake(f"invalid upgrade: {response.status_code}")
            self.flush()
            return False
        self._open()
        self.flush()
        self._process()
        if early:  # frames that came with the request, read only now
            self.data_received(bytes(early))
        return True

    def check_upgrade(self, request: Request) -> bool:
        """Whether websockets accepts the upgrade itself; if not, its refusal
        (400) is sent. Called before anything is granted (a session, a LISTEN port)."""
        assert isinstance(self.ws, ServerProtocol)
        response = self.ws.accept(request)
        if response.status_code == 101:
            self._upgrade = response
            return True
        response.headers[HEADER_REFUSAL] = "bad_upgrade"
        self.ws.send_response(response)
        self._head = self._early = None
        self._holding = False
        if self.guard is not None:
            self.guard.answered()
        self._fail_handshake(f"invalid upgrade: {response.status_code}")
        self.flush()
        return False

    def reject(
        self,
        status: int,
        reason: str,
        extra_headers: dict[str, str] | None = None,
        release: bool = True,
        *,
        label: str,
    ) -> None:
        """Refuse the upgrade with an HTTP status and a plain-text reason; ``label`` (the
        ``reason`` it counts under) goes in X-Aiowstunnel-Refusal; ``release``: its
        handshake slots go back now (else with the connection)."""
        assert isinstance(self.ws, ServerProtocol)
        response = self.ws.reject(status, reason + "\n")
        response.headers[HEADER_REFUSAL] = label
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="aiowstunnel"'
        for key, value in (extra_headers or {}).items():
            response.headers[key] = value
        self.ws.send_response(response)
        self._head = self._early = None  # nothing after the request is read
        self._holding = False
        if self.guard is not None and release:
            self.guard.answered()
        self._fail_handshake(f"refused {status}: {reason}")
        self.flush()

    def _check_send_buffer(self) -> None:
        """A peer that lets more than max_send_buffer pile up is dropped."""
        transport = self.transport
        if self.guard is None or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.guard.max_send_buffer:
            self.guard.hit("send_buffer", self.peer)
            self.abort(f"peer does not read: over {self.guard.max_send_buffer} bytes queued")
