"""limits.py: fd-derived defaults, reservations that go back once, the rate-limited log;
and the limit settings as config keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aiowstunnel.config import ConfigError, load_config
from aiowstunnel.exporter import MetricsServer
from aiowstunnel.handshake import RequestRefused, TunnelRequest
from aiowstunnel.limits import LIMIT_NAMES, QuietLog, ServerLimits, Slot, Slots
from aiowstunnel.logs import escape, quote
from aiowstunnel.metrics import register_metrics
from aiowstunnel.stats import LimitStats, MetricsSnapshot

HASH = "0" * 64


@pytest.mark.parametrize(
    ("nofile", "handshakes", "sessions", "streams", "per_client"),
    [(1024, 120, 60, 720, 360), (16384, 512, 1020, 13768, 6884), (256, 24, 12, 144, 72)],
)
def test_fd_budget_covers_handshakes_sessions_and_streams(
    nofile, handshakes, sessions, streams, per_client
):
    limits = ServerLimits().resolve(nofile)
    assert (limits.max_handshakes, limits.max_sessions_total) == (handshakes, sessions)
    assert limits.max_handshakes_per_address == handshakes // 2  # one address: half
    assert (limits.max_streams_total, limits.max_client_streams) == (streams, per_client)
    # one fd each (a session up to two) plus the reserve: never beyond the kernel's limit
    assert handshakes + 2 * sessions + streams + 64 <= nofile


def test_explicit_settings_are_kept_by_resolve():
    limits = ServerLimits(max_handshakes=7, max_streams_total=9, max_client_streams=3)
    assert ServerLimits.resolve(limits, 1 << 20).max_handshakes == 7
    assert limits.resolve(1 << 20).max_client_streams == 3
    assert limits.resolve(1 << 20).max_handshakes_per_address == 3  # half of the 7
    assert ServerLimits(max_handshakes_per_address=40).resolve().max_handshakes_per_address == 40


def test_a_slot_goes_back_once_whatever_path_releases_it():
    total, per = Slots(2), Slots(1)
    slot = Slot((total, None), (per, "a"))
    assert per.full("a") and not per.full("b") and not total.full()
    slot.release()
    slot.release()  # a second path: no effect
    assert total.total == 0 and per.by_key == {}
    assert Slots(0).full("x", limit=1) is False


def test_quiet_log_says_how_many_lines_it_left_out(caplog):
    now = [0.0]
    quiet = QuietLog(
        logging.getLogger("aiowstunnel.test"), burst=2, period=10, clock=lambda: now[0]
    )
    caplog.set_level(logging.WARNING, logger="aiowstunnel.test")
    logged = [quiet.warning("k", "line %d", i) for i in range(1000)]
    assert logged.count(True) == 2
    now[0] = 10.0
    assert quiet.warning("k", "again")
    assert quiet.warning("other", "another key has its own lines")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[2] == "again (998 similar lines left out in the last 10 s)"
    assert len(messages) == 4


def test_escape_keeps_a_peer_in_its_own_line_and_field():
    text = 'a\nb\r\x1b[31m\x85\u202e\\"'
    assert escape(text) == 'a\\x0ab\\x0d\\x1b[31m\\x85\\u202e\\x5c"'
    assert quote(text).count('"') == 2
    assert escape("x" * 500).endswith("...") and len(escape("x" * 500)) == 203


def test_duplicate_single_headers_are_refused_by_name():
    from websockets.datastructures import Headers

    headers = Headers([("X-Aiowstunnel-Mode", "connect"), ("X-Aiowstunnel-Address", "h:1")])
    headers["Authorization"] = "Bearer a"
    headers["Authorization"] = "Bearer b"
    with pytest.raises(RequestRefused, match="duplicate Authorization header"):
        TunnelRequest.from_headers(headers)


def config(server_keys: str = "", metrics_keys: str = "") -> str:
    return (
        f"[metrics]\n{metrics_keys}\n[server]\nlisten = ':9000'\n{server_keys}\n"
        f"[[server.client]]\nname = 'a'\ntoken_sha256 = '{HASH}'\n"
    )


def test_limit_keys_are_read_and_defaults_left_to_the_fd_limit():
    text = config(
        "max_handshakes = 10\nmax_handshakes_per_address = 2\nmax_handshake_bytes = 4096\n"
        "max_sessions_total = 5\nmax_streams_total = 50\nmax_client_streams = 20\n"
        "max_send_buffer = 4194304\nmax_violations = 7\nmax_detached_sessions = 9\n"
        "max_detached_per_client = 3\nmax_detached_bytes = 1048576\n",
        "max_connections = 3\n",
    )
    loaded = load_config(text, Path("/etc"))
    assert loaded.server is not None
    assert loaded.server.limits == ServerLimits(10, 2, 4096, 5, 50, 20, 4194304, 7, 9, 3, 1 << 20)
    assert loaded.metrics.max_connections == 3
    default = load_config(config(), Path("/etc"))
    assert default.server is not None and default.server.limits == ServerLimits()
    assert default.server.limits.max_streams_total is None  # derived when the server starts


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ("max_handshakes = 0", "server.max_handshakes: must be between 1 and"),
        ("max_handshake_bytes = 100", "server.max_handshake_bytes: must be between 1024"),
        ("max_send_buffer = 1024", "server.max_send_buffer: must be between 2097152"),
        ("max_detached_bytes = 0", "server.max_detached_bytes: must be between 1 and"),
        ("max_detached_sesions = 5", "server.max_detached_sesions: unknown key (did you mean"),
        ("max_stream_total = 5", "server.max_stream_total: unknown key (did you mean"),
    ],
)
def test_bad_limit_keys_are_errors(keys, error):
    with pytest.raises(ConfigError) as info:
        load_config(config(keys), Path("/etc"))
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors


async def test_limit_hits_are_a_fixed_label_set_and_the_exporter_caps_connections():
    stats = LimitStats()
    stats.hits["handshakes"] = 3
    registry = CollectorRegistry()
    register_metrics(registry, lambda: MetricsSnapshot(limits=stats))
    srv = MetricsServer(registry, max_connections=2, limit_stats=stats, request_timeout=5)
    await srv.start("127.0.0.1", 0)
    try:
        idle = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(2)]
        for _ in range(1000):
            if len(srv._handlers) == 2:
                break
            await asyncio.sleep(0.001)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        # closed at once (an abort: a reset, or EOF if it came first)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert stats.hits["metrics_connections"] == 1
        for _, w in idle:
            w.close()
        for _ in range(1000):
            if not srv._handlers:
                break
            await asyncio.sleep(0.001)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        body = (await asyncio.wait_for(reader.read(), 5)).partition(b"\r\n\r\n")[2].decode()
        writer.close()
    finally:
        await srv.close()
    hits = {
        s.labels["limit"]: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == "aiowstunnel_limit_hits_total"
    }
    assert set(hits) == set(LIMIT_NAMES)
    assert hits["handshakes"] == 3 and hits["metrics_connections"] == 1
