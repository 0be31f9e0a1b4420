"""Listening on a unix socket path: a stale socket file replaced, a live one left alone.

A daemon that was killed leaves its socket file behind, and ``bind`` then fails with
"Address already in use" although nobody listens. Before binding, a socket file at the
path is probed: if a connection to it is refused, nobody is there and the file is removed;
if one is accepted, the path is in use and the bind fails with that said. Anything that is
not a socket is never removed. After binding, the file gets the configured mode.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from collections.abc import Callable

#: Owner and group: a unix socket is usually chosen for its permissions; widen with
#: ``socket_mode = "0666"`` (as reachable as a loopback port).
DEFAULT_SOCKET_MODE = 0o660


def clear_stale(path: str) -> None:
    """Remove a stale socket file at ``path``; leave a live one, or anything else.

    Raises:
        OSError: EADDRINUSE when something listens there, EEXIST when the path is not a
            socket; each with a message naming the path.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: its listener is gone
        return
    except OSError:
        return  # cannot tell (e.g. permission denied): let bind say what it says
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another process is listening there")


async def listen_unix(
    factory: Callable[[], asyncio.BaseProtocol],
    path: str,
    mode: int = DEFAULT_SOCKET_MODE,
    backlog: int = 1024,
) -> asyncio.Server:
    """Listen on ``path`` (after :func:`clear_stale`), with the file's mode set to ``mode``."""
    clear_stale(path)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(factory, path, backlog=backlog)
    try:
        os.chmod(path, mode)
    except OSError:
        server.close()
        raise
    return server
