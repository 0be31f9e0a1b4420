"""The client's local listener: bound (TCP or unix; a UDP socket for UDP flows, on the same
port for tcp+udp) or served from a predecessor's sockets, handed over to a successor
(:class:`Listening`, its life in the first member of a tunnel), and what becomes of a
connection it accepts while the tunnel is down (reset at once, counted, and said in the log
at most once per REFUSED_LOG_PERIOD).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Protocol, cast

from .addresses import Address, SocketAddress, UnixPath, format_peer
from .errors import describe
from .handshake import TunnelProtocol
from .logs import TunnelLogger
from .resets import Abortable, Cut, reset
from .session import Session
from .stats import TunnelStats
from .udp import FlowTable
from .udpsocket import UdpEndpoint, bind_endpoint
from .unixsock import listen_unix

#: At most one "refused a connection" line per this many seconds per tunnel (each says how
#: many were refused since the last one): a client retrying in a loop must not flood the log.
REFUSED_LOG_PERIOD = 10.0


#: What a listener hands its successor: its TCP (or unix) socket and its UDP socket.
Sockets = tuple[socket.socket | None, socket.socket | None]


class LocalSide(Protocol):
    """What the local listener reads of its client (a :class:`~client.Client`)."""

    listen: SocketAddress
    socket_mode: int
    protocol: TunnelProtocol
    stats: TunnelStats

    def datagram_session(self) -> Session | None:
        """The session whose flows the UDP socket's datagrams go to now."""
        ...


class LocalListener:
    """The client's local sockets: a TCP (or unix) listener, a UDP socket, or both."""

    def __init__(self, tcp: asyncio.Server | None, udp: UdpEndpoint | None) -> None:
        self.tcp = tcp
        self.udp = udp

    def close(self) -> None:
        if self.tcp is not None:
            self.tcp.close()
        if self.udp is not None:
            self.udp.close()

    async def wait_closed(self) -> None:
        if self.tcp is not None:
            await self.tcp.wait_closed()


async def bind_local(
    new_stream: Callable[[], asyncio.BaseProtocol],
    side: LocalSide,
    handed: Sockets | None = None,
) -> tuple[LocalListener, SocketAddress]:
    """Listen on ``side.listen`` for what the tunnel carries, or serve ``handed``, the
    sockets of a predecessor; returns the listener and the address it listens on (port 0
    resolved; tcp+udp: the UDP socket takes the port the TCP listener got).

    Raises:
        OSError: naming the address (the sockets handed over are closed).
    """
    tcp_sock, udp_sock = handed or (None, None)
    listen = side.listen
    tcp = None
    address = listen
    if side.protocol.tcp:
        tcp, address = await _bind_tcp(new_stream, listen, side.socket_mode, tcp_sock)
    elif tcp_sock is not None:
        tcp_sock.close()  # the predecessor carried TCP; this one does not
    if not side.protocol.udp or not isinstance(address, Address):
        if udp_sock is not None:
            udp_sock.close()
        return LocalListener(tcp, None), address

    def flows() -> FlowTable | None:
        session = side.datagram_session()
        return session.flows if session is not None else None

    try:
        udp = await bind_endpoint(address.bind_host, address.port, flows, side.stats, udp_sock)
    except OSError:
        if tcp is not None:
            tcp.close()
        raise
    return LocalListener(tcp, udp), Address(address.host, udp.address[1])


async def _bind_tcp(
    new_stream: Callable[[], asyncio.BaseProtocol],
    listen: SocketAddress,
    socket_mode: int,
    sock: socket.socket | None,
) -> tuple[asyncio.Server, SocketAddress]:
    loop = asyncio.get_running_loop()
    try:
        if sock is not None and isinstance(listen, UnixPath):
            listener = await loop.create_unix_server(new_stream, sock=sock)
        elif sock is not None:
            listener = await loop.create_server(new_stream, sock=sock)
        elif isinstance(listen, UnixPath):
            listener = await listen_unix(new_stream, listen.path, socket_mode)
        else:
            listener = await loop.create_server(
                new_stream, listen.bind_host, listen.port, backlog=1024
            )
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise OSError(exc.errno, f"cannot listen on {listen}: {describe(exc)}") from exc
    if isinstance(listen, UnixPath):
        return listener, listen
    port = listener.sockets[0].getsockname()[1]
    return listener, Address(listen.host, port)


