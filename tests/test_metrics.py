"""Tests for aiowstunnel.metrics and .exporter: scrape the real exporter on loopback and read
the numbers."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import aiowstunnel
from aiowstunnel.exporter import MetricsServer
from aiowstunnel.metrics import register_metrics
from aiowstunnel.stats import MetricsSnapshot, ServerStats, TunnelStats

pytestmark = pytest.mark.timeout(20)
BOUND = 5.0  # seconds: the longest any single exchange may take


@dataclass
class Daemon:
    """Stands in for the daemon: owns the counters and answers the provider and health."""

    snapshot: MetricsSnapshot = field(default_factory=MetricsSnapshot)
    health: dict[str, bool] = field(default_factory=dict)
    fail: bool = False

    def provide(self) -> MetricsSnapshot:
        if self.fail:
            raise RuntimeError("provider bug")
        return self.snapshot


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


@pytest.fixture
async def server(daemon: Daemon) -> AsyncIterator[MetricsServer]:
    registry = CollectorRegistry()
    register_metrics(registry, daemon.provide)
    srv = MetricsServer(registry, lambda: daemon.health, request_timeout=0.5)
    await srv.start("127.0.0.1", 0)
    yield srv
    await asyncio.wait_for(srv.close(), BOUND)


async def exchange(port: int, request: bytes) -> Response:
    """Send raw bytes, read until the server closes, and split the HTTP response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        raw = await asyncio.wait_for(reader.read(), BOUND)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), headers, body)


