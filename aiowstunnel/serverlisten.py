"""The server's listening sockets: the tunnel endpoint (bound, or a predecessor's socket
served) and its handover to a successor, the listener a LISTEN-mode session binds (TCP or
unix, plain or SOCKS5 streams; a UDP socket for UDP flows), and the sockets a CONNECT
session's UDP flows send from (:func:`serve_flows`). Each bind error names the address.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from .addresses import Address, UnixPath
from .dial import Dial
from .errors import describe
from .handshake import HEADER_PROTOCOL, Refusal, RequestRefused
from .serveraccess import Grant
from .session import Session
from .socks import Socks5Stream
from .socks5 import Credentials
from .tcp import TcpStream
from .udpsocket import bind_endpoint, udp_dialer
from .unixsock import listen_unix


async def listen_endpoint(
    new_link: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """The tunnel endpoint: ``host``:``port`` bound, or ``sock`` (handed over) served;
    plain TCP (a TLS endpoint's connections start their TLS themselves: tlsreads).

    Raises:
        OSError: the address cannot be bound; the message names it.
    """
    loop = asyncio.get_running_loop()
    try:
        if sock is not None:
            return await loop.create_server(
                new_link,
                sock=sock,
                backlog=1024,
            )
        else:
            return await loop.create_server(
                new_link,
                host or None,
                port,
                backlog=1024,
            )
    except OSError as exc:
        address = Address(host, port)
        raise OSError(exc.errno, f"cannot listen on {address}: {describe(exc)}") from exc


def hand_over(server: asyncio.Server) -> socket.socket | None:
    """Stop accepting on ``server`` and return its listening socket (a duplicate, still
    listening) for a successor; None if there is no single socket."""
    sockets = list(server.sockets)
    sock = socket.socket(fileno=os.dup(sockets[0].fileno())) if len(sockets) == 1 else None
    server.close()
    return sock


async def bind_session_listener(session: Session, grant: Grant, socket_mode: int) -> None:
    """Bind the listener of a LISTEN-mode session (TCP or unix; plain or SOCKS5 streams)
    into ``grant``, with the address bound, or the refusal naming why not."""
    address = grant.request.address
    assert address is not None  # checked by _check: a listening mode names its address

    auth = grant.request.socks_auth
    credentials = Credentials(*auth) if auth is not None else None

    def new_stream() -> TcpStream:
        if grant.request.mode.socks:
            return Socks5Stream(session, credentials)
        return session.new_stream()

    loop = asyncio.get_running_loop()
    protocol = grant.request.protocol
    try:
        if isinstance(address, UnixPath):
            grant.listener = await listen_unix(new_stream, address.path, socket_mode)
        elif protocol.tcp:
            grant.listener = await loop.create_server(
                new_stream, address.bind_host, address.port, backlog=1024
            )
    except OSError as exc:
        raise RequestRefused(
            Refusal.LISTEN_FAILED, f"cannot listen on {address}: {describe(exc)}"
        ) from None
    if isinstance(address, UnixPath):
        grant.bound = str(address)
        return
    port = grant.listener.sockets[0].getsockname()[1] if grant.listener else address.port
    if protocol.udp:
        # tcp+udp: the UDP socket takes the port the TCP listener got (DNS: one port).
        try:
            grant.udp_endpoint = await bind_endpoint(
                address.bind_host, port, lambda: session.flows, session.stats
            )
        except OSError as exc:
            grant.close_listeners()
            raise RequestRefused(Refusal.LISTEN_FAILED, str(exc)) from None
        port = grant.udp_endpoint.address[1]
    grant.bound = str(Address(address.host, port))


def serve_flows(
    session: Session, grant: Grant, dial: Dial | None, headers: dict[str, str], timeout: float
) -> Dial | None:
    """A granted session's UDP side (protocol.md, Datagram flows), before its 101: CONNECT
    flows dial the granted target, a LISTEN session ends idle flows by the client's
    udp_idle_timeout and counts its socket's drops as the session's, and the 101 confirms
    the protocol. Returns the dial of its TCP streams: ``dial``, or None without TCP."""
    request = grant.request
    if request.protocol.udp:
        target = grant.udp_target or request.address
        if not request.mode.server_listens and isinstance(target, Address):
            session.flows.dial = udp_dialer(target.host, target.port, timeout)
        session.flows.idle_timeout = request.udp_idle_timeout
        if grant.udp_endpoint is not None:
            grant.udp_endpoint.stats = session.stats
        headers[HEADER_PROTOCOL] = request.protocol.value  # the client checks it is known
    return dial if request.protocol.tcp else None
