"""A datagram flow's record and its session as the flow table sees it (udp.py).

:class:`Flow` is what one flow keeps on this side: its stream id, where its datagrams go
(the listening side's source and socket, or the dialing side's own socket, with what came
while it was made), its stream slot and its counts. :class:`FlowHost` is what
:class:`~udp.FlowTable` reads of the session it belongs to, typed here so that the table
needs no upward import.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .limits import SessionGuard, Slot
from .link import Link
from .mux import Mux
from .settings import SessionSettings
from .stats import TunnelStats
from .udpsocket import SourceAddress, UdpEndpoint


class FlowHost(Protocol):
    """What a :class:`FlowTable` needs from its session (passed down: no upward import)."""

    mux: Mux
    guard: SessionGuard | None  # server side: the limits each flow takes a stream slot in
    settings: SessionSettings
    link: Link  # datagrams go straight to it: never logged for a resume

    @property
    def stats(self) -> TunnelStats: ...

    @property
    def accepting(self) -> bool: ...  # new flows may open (open, not draining)

    @property
    def sending(self) -> bool: ...  # frames can still be sent (not closed)

    def send(self, message: bytes) -> None: ...  # a control frame (logged for a resume)

    def flush(self) -> None: ...

    def log_extra(self) -> dict[str, str | None]: ...


class Flow:
    """One datagram flow: a stream id and where its datagrams go on this side.

    On the listening side ``source`` is the UDP peer it stands for and ``endpoint`` the
    socket that peer sent to; on the dialing side ``transport`` is the flow's own socket
    (None while it is made, when ``pending`` holds what came meanwhile).
    """

    __slots__ = (
        "endpoint",
        "last",
        "peer",
        "pending",
        "received",
        "sent",
        "slot",
        "source",
        "stream_id",
        "transport",
    )

    def __init__(self, stream_id: int, peer: str) -> None:
        self.stream_id = stream_id
        self.peer = peer
        self.source: SourceAddress | None = None
        self.endpoint: UdpEndpoint | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] | None = None
        self.slot: Slot | None = None
        self.last = 0.0  # loop time of the last datagram either way
        self.sent = 0  # datagrams each way, for the "flow closed" debug line
        self.received = 0
