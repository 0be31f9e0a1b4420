"""The client's local listener: bound (TCP or unix) or served from a predecessor's socket,
handed over to a successor, and what becomes of a connection it accepts while the tunnel
is down (reset at once, counted, and said in the log at most once per REFUSED_LOG_PERIOD).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import cast

from .addresses import Address, SocketAddress, UnixPath, format_peer
from .errors import describe
from .logs import TunnelLogger
from .resets import Abortable, Cut, reset
from .stats import TunnelStats
from .unixsock import listen_unix

#: At most one "refused a connection" line per this many seconds per tunnel (each says how
#: many were refused since the last one): a client retrying in a loop must not flood the log.
REFUSED_LOG_PERIOD = 10.0


async def bind_local(
    new_stream: Callable[[], asyncio.BaseProtocol],
    listen: SocketAddress,
    socket_mode: int,
    sock: socket.socket | None = None,
) -> tuple[asyncio.Server, SocketAddress]:
    """Listen on ``listen``, or serve ``sock``, a listening socket handed over; returns
    the listener and the address it listens on (port 0 resolved).

    Raises:
        OSError: naming the address (``sock`` is closed).
    """
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


def hand_over(listener: asyncio.Server) -> socket.socket | None:
    """Close ``listener`` and return its listening socket (a duplicate, still listening)
    for a successor; None when there is no single socket to hand over."""
    sockets = list(listener.sockets)
    sock = None
    if len(sockets) == 1:
        sock = socket.socket(fileno=os.dup(sockets[0].fileno()))
    listener.close()
    return sock


class DownRefusals:
    """The local connections refused while the tunnel is down, for one tunnel."""

    def __init__(self, stats: TunnelStats, log: TunnelLogger) -> None:
        self.stats = stats
        self.log = log
        self._refused = 0  # connections refused while down since the last such log line
        self._logged_at: float | None = None

    def refuse(self, transport: Abortable, why: str) -> None:
        """A local connection accepted while the tunnel is down (``why``): reset it, count
        it, and say so in the log (rate-limited: REFUSED_LOG_PERIOD)."""
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
            why,
            since,
        )


class Refuse(asyncio.Protocol):
    """A local connection accepted while the tunnel is down: reset at once (see
    Client.refused_while_down)."""

    def __init__(self, refuse: Callable[[Abortable], None]) -> None:
        self.refuse = refuse

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport, which can abort (uvloop's too, though not by class).
        self.refuse(cast(Abortable, transport))
