"""Opening TCP connections: a stream's target (the dialing side), the way to the tunnel
server through an HTTP proxy, and the bounded labels of why a dial failed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

from .addresses import Address, host_port
from .errors import describe


class Dial(Protocol):
    """Opens the connection for a stream the peer asked for (the dialing side).

    ``target`` is the OPEN's own target (``""``: the session's); a dial that may not go
    there raises PermissionError with the rule set's words (destinations.py).
    """

    def __call__(
        self, factory: Callable[[], asyncio.BaseProtocol], origin: str, target: str
    ) -> Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]: ...


def tcp_dialer(host: str, port: int, timeout: float) -> Dial:
    """A :class:`Dial` that connects to one fixed TCP target, with a timeout; an OPEN that
    names a target of its own is refused (destinations.py checks those)."""
    where = host_port(host, port)

    async def dial(
        factory: Callable[[], asyncio.BaseProtocol], origin: str, target: str = ""
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        if target:
            raise PermissionError(f"{target}: this side dials only {where}")
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"connect to {where} timed out after {timeout:g} s") from None
        except OSError as exc:
            # asyncio's own text ("Connect call failed (...)") hides the errno's meaning.
            raise type(exc)(exc.errno, f"connect to {where} failed: {describe(exc)}") from exc

    return dial


def failure_label(exc: BaseException) -> str:
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


async def proxy_tunnel(proxy: str, target: Address) -> socket.socket:
    """A socket connected to ``target`` through an HTTP proxy's CONNECT method.

    Raises:
        ConnectionError: the proxy refused (its status line is in the message).
        OSError: the proxy cannot be reached.
    """
    url = urlsplit(proxy)
    host, port = url.hostname or "", url.port or 3128
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
        authority = str(target)
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        head = b""
        while b"\r\n\r\n" not in head:  # byte by byte: nothing past the head is consumed
            byte = await loop.sock_recv(sock, 1)
            if not byte or len(head) > 8192:
                raise ConnectionError(f"proxy {host}:{port} closed during CONNECT")
            head += byte
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status.split()
        if len(parts) < 2 or parts[1] != "200":
            raise ConnectionError(f"proxy {host}:{port} refused CONNECT {authority}: {status}")
        return sock
    except BaseException:
        sock.close()
        raise