async def get(port: int, path: str) -> Response:
    return await exchange(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


def urllib_get(port: int, path: str) -> tuple[int, str, bytes]:
    """A real HTTP client, run in a thread: (status, content type, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=BOUND) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def fill(daemon: Daemon) -> tuple[TunnelStats, TunnelStats]:
    app = TunnelStats(
        "app",
        up=True,
        connects=3,
        connect_failures=Counter({"refused": 2, "timeout": 1}),
        backoff_seconds=0.0,
        streams_active=2,
        streams_opened=10,
        stream_open_failures=Counter({"connect refused": 1}),
        stream_resets=Counter({"session_lost": 3, "peer_reset": 1}),
        sent_bytes=1000,
        received_bytes=2000,
    )
    db = TunnelStats("db", up=False, connects=1, backoff_seconds=4.5)
    branch = TunnelStats(
        "db",
        client="branch-office",
        streams_active=1,
        streams_opened=7,
        stream_open_failures=Counter({"not allowed": 4}),
        sent_bytes=50,
        received_bytes=60,
        sessions_active=2,
    )
    daemon.snapshot = MetricsSnapshot(
        tunnels=[app, db],
        server_clients=[branch],
        server=ServerStats(rejected=Counter({"bad token": 3, "too many sessions": 1})),
        reload_ok=False,
        reload_timestamp=1_795_000_000.5,
    )
    return app, branch


async def test_scrape_reports_every_counter(server: MetricsServer, daemon: Daemon) -> None:
    fill(daemon)
    status, ctype, body = await asyncio.to_thread(urllib_get, server.port, "/metrics")
    assert status == 200
    assert ctype == CONTENT_TYPE_LATEST
    s = parse(body)
    assert value(s, "aiowstunnel_tunnel_up", tunnel="app") == 1
    assert value(s, "aiowstunnel_tunnel_up", tunnel="db") == 0
    assert value(s, "aiowstunnel_tunnel_connects_total", tunnel="app") == 3
    failures = "aiowstunnel_tunnel_connect_failures_total"
    assert value(s, failures, tunnel="app", reason="refused") == 2
    assert value(s, failures, tunnel="app", reason="timeout") == 1
    assert value(s, "aiowstunnel_tunnel_backoff_seconds", tunnel="db") == 4.5
    assert value(s, "aiowstunnel_streams_active", tunnel="app") == 2
    assert value(s, "aiowstunnel_streams_opened_total", tunnel="app") == 10
    open_failures = "aiowstunnel_stream_open_failures_total"
    assert value(s, open_failures, tunnel="app", reason="connect refused") == 1
    assert value(s, "aiowstunnel_sent_bytes_total", tunnel="app") == 1000
    assert value(s, "aiowstunnel_received_bytes_total", tunnel="app") == 2000
    resets = "aiowstunnel_streams_reset_total"
    assert value(s, resets, tunnel="app", reason="session_lost") == 3
    assert value(s, resets, tunnel="app", reason="peer_reset") == 1
    # Server side: the client entry's name next to the tunnel's own.
    branch = {"client": "branch-office", "tunnel": "db"}
    assert value(s, "aiowstunnel_server_sessions_active", **branch) == 2
    assert value(s, "aiowstunnel_streams_active", **branch) == 1
    assert value(s, "aiowstunnel_streams_opened_total", **branch) == 7
    assert value(s, open_failures, **branch, reason="not allowed") == 4
    assert value(s, "aiowstunnel_sent_bytes_total", **branch) == 50
    assert value(s, "aiowstunnel_received_bytes_total", **branch) == 60
    assert ("aiowstunnel_tunnel_up", frozenset(branch.items())) not in s
    assert value(s, "aiowstunnel_server_rejected_total", reason="bad token") == 3
    assert value(s, "aiowstunnel_server_rejected_total", reason="too many sessions") == 1
    assert value(s, "aiowstunnel_config_last_reload_successful") == 0
    stamp = "aiowstunnel_config_last_reload_success_timestamp_seconds"
    assert value(s, stamp) == 1_795_000_000.5
    assert value(s, "aiowstunnel_build_info", version=aiowstunnel.__version__) == 1
    assert value(s, "process_cpu_seconds_total") > 0  # the process collector
    assert value(s, "process_resident_memory_bytes") > 0


async def test_counters_are_read_at_scrape_time(server: MetricsServer, daemon: Daemon) -> None:
    app, _ = fill(daemon)
    before = parse((await get(server.port, "/metrics")).body)
    app.sent_bytes += 4096
    app.up = False
    daemon.snapshot.reload_ok = True
    after = parse((await get(server.port, "/metrics")).body)
    sent = "aiowstunnel_sent_bytes_total"
    assert value(after, sent, tunnel="app") - value(before, sent, tunnel="app") == 4096
    assert value(after, "aiowstunnel_tunnel_up", tunnel="app") == 0
    assert value(after, "aiowstunnel_config_last_reload_successful") == 1


async def test_empty_snapshot(server: MetricsServer) -> None:
    response = await get(server.port, "/metrics")
    assert response.status == 200
    s = parse(response.body)
    assert value(s, "aiowstunnel_config_last_reload_successful") == 1
    # No successful load yet: no timestamp sample rather than a misleading 0.
    names = {name for name, _ in s}
    assert "aiowstunnel_config_last_reload_success_timestamp_seconds" not in names
    assert not any(name.startswith("aiowstunnel_tunnel_") for name in names)


async def test_same_name_on_both_sides_stays_apart(server: MetricsServer, daemon: Daemon) -> None:
    daemon.snapshot = MetricsSnapshot(
        tunnels=[TunnelStats("hub", up=True, sent_bytes=10)],
        server_clients=[TunnelStats("hub", client="hub", sent_bytes=5, sessions_active=1)],
    )
    body = (await get(server.port, "/metrics")).body
    # A duplicate series would make the parser (and Prometheus) reject the scrape.
    s = parse(body)
    assert value(s, "aiowstunnel_sent_bytes_total", tunnel="hub") == 10
    assert value(s, "aiowstunnel_sent_bytes_total", client="hub", tunnel="hub") == 5


def test_registry_rejects_a_second_registration() -> None:
    registry = CollectorRegistry()
    register_metrics(registry, MetricsSnapshot)
    with pytest.raises(ValueError):
        register_metrics(registry, MetricsSnapshot)


@pytest.mark.parametrize(
    ("health", "status", "expected"),
    [
        ({"app": True, "db": True}, 200, {"status": "ok", "tunnels": {"app": "up", "db": "up"}}),
        (
            {"app": True, "db": False},
            503,
            {"status": "degraded", "tunnels": {"app": "up", "db": "down"}},
        ),
        ({}, 200, {"status": "ok", "tunnels": {}}),
    ],
)
async def test_healthz(
    server: MetricsServer, daemon: Daemon, health: dict[str, bool], status: int, expected: dict
) -> None:
    daemon.health = health
    code, ctype, body = await asyncio.to_thread(urllib_get, server.port, "/healthz")
    assert code == status
    assert ctype == "application/json"
    assert json.loads(body) == expected


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"GET / HTTP/1.0\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE /healthz HTTP/1.1\r\n\r\n", 405),
        (b"hello\r\n\r\n", 400),
        (b"GET /metrics?name[]=x HTTP/1.1\n\n", 200),  # bare LF and a query string
    ],
)
async def test_other_requests(server: MetricsServer, request_bytes: bytes, status: int) -> None:
    response = await exchange(server.port, request_bytes)
    assert response.status == status
    assert response.headers["connection"] == "close"
    assert int(response.headers["content-length"]) == len(response.body)
    if status == 405:
        assert response.headers["allow"] == "GET"


async def test_provider_failure_costs_one_scrape(server: MetricsServer, daemon: Daemon) -> None:
    daemon.fail = True
    assert (await get(server.port, "/metrics")).status == 500
    daemon.fail = False
    assert (await get(server.port, "/metrics")).status == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 9000,  # one endless line
        b"GET /metrics HTTP/1.1\r\n" + b"X-Many: header\r\n" * 600,  # many lines, no end
    ],
)
async def test_oversized_request_is_refused(server: MetricsServer, request_bytes: bytes) -> None:
    response = await exchange(server.port, request_bytes)
    assert response.status == 431


async def test_slow_request_times_out(server: MetricsServer) -> None:
    # The head never ends: the server answers 408 once request_timeout (0.5 s) passes.
    response = await exchange(server.port, b"GET /metrics HTTP/1.1\r\n")
    assert response.status == 408


async def test_close_drops_a_stalled_client() -> None:
    srv = MetricsServer(CollectorRegistry(), request_timeout=60)
    await srv.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    await writer.drain()
    # Let the loop accept the connection (no timer: each turn runs the ready callbacks), so
    # that a request is truly in progress; close must not wait its 60 s timeout.
    for _ in range(10_000):
        if srv._handlers:
            break
        await asyncio.sleep(0)
    assert srv._handlers, "the server never accepted the connection"
    await asyncio.wait_for(srv.close(), BOUND)
    assert await asyncio.wait_for(reader.read(), BOUND) == b""
    writer.close()
    await asyncio.wait_for(srv.close(), BOUND)  # twice is fine


async def test_bind_error_names_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = MetricsServer(CollectorRegistry())
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await srv.start("127.0.0.1", port)


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    srv = MetricsServer(CollectorRegistry(), lambda: {"app": True})
    try:
        await srv.start("::1", 0)
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    try:
        reader, writer = await asyncio.open_connection("::1", srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), BOUND)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        await srv.close()


# -- several servers per tunnel, and the drain a balancer sees (issue 17) -------------------


async def test_each_server_of_a_tunnel_has_its_series(
    server: MetricsServer, daemon: Daemon
) -> None:
    from aiowstunnel.stats import TunnelServer

    daemon.snapshot = MetricsSnapshot(
        tunnels=[TunnelStats("web", up=True)],
        tunnel_servers=[
            TunnelServer("web", "ws://a:9000/aiowstunnel", True, 3, "a"),
            TunnelServer("web", "ws://b:9000/aiowstunnel", False, 0),
        ],
    )
    s = parse((await get(server.port, "/metrics")).body)
    a, b = "ws://a:9000/aiowstunnel", "ws://b:9000/aiowstunnel"
    assert value(s, "aiowstunnel_tunnel_server_up", tunnel="web", server=a) == 1
    assert value(s, "aiowstunnel_tunnel_server_up", tunnel="web", server=b) == 0
    assert value(s, "aiowstunnel_tunnel_server_streams_active", tunnel="web", server=a) == 3


async def test_healthz_fails_while_stopping_and_lists_each_server(
    server: MetricsServer, daemon: Daemon
) -> None:
    from aiowstunnel.stats import Health, TunnelServer

    servers = [TunnelServer("web", "ws://a:1/aiowstunnel", True, 2, "edge-a")]
    daemon.health = Health(tunnels={"web": True}, servers=servers)
    code, _, body = await asyncio.to_thread(urllib_get, server.port, "/healthz")
    assert code == 200
    assert json.loads(body)["servers"] == {
        "web": {"ws://a:1/aiowstunnel": {"state": "up", "streams": 2, "name": "edge-a"}}
    }
    daemon.health = Health(tunnels={"web": True}, stopping=True)
    code, _, body = await asyncio.to_thread(urllib_get, server.port, "/healthz")
    assert code == 503
    assert json.loads(body) == {"status": "stopping", "stopping": True, "tunnels": {"web": "up"}}
