"""Ending a broken stream as a TCP reset, so that the application is told.

``transport.abort()`` closes the socket at once, but when nothing is unread the kernel then
sends a FIN: the application reads a clean end of stream and cannot tell a cut transfer
from a finished one (silent data loss). With ``SO_LINGER {on, 0}`` the close sends an RST
instead, and the application's next ``recv`` raises ECONNRESET. Only a real FIN from the
other end stays an EOF (protocol.md, Half-close). The same on asyncio and uvloop: both
expose the socket (uvloop as a pseudo-socket that passes ``setsockopt`` through).
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
from typing import Any, Protocol

_LINGER_ZERO = struct.pack("ii", 1, 0)


class Cut(enum.Enum):
    """Why a stream was reset: the ``reason`` label of ``aiowstunnel_streams_reset_total``.

    A fixed set, so the metric's cardinality is bounded whatever a peer says.
    """

    SESSION_LOST = "session_lost"  # the WebSocket under the stream ended (peer dead, killed)
    PEER_RESET = "peer_reset"  # the other end reset it (RST frame), or gave up while we dialed
    OPEN_FAILED = "open_failed"  # accepted here, but the other side could not open it
    TUNNEL_DOWN = "tunnel_down"  # accepted while the tunnel had no session
    DRAIN_TIMEOUT = "drain_timeout"  # still open when a stop's or reload's drain ran out
    VIOLATION = "violation"  # the peer broke the protocol on this stream
    EXPIRED = "expired"  # a stream kept for resumption whose session did not come back
    RESUME_REFUSED = "resume_refused"  # the server could not resume it (restarted, refused)
    DETACHED_LIMIT = "detached_limit"  # its detached session was expired early: over a limit

    def __str__(self) -> str:
        return self.value


class Abortable(Protocol):
    """A transport that can be reset: asyncio's and uvloop's TCP transports (uvloop's are
    not asyncio.Transport subclasses, so this is a structural type)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def abort(self) -> None: ...


def reset(transport: Abortable) -> None:
    """Close ``transport``'s socket with an RST (SO_LINGER 0), dropping what is buffered."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()