def hand_over(listener: LocalListener) -> Sockets:
    """Close ``listener`` and return its sockets (duplicates, still bound: what arrives
    meanwhile waits in their queues) for a successor; a TCP listener with more than one
    socket hands over none (the successor binds afresh)."""
    sock = None
    if listener.tcp is not None:
        sockets = list(listener.tcp.sockets)
        if len(sockets) == 1:
            sock = socket.socket(fileno=os.dup(sockets[0].fileno()))
        listener.tcp.close()
    return sock, listener.udp.hand_over() if listener.udp is not None else None


class Listening:
    """The local listener of a tunnel's first member over the Client's life: bound before
    its first attempt, or served from the sockets of the instance it replaces on reload (so
    that nothing waiting in their queues is refused), handed over in turn, closed."""

    def __init__(self, side: LocalSide, log: TunnelLogger) -> None:
        self.side = side
        self.log = log
        self.listener: LocalListener | None = None

    async def bind(
        self, new_stream: Callable[[], asyncio.BaseProtocol], handed: Sockets | None = None
    ) -> SocketAddress:
        """Listen on ``side.listen`` (TCP, UDP or both), or serve ``handed``, a
        predecessor's sockets; returns the address bound. Raises OSError (bind_local)."""
        self.listener, address = await bind_local(new_stream, self.side, handed)
        how = "taking over" if handed else "listening on"
        self.log.info("%s %s%s", how, address, self.side.protocol.note)
        return address

    def hand_over(self) -> Sockets | None:
        """Stop accepting and return the sockets for a successor (:func:`hand_over`); None
        when there is no listener."""
        listener, self.listener = self.listener, None
        return None if listener is None else hand_over(listener)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    async def wait_closed(self) -> None:
        """After :meth:`close`: its sockets closed (a second at most), the listener gone."""
        if self.listener is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.listener.wait_closed(), 1.0)
            self.listener = None


class DownRefusals:
    """The local connections refused while the tunnel is down, for one tunnel."""

    def __init__(self, stats: TunnelStats, log: TunnelLogger, why: Callable[[], str]) -> None:
        self.stats = stats
        self.log = log
        self.why = why  # why the tunnel is down: its last error
        self._refused = 0  # connections refused while down since the last such log line
        self._logged_at: float | None = None

    def refuse(self, transport: Abortable) -> None:
        """A local connection accepted while the tunnel is down: reset it, count it, and
        say so in the log, with why it is down (rate-limited: REFUSED_LOG_PERIOD)."""
        self.stats.stream_open_failures["tunnel_down"] += 1
        self.stats.stream_resets[Cut.TUNNEL_DOWN.value] += 1
        peer = format_peer(transport.get_extra_info("peername"))
        reset(transport)
        self._refused += 1
        now = asyncio.get_running_loop().time()
        last = self._logged_at
        if last is not None and now - last < REFUSED_LOG_PERIOD:
            return
        count, self._refused, self._logged_at = self._refused, 0, now
        since = "" if last is None else f" ({count} since the last such line)"
        self.log.warning(
            "refused a connection from %s: the tunnel is down (%s)%s",
            peer,
            self.why(),
            since,
        )


class Refuse(asyncio.Protocol):
    """A local connection accepted while the tunnel is down: reset at once (see
    DownRefusals.refuse)."""

    def __init__(self, refuse: Callable[[Abortable], None]) -> None:
        self.refuse = refuse

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport, which can abort (uvloop's too, though not by class).
        self.refuse(cast(Abortable, transport))
