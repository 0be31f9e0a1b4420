"""Opening TCP connections: the streams the peer opens (the dialing side), a stream's
target, the way to the tunnel server through an HTTP proxy, and the bounded labels of why
a dial failed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from .addresses import Address
from .errors import describe
from .limits import QuietLog, Slot
from .logs import escape, quote
from .streams import StreamTable
from .tcp import TcpStream

#: a peer's OPENs can fail by the thousand: a few lines per period (limits.QuietLog)
quiet = QuietLog(logging.getLogger("aiowstunnel.session"))


class Dial(Protocol):
    """Opens the connection for a stream the peer asked for (the dialing side).

    ``target`` is the OPEN's own target (``""``: the session's); a dial that may not go
    there raises PermissionError with the rule set's words (destinations.py).
    """

    def __call__(
        self, factory: Callable[[], asyncio.BaseProtocol], origin: str, target: str
    ) -> Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]: ...


class Dialer:
    """The streams the peer opens: each is dialed in its own task (the frame dispatch
    never waits for one); a dial that fails is refused with its reason (OPEN_FAIL),
    counted by label and logged.

    Args:
        table: where each dialed connection's stream goes, and the Mux it answers with.
    """

    def __init__(self, table: StreamTable) -> None:
        self.table = table
        self.dial: Dial | None = None  # None: this side accepts no streams
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, stream_id: int, origin: str, target: str = "") -> None:
        """The peer's OPEN: dial, or refuse at once (no dialer, going away, a limit)."""
        table, host = self.table, self.table.host
        if self.dial is None or not host.accepting:
            reason = "this side does not accept streams" if self.dial is None else "going away"
            host.send(table.mux.refuse_stream(stream_id, reason))
            return
        slot = None
        if table.guard is not None:
            slot = table.guard.stream_slot(host.peer)
            if slot is None:
                table.stats.stream_open_failures["stream_limit"] += 1
                host.send(table.mux.refuse_stream(stream_id, "server stream limit reached"))
                return
        table.dial_started()
        task = asyncio.get_running_loop().create_task(self._dial(stream_id, origin, target, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _dial(self, stream_id: int, origin: str, target: str, slot: Slot | None) -> None:
        assert self.dial is not None
        table, host = self.table, self.table.host
        stream = TcpStream(table, stream_id)
        stream.slot = slot
        try:
            await self.dial(lambda: stream, origin, target)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = describe(exc)
            label = failure_label(exc)
            table.stats.stream_open_failures[label] += 1
            # The origin is the peer's claim: its own field, escaped; PEER= stays the socket.
            quiet.warning(
                ("dial", label),
                "stream %d%s%s not opened: %s",
                stream_id,
                f" for {quote(origin)}" if origin else "",
                f" to {quote(target)}" if target else "",
                reason,
                extra={**host.log_extra(), "origin": escape(origin)},
            )
            if stream_id in table.mux:
                # The cause word first (protocol.md, OPEN_FAIL), so that the opener can
                # tell its application why (a SOCKS reply code) without parsing prose.
                host.send(table.mux.refuse_stream(stream_id, f"{label}: {reason}"))
                host.flush()
        finally:
            if table.get(stream_id) is not stream and stream.slot is not None:
                stream.slot.release()  # never registered: forget() will not see it
            table.dial_ended(stream_id)


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


async def proxy_tunnel(proxy: Address, target: Address) -> socket.socket:
    """A socket connected to ``target`` through an HTTP proxy's CONNECT method.

    Raises:
        ConnectionError: the proxy refused (its status line is in the message).
        OSError: the proxy cannot be reached.
    """
    host, port = proxy.host, proxy.port
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
