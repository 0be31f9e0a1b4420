"""Prometheus metrics: a collector that reads the tunnels' plain counters (stats.py) at scrape
time, and a tiny asyncio HTTP exporter serving GET /metrics and GET /healthz. Nothing here runs
in the data path: a scrape is the only time prometheus_client sees the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import __version__
from .addresses import host_port
from .errors import TunnelError, describe
from .limits import DEFAULT_METRICS_CONNECTIONS, LIMIT_NAMES, QuietLog
from .stats import Health, LimitStats, MetricsSnapshot, TunnelStats

logger = logging.getLogger(__name__)
quiet = QuietLog(logger)

MAX_REQUEST_HEAD = 8 * 1024  # request line + headers; a scrape request is a few hundred bytes
REQUEST_TIMEOUT = 5.0  # seconds for a client to send its request head


# The per-scrape families: metric type, name after "aiowstunnel_", help, label names.
_FAMILIES: dict[
    str, tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str, tuple[str, ...]]
] = {
    "up": (GaugeMetricFamily, "tunnel_up", "1 if the tunnel's session is up.", ("tunnel",)),
    "connects": (CounterMetricFamily, "tunnel_connects", "Sessions established.", ("tunnel",)),
    "connect_failures": (
        CounterMetricFamily,
        "tunnel_connect_failures",
        "Failed connection attempts, by reason.",
        ("tunnel", "reason"),
    ),
    "backoff": (
        GaugeMetricFamily,
        "tunnel_backoff_seconds",
        "Current wait before the next connection attempt.",
        ("tunnel",),
    ),
    "server_up": (
        GaugeMetricFamily,
        "tunnel_server_up",
        "1 if the tunnel's session to this server is open.",
        ("tunnel", "server"),
    ),
    "server_streams": (
        GaugeMetricFamily,
        "tunnel_server_streams_active",
        "Open streams on the tunnel's sessions to this server.",
        ("tunnel", "server"),
    ),
    "streams_active": (GaugeMetricFamily, "streams_active", "Open streams.", ("tunnel",)),
    "streams_opened": (CounterMetricFamily, "streams_opened", "Streams opened.", ("tunnel",)),
    "stream_open_failures": (
        CounterMetricFamily,
        "stream_open_failures",
        "Streams refused or failed to open, by reason.",
        ("tunnel", "reason"),
    ),
    "stream_resets": (
        CounterMetricFamily,
        "streams_reset",
        "Streams ended by a TCP reset toward the application, by cause.",
        ("tunnel", "reason"),
    ),
    "sent": (CounterMetricFamily, "sent_bytes", "Payload bytes sent.", ("tunnel",)),
    "received": (CounterMetricFamily, "received_bytes", "Payload bytes received.", ("tunnel",)),
    # UDP tunnels (protocol.md, Datagram flows)
    "datagrams_sent": (CounterMetricFamily, "datagrams_sent", "UDP datagrams sent.", ("tunnel",)),
    "datagrams_received": (
        CounterMetricFamily,
        "datagrams_received",
        "UDP datagrams received (written to a UDP socket).",
        ("tunnel",),
    ),
    "datagram_drops": (
        CounterMetricFamily,
        "datagrams_dropped",
        "UDP datagrams dropped instead of queued, by reason.",
        ("tunnel", "reason"),
    ),
    "flows_active": (GaugeMetricFamily, "udp_flows_active", "Open UDP flows.", ("tunnel",)),
    "flows_opened": (CounterMetricFamily, "udp_flows_opened", "UDP flows opened.", ("tunnel",)),
    "flows_expired": (CounterMetricFamily, "udp_flows_expired", "Idle flows ended.", ("tunnel",)),
    "sessions": (
        GaugeMetricFamily,
        "server_sessions_active",
        "Sessions open on the server, by client entry and tunnel.",
        ("client", "tunnel"),
    ),
    "rejected": (
        CounterMetricFamily,
        "server_rejected",
        "Handshakes and streams the server refused, by reason.",
        ("reason",),
    ),
    "detached": (
        GaugeMetricFamily,
        "tunnel_detached",
        "1 while the tunnel's session is detached: its connection broke, it is resuming.",
        ("tunnel",),
    ),
    "sessions_detached": (
        GaugeMetricFamily,
        "server_sessions_detached",
        "Sessions kept without a connection, waiting for their client to resume them.",
        ("client", "tunnel"),
    ),
    "detached_bytes": (
        GaugeMetricFamily,
        "server_detached_bytes",
        "Bytes the detached sessions keep for replay (bounded by max_detached_bytes).",
        ("client", "tunnel"),
    ),
    "resumes": (
        CounterMetricFamily,
        "resumes",
        "Session resumes, by result: ok, or the code of the refusal.",
        ("tunnel", "result"),
    ),
    "server_resumes": (
        CounterMetricFamily,
        "server_resumes",
        "Resume requests the server answered, by result: ok, or the refusal's code.",
        ("result",),
    ),
    "replayed": (
        CounterMetricFamily,
        "replayed_bytes",
        "Bytes resent by resumes (what the peer had not received when the connection broke).",
        ("tunnel",),
    ),
    "limits": (
        CounterMetricFamily,
        "limit_hits",
        "Connections, sessions and streams refused or closed by a resource limit, by limit.",
        ("limit",),
    ),
}

# One scrape's samples: family key -> labels (name, value pairs) -> value. Client-side
# series carry `tunnel`; server-side ones `client` (the entry) and `tunnel` (the name the
# client sent), so the two never meet even in a daemon that is both.
_Labels = tuple[tuple[str, str], ...]
_Samples = dict[str, dict[_Labels, float]]


class TunnelCollector(Collector):
    """Turns a ``MetricsSnapshot`` into the metric families of docs/operations.md (Metrics)."""

    def __init__(self, provider: Callable[[], MetricsSnapshot]) -> None:
        """Build the collector.

        Args:
            provider: called once per scrape; must be cheap and must not block.
        """
        self._provider = provider

    def describe(self) -> Iterator[Metric]:
        # Names only: lets the registry reject duplicates without calling the provider.
        yield from self._families({}, MetricsSnapshot())

    def collect(self) -> Iterator[Metric]:
        snapshot = self._provider()
        samples: _Samples = {key: {} for key in _FAMILIES}

        def add(key: str, labels: _Labels, value: float) -> None:
            # Label sets that meet twice add up rather than make a duplicate series.
            samples[key][labels] = samples[key].get(labels, 0) + value

        def add_streams(t: TunnelStats, who: _Labels) -> None:
            add("streams_active", who, t.streams_active)
            add("streams_opened", who, t.streams_opened)
            for reason, count in t.stream_open_failures.items():
                add("stream_open_failures", (*who, ("reason", reason)), count)
            for reason, count in t.stream_resets.items():
                add("stream_resets", (*who, ("reason", reason)), count)
            add("sent", who, t.sent_bytes)
            add("received", who, t.received_bytes)
            for result, count in t.resumes.items():
                add("resumes", (*who, ("result", result)), count)
            add("replayed", who, t.replayed_bytes)
            add("datagrams_sent", who, t.datagrams_sent)
            add("datagrams_received", who, t.datagrams_received)
            for reason, count in t.datagram_drops.items():
                add("datagram_drops", (*who, ("reason", reason)), count)
            add("flows_active", who, t.flows_active)
            add("flows_opened", who, t.flows_opened)
            add("flows_expired", who, t.flows_expired)

        for t in snapshot.tunnels:
            who: _Labels = (("tunnel", t.name),)
            add("up", who, 1 if t.up else 0)
            add("connects", who, t.connects)
            for reason, count in t.connect_failures.items():
                add("connect_failures", (*who, ("reason", reason)), count)
            add("backoff", who, t.backoff_seconds)
            add("detached", who, 1 if t.detached else 0)
            add_streams(t, who)
        for s in snapshot.tunnel_servers:
            where: _Labels = (("tunnel", s.tunnel), ("server", s.server))
            add("server_up", where, 1 if s.up else 0)
            add("server_streams", where, s.streams)
        for c in snapshot.server_clients:
            who = (("client", c.client), ("tunnel", c.name))
            add("sessions", who, c.sessions_active)
            add("sessions_detached", who, c.sessions_detached)
            add("detached_bytes", who, c.detached_bytes)
            add_streams(c, who)
        if snapshot.server is not None:
            for reason, count in snapshot.server.rejected.items():
                add("rejected", (("reason", reason),), count)
            for result, count in snapshot.server.resumes.items():
                add("server_resumes", (("result", result),), count)
        if snapshot.limits is not None:
            for name in LIMIT_NAMES:  # every one, from 0: a fixed set to alert on
                add("limits", (("limit", name),), snapshot.limits.hits.get(name, 0))
        yield from self._families(samples, snapshot)

    @staticmethod
    def _families(samples: _Samples, snapshot: MetricsSnapshot) -> Iterator[Metric]:
        for key, (kind, name, doc, labels) in _FAMILIES.items():
            metric = kind(f"aiowstunnel_{name}", doc, labels=labels)
            suffix = "_total" if kind is CounterMetricFamily else ""
            for pairs, value in sorted(samples.get(key, {}).items()):
                metric.add_sample(metric.name + suffix, dict(pairs), value)
            yield metric
        yield GaugeMetricFamily(
            "aiowstunnel_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded.",
            value=1 if snapshot.reload_ok else 0,
        )
        stamp = GaugeMetricFamily(
            "aiowstunnel_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load.",
        )
        # No sample before a first successful load: 0 would read as 1970.
        if snapshot.reload_timestamp is not None:
            stamp.add_metric([], snapshot.reload_timestamp)
        yield stamp
        build = GaugeMetricFamily(
            "aiowstunnel_build_info", "The running aiowstunnel version.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build


def register_metrics(
    registry: CollectorRegistry, provider: Callable[[], MetricsSnapshot]
) -> TunnelCollector:
    """Register the tunnel collector and the process collector on ``registry``.

    Args:
        registry: a registry of the caller's (never prometheus_client's global one, so that
            tests and several daemons in one process do not collide).
        provider: returns the current snapshot; called once per scrape.

    Returns:
        The registered tunnel collector.

    Raises:
        ValueError: the registry already holds these metric names.
    """
    collector = TunnelCollector(provider)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return collector


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
            raise OSError(
                exc.errno, f"metrics: cannot listen on {where}: {describe(exc)}"
            ) from exc

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
