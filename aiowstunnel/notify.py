"""sd_notify and the systemd watchdog: how the daemon tells systemd it is ready, reloading,
stopping or still alive. Uses libsystemd through systemd-python when installed, else the plain
datagram protocol of sd_notify(3), so that the daemon runs the same without the extra.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)


def libsystemd() -> ModuleType | None:
    """systemd-python's ``systemd.daemon``, or None where it is not installed (an optional
    extra: docs/architecture.md, Design rules: Dependencies). Imported only by a notifier
    that has a socket to send to: libsystemd and what it links are 0.8 MB of every
    daemon's memory, which a daemon that systemd did not start need not carry."""
    try:
        return importlib.import_module("systemd.daemon")
    except ImportError:  # pragma: no cover - depends on the machine
        return None


class Notifier:
    """Sends state lines to systemd's notification socket ($NOTIFY_SOCKET).

    The socket is read from the environment when the notifier is built. Without
    $NOTIFY_SOCKET (not started by systemd, or not ``Type=notify``) every call does nothing.
    A failing send is logged once at warning level and never raises: losing a status line
    must not take the tunnels down.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        use_libsystemd: bool | None = None,
    ) -> None:
        """Build a notifier.

        Args:
            socket_path: the notification socket; defaults to $NOTIFY_SOCKET. A path
                starting with ``@`` names an abstract socket.
            use_libsystemd: send through ``systemd.daemon.notify``; defaults to whether
                systemd-python is importable and ``socket_path`` is $NOTIFY_SOCKET (libsystemd
                only reads the environment).

        Raises:
            RuntimeError: ``use_libsystemd=True`` but systemd-python is not installed.
        """
        env_path = os.environ.get("NOTIFY_SOCKET") or None
        self.socket_path = socket_path if socket_path is not None else env_path
        self._sd_daemon: ModuleType | None = None
        if use_libsystemd is None:
            use_libsystemd = self.socket_path is not None and self.socket_path == env_path
            if use_libsystemd:
                self._sd_daemon = libsystemd()
                use_libsystemd = self._sd_daemon is not None
        elif use_libsystemd:
            self._sd_daemon = libsystemd()
            if self._sd_daemon is None:
                raise RuntimeError("use_libsystemd=True but systemd-python is not installed")
        self.use_libsystemd = use_libsystemd
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether there is a notification socket to send to."""
        return self.socket_path is not None

    def notify(self, *lines: str, **fields: Any) -> bool:
        """Send one notification made of ``lines`` then ``KEY=value`` ``fields``.

        Example: ``notify(READY=1, STATUS="3/4 tunnels up")`` sends
        ``b"READY=1\\nSTATUS=3/4 tunnels up"``.

        Args:
            lines: ready-made ``KEY=value`` lines.
            fields: further lines; values go through ``str()``.

        Returns:
            True if the datagram was sent, False if disabled or the send failed.
        """
        if not self.enabled:
            return False
        # One state per line (sd_notify(3)): a newline inside a value would start a new,
        # unintended assignment, so it is flattened.
        parts = [*lines, *(f"{key}={value}" for key, value in fields.items())]
        message = "\n".join(part.replace("\n", " ") for part in parts)
        try:
            if self.use_libsystemd:
                assert self._sd_daemon is not None
                if not self._sd_daemon.notify(message):
                    raise OSError("sd_notify found no $NOTIFY_SOCKET")
            else:
                self._send_datagram(message.encode())
        except Exception as exc:
            self._report(exc)
            return False
        return True

    def reloading(self) -> bool:
        """Send ``RELOADING=1`` with the ``MONOTONIC_USEC=`` that systemd >= 253 requires.

        Returns:
            As ``notify``.
        """
        # systemd compares MONOTONIC_USEC against its own CLOCK_MONOTONIC; ask for that clock
        # by name rather than rely on time.monotonic()'s platform choice.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def close(self) -> None:
        """Close the datagram socket, if one was opened. The notifier may still be used."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send_datagram(self, data: bytes) -> None:
        path = self.socket_path
        assert path is not None
        if path.startswith("@"):
            address = "\0" + path[1:]  # abstract namespace: leading NUL, no file.
        elif path.startswith("/"):
            address = path
        else:
            raise OSError(f"unsupported NOTIFY_SOCKET address {path!r}")
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Non-blocking: a full receive queue must cost a lost line, not a stalled event
            # loop (the watchdog pings come from that loop).
            sock.setblocking(False)
            self._sock = sock
        self._sock.sendto(data, address)

    def _report(self, exc: BaseException) -> None:
        # Logged once: a missing socket would otherwise log on every watchdog ping.
        if not self._warned:
            self._warned = True
            logger.warning("sd_notify to %s failed: %s", self.socket_path, exc)
        else:
            logger.debug("sd_notify to %s failed: %s", self.socket_path, exc)


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """The interval, in seconds, at which to send ``WATCHDOG=1``: half of $WATCHDOG_USEC.

    Args:
        environ: the environment to read; defaults to ``os.environ``.

    Returns:
        Half the watchdog timeout, or None when the watchdog is off for this process:
        $WATCHDOG_USEC unset, not a positive integer, or $WATCHDOG_PID naming another process.
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    # systemd sets WATCHDOG_PID so that a forked child does not ping on its parent's behalf.
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    # Half the timeout, as sd_watchdog_enabled(3) advises, so one late ping is not fatal.
    return usec / 2 / 1_000_000


async def watchdog_loop(notifier: Notifier, period: float) -> None:
    """Send ``WATCHDOG=1`` now and then every ``period`` seconds, until cancelled.

    It runs on the event loop on purpose: a stuck loop stops the pings and systemd restarts
    the daemon.

    Args:
        notifier: where to send.
        period: seconds between pings, usually ``watchdog_period()``.

    Raises:
        ValueError: ``period`` is not positive.
    """
    if period <= 0:
        raise ValueError(f"watchdog period must be positive, got {period}")
    while True:
        notifier.notify(WATCHDOG=1)
        await asyncio.sleep(period)
