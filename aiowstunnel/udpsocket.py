"""The UDP sockets of a tunnel (docs/protocol.md, Datagram flows): the listening side's
one :class:`UdpEndpoint`, whose sources become flows, and the dialing side's socket per
flow (:func:`udp_dialer`, :class:`FlowSocket`), connected to the target so that its
answers come back to the right flow. Every send either goes out at once or says why it
was dropped: asyncio's datagram transports would otherwise buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from .addresses import host_port
from .errors import describe
from .stats import TunnelStats

#: A UDP socket's write buffer past which datagrams for it are dropped (asyncio's
#: datagram transports otherwise buffer without bound when the socket says EAGAIN).
SOCKET_MARK = 256 * 1024
#: The socket buffers every UDP socket here asks for, each way: a burst (a WireGuard
#: handshake's window, 50 DNS clients at once) that lands while the loop is busy waits in
#: the kernel instead of being dropped there. The kernel caps it at net.core.rmem_max and
#: wmem_max (212,992 bytes on a stock Linux; docs/operations.md, UDP).
SOCKET_BUFFER = 2 * 1024 * 1024

SourceAddress = tuple[str, int] | tuple[str, int, int, int]


class SourceSink(Protocol):
    """Where a :class:`UdpEndpoint`'s datagrams go: the flow table of the session up now."""

    def from_source(self, endpoint: UdpEndpoint, data: bytes, source: SourceAddress) -> None: ...


class FlowDial(Protocol):
    """Makes the UDP socket of a flow the peer opened (the dialing side)."""

    def __call__(
        self, factory: Callable[[], asyncio.DatagramProtocol], origin: str
    ) -> Awaitable[tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]]: ...


def udp_dialer(host: str, port: int, timeout: float) -> FlowDial:
    """A :class:`FlowDial` whose sockets are connected to one fixed UDP target: each flow
    sends from its own port, and the kernel passes it only the target's answers."""
    where = host_port(host, port)

    async def dial(
        factory: Callable[[], asyncio.DatagramProtocol], origin: str
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.create_datagram_endpoint(factory, remote_addr=(host, port)), timeout
            )
        except asyncio.TimeoutError:
            raise TimeoutError(f"UDP socket to {where} timed out after {timeout:g} s") from None
        except OSError as exc:
            raise type(exc)(exc.errno, f"UDP socket to {where} failed: {describe(exc)}") from exc

    return dial


class FlowSocket(asyncio.DatagramProtocol):
    """The protocol of one flow's own UDP socket (the dialing side): what the target
    sends, and the errors the socket reports, go to the flow's two callbacks."""

    def __init__(
        self, received: Callable[[bytes], None], error: Callable[[Exception], None]
    ) -> None:
        self.received = received
        self.error = error

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ask_for_buffers(transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.received(data)

    def error_received(self, exc: Exception) -> None:
        self.error(exc)


class UdpEndpoint(asyncio.DatagramProtocol):
    """The UDP socket of a tunnel's listening side (the client's ``listen`` in CONNECT
    mode, the server's in LISTEN mode). It outlives sessions: each datagram goes to the
    flow table of the session up now (``flows()``), or is dropped as ``no_session``.

    Args:
        flows: the current session's flow table, or None while there is none.
        stats: where drops without a session are counted (the server sets its client
            entry's once the session is authenticated).
    """

    def __init__(self, flows: Callable[[], SourceSink | None], stats: TunnelStats) -> None:
        self.flows = flows
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        ask_for_buffers(transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        table = self.flows()
        if table is None:
            self.stats.datagram_drops["no_session"] += 1
            return
        table.from_source(self, data, cast(SourceAddress, addr))

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for a reply we sent to a source that is gone: nothing to do but
        # count it (the flow ends by its idle timeout).
        self.stats.datagram_drops[send_error_reason(exc)] += 1

    def send_to(self, data: bytes, source: SourceAddress) -> str:
        """A reply to ``source``: ``""`` when sent, else the reason it was dropped."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return "no_session"
        return send(transport, data, source)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        sockname = self.transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def hand_over(self) -> socket.socket | None:
        """Close here and return the socket (a duplicate) for a successor: datagrams that
        come meanwhile wait in its buffer."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        handed = socket.socket(fileno=os.dup(sock.fileno())) if sock is not None else None
        self.close()
        return handed

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def bind_endpoint(
    host: str | None,
    port: int,
    flows: Callable[[], SourceSink | None],
    stats: TunnelStats,
    sock: socket.socket | None = None,
) -> UdpEndpoint:
    """Bind a :class:`UdpEndpoint` on ``host:port`` (or serve ``sock``, handed over).

    Raises:
        OSError: the address cannot be bound; the message names it.
    """
    loop = asyncio.get_running_loop()
    try:
        if sock is not None:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: UdpEndpoint(flows, stats), sock=sock
            )
        else:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: UdpEndpoint(flows, stats), local_addr=(host or "0.0.0.0", port)
            )
    except OSError as exc:
        if sock is not None:
            sock.close()
        where = host_port(host or "", port)
        raise OSError(exc.errno, f"cannot listen on udp {where}: {describe(exc)}") from exc
    return protocol


def send(transport: asyncio.DatagramTransport, data: bytes, to: SourceAddress | None = None) -> str:
    """One datagram out of ``transport``: ``""`` when sent, else the drop reason."""
    if transport.is_closing():
        return "no_session"
    # asyncio's and uvloop's transports both tell what they hold unsent, though typeshed's
    # DatagramTransport does not declare it.
    if cast(asyncio.WriteTransport, transport).get_write_buffer_size() > SOCKET_MARK:
        return "queue_full"
    try:
        transport.sendto(data, to)
    except OSError as exc:  # uvloop raises some at once; asyncio reports them later
        return send_error_reason(exc)
    return ""


def ask_for_buffers(transport: asyncio.BaseTransport) -> None:
    """SOCKET_BUFFER each way on a UDP socket, as much of it as the kernel grants."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def send_error_reason(exc: Exception) -> str:
    """The drop reason of a UDP send the OS refused."""
    too_large = isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE
    return "too_large" if too_large else "send_failed"
