"""The metrics exporter: a tiny asyncio HTTP server for ``GET /metrics`` (the registry's
exposition, written by prometheus_client's ``generate_latest``) and ``GET /healthz`` (the
tunnels' state, as JSON). The metrics themselves are ``metrics``'s; this module only serves a
registry, one request per connection, each bounded in size and time, so that a slow or
hostile scraper costs a file descriptor for a few seconds at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .addresses import host_port
from .errors import TunnelError, describe
from .limits import DEFAULT_METRICS_CONNECTIONS, QuietLog
from .stats import Health, LimitStats

logger = logging.getLogger("aiowstunnel.metrics")  # the name its log lines always had
quiet = QuietLog(logger)

MAX_REQUEST_HEAD = 8 * 1024  # request line + headers; a scrape request is a few hundred bytes
REQUEST_TIMEOUT = 5.0  # seconds for a client to send its request head


class MetricsServer:
    """HTTP exporter on asyncio: ``GET /metrics`` and ``GET /healthz``, one request per
    connection (``Connection: close``), request head bounded in size and time.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], Health | Mapping[str, bool]] | None = None,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_METRICS_CONNECTIONS,
        limit_stats: LimitStats | None = None,
    ) -> None:
        """Build the exporter; ``start`` binds it.

        Args:
            registry: what ``/metrics`` exposes.
            health: returns a :class:`Health` (or just ``{tunnel name: up}``);
                ``/healthz`` is 200 when every client tunnel is up (or there are none), 503
                otherwise. Draining instances and the server's sessions are listed beside,
                and never make it 503. None means no tunnels.
            request_timeout: seconds a client has to send its request line and headers.
            max_connections: connections served at once; more are closed at once (each
                holds a file descriptor for up to ``request_timeout``).
            limit_stats: counts those refusals (``limit="metrics_connections"``).
        """
        self._registry = registry
        self._health = health or dict
        self._request_timeout = request_timeout
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._max_connections = max_connections
        self._limit_stats = limit_stats if limit_stats is not None else LimitStats()

    async def start(self, host: str | None, port: int) -> None:
        """Listen on ``host:port``.

        Args:
            host: address to bind; None or "" for every interface.
            port: TCP port; 0 picks a free one (see ``port``).

        Raises:
            OSError: the address cannot be bound; the message names it.
        """
        try:
            self._server = await asyncio.start_server(
                self._handle, host or None, port, limit=MAX_REQUEST_HEAD
            )
        except OSError as exc:
            where = host_port(host or "*", port)
            raise OSError(exc.errno, f"metrics: cannot listen on {where}: {describe(exc)}") from exc

    @property
    def port(self) -> int:
        """The bound port (of the first socket, when listening on several)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("MetricsServer is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop requests in progress. Safe to call twice."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= self._max_connections:
            self._limit_stats.hits["metrics_connections"] += 1
            quiet.warning(
                "metrics_connections",
                "metrics: %d connections open (max_connections): closing one from %s",
                len(self._handlers),
                writer.get_extra_info("peername"),
            )
            writer.transport.abort()
            return
        self._handlers.add(task)
        try:
            try:
                status, ctype, body = await asyncio.wait_for(
                    self._read_and_answer(reader), self._request_timeout
                )
            except asyncio.TimeoutError:
                status, ctype, body = 408, "text/plain", b"request timeout\n"
            except _RequestTooLarge:
                status, ctype, body = 431, "text/plain", b"request head too large\n"
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n"
                + ("Allow: GET\r\n" if status == 405 else "")
                + "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await asyncio.wait_for(writer.drain(), self._request_timeout)
        except (OSError, asyncio.TimeoutError):
            pass  # the client went away or stopped reading: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            self._handlers.discard(task)

    async def _read_and_answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        request_line = await _read_head(reader)
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]  # Prometheus may add query parameters
        if path not in ("/metrics", "/healthz"):
            return 404, "text/plain", b"not found: try /metrics or /healthz\n"
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        try:
            if path == "/metrics":
                return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
            health = self._health()
            if not isinstance(health, Health):
                health = Health(health)
            healthy, answer = health.report()
        except Exception:
            # A provider bug must cost one scrape, not the exporter.
            logger.exception("metrics: answering GET %s failed", path)
            return 500, "text/plain", b"internal error\n"
        body = json.dumps(answer)
        return (200 if healthy else 503), "application/json", body.encode() + b"\n"


class _RequestTooLarge(TunnelError):
    """The request line and headers exceed MAX_REQUEST_HEAD (answered 431, never raised out)."""


async def _read_head(reader: asyncio.StreamReader) -> str:
    """Read the request line and headers up to the blank line; return the request line."""
    total = 0
    first: bytes | None = None
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            raise _RequestTooLarge from exc
        except asyncio.IncompleteReadError as exc:
            line = exc.partial  # EOF: answer what we have
            if not line:
                break
        total += len(line)
        if total > MAX_REQUEST_HEAD:
            raise _RequestTooLarge
        if first is None:
            first = line
        elif line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n"):
            break
    return (first or b"").decode("latin-1").strip()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
