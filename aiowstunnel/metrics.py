"""Prometheus metrics: a collector that reads the tunnels' plain counters (stats.py) at scrape
time and turns them into the metric families of docs/operations.md (Metrics). Nothing here
runs in the data path: a scrape is the only time prometheus_client sees the counters. The
HTTP side (GET /metrics, GET /healthz) is ``exporter``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import __version__
from .limits import LIMIT_NAMES
from .stats import MetricsSnapshot, TunnelStats

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
