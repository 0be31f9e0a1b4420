"""aiowstunnel: persistent, reliable TCP tunnels over WebSocket, on asyncio.

The library API is the original one: ``Server(host, port)`` and
``Client(mode, tunnel_host, tunnel_port, listen_host, listen_port, connect_host,
connect_port)`` with ``start()`` and ``await close()``; ``CONNECT`` and ``LISTEN`` name the
two modes. The daemon (``aiowstunnel run``) builds on the same classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .handshake import CONNECT, LISTEN, REVERSE_SOCKS5, SOCKS5, Mode

__version__ = "1.0.0.dev0"
__all__ = [
    "CONNECT",
    "LISTEN",
    "REVERSE_SOCKS5",
    "SOCKS5",
    "Client",
    "Mode",
    "Server",
    "__version__",
]

if TYPE_CHECKING:
    from .client import Client
    from .server import Server


def __getattr__(name: str) -> object:
    # Lazy, so that `import aiowstunnel` for CONNECT/LISTEN stays cheap and cycle-free.
    if name == "Server":
        from .server import Server

        return Server
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(name)
