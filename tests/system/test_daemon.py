"""The real daemon process: check, READY, reload by diff, permissions, metrics, stop."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiowstunnel.addresses import Address
from aiowstunnel.client import Client

from ..helpers import FAST_BACKOFF, echo_roundtrip, start_backend
from .daemon_process import LOCAL, Daemon, free_port, healthz, scrape, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
FAST = (
    "backoff = { initial = 0.05, max = 0.3, factor = 2.0 }\nping_interval = 1.0\nping_timeout = 1.0"
)


def tokens(folder: Path, **names: str) -> None:
    (folder / "tokens").mkdir(exist_ok=True)
    for name, token in names.items():
        (folder / "tokens" / name).write_text(token + "\n")


def server_section(port: int, clients: dict[str, list[str]]) -> str:
    text = f'[server]\nlisten = "{LOCAL}:{port}"\nping_interval = 1.0\nping_timeout = 1.0\n'
    for name, allow in clients.items():
        rules = ", ".join(f'"{r}"' for r in allow)
        text += (
            f'\n[[server.client]]\nname = "{name}"\ntoken_file = "tokens/{name}"\n'
            f"allow_connect = [{rules}]\n"
        )
    return text


def tunnel(name: str, server_port: int, listen: int, connect: int, token: str) -> str:
    return (
        f'\n[[tunnel]]\nname = "{name}"\nmode = "connect"\n'
        f'server = "ws://{LOCAL}:{server_port}/aiowstunnel"\ntoken_file = "tokens/{token}"\n'
        f'listen = "{LOCAL}:{listen}"\nconnect = "{LOCAL}:{connect}"\n{FAST}\n'
    )


def head(metrics_port: int, shutdown: float = 2.0) -> str:
    return (
        f'[metrics]\nlisten = "{LOCAL}:{metrics_port}"\n\n[log]\nlevel = "debug"\n\n'
        f"[daemon]\nshutdown_timeout = {shutdown}\n\n"
    )


async def wait_log(daemon: Daemon, text: str, timeout: float = 10.0) -> None:
    """Wait until the daemon has logged ``text`` (its log is written as events happen)."""
    deadline = time.monotonic() + timeout
    while text not in daemon.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout} s"
        await asyncio.sleep(0.05)


async def metric(port: int, name: str, **labels: str) -> float | None:
    samples = await asyncio.to_thread(scrape, port)
    return samples.get((name, tuple(sorted(labels.items()))))


class PacedStream:
    """An echo stream that keeps sending 256 KiB chunks until told to finish."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.count = 0
        self.finish = asyncio.Event()

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection(self.address.host, self.address.port)

        async def send() -> None:
            while not self.finish.is_set():
                chunk = os.urandom(256 * 1024)
                self.sent.update(chunk)
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write_eof()

        sender = asyncio.create_task(send())
        while data := await reader.read(1 << 20):
            self.received.update(data)
            self.count += len(data)
        await sender
        writer.close()


# -- aiowstunnel check ------------------------------------------------------------------

BROKEN = [
    ('[metrics]\nlisten = "nowhere"\n', "metrics.listen"),
    ('[metrics]\nlisten = ":99999"\n', "metrics.listen"),
    ("[metrics]\nport = 9100\n", "metrics.port: unknown key"),
    ('[log]\nlevel = "loud"\n', "log.level"),
    ("[daemon]\nshutdown_timeout = -1\n", "daemon.shutdown_timeout"),
    ('[server]\nlisten = "127.0.0.1:9000"\n', "server"),  # no client: never an open relay
    ('[server]\nlisten = "127.0.0.1:9000"\npath = "nope"\n', "server.path"),
    ('[server]\nlisten = "127.0.0.1:9000"\ntls_cert = "a.crt"\n', "server.tls_cert: needs tls_key"),
    ('[[server.client]]\nname = "x"\ntoken_sha256 = "00"\n', "token_sha256"),
    ('[[tunnel]]\nname = "t"\nmode = "sideways"\n', "tunnel[0].mode"),
    ('[[tunnel]]\nname = "t"\nmode = "connect"\nserver = "http://h:1/"\n', "tunnel[0].server"),
    ('[[tunnel]]\nconect = "x"\n', "tunnel[0].conect: unknown key"),
    ('[[tunnel]]\nname = "bad name!"\n', "tunnel[0].name"),
    ('[[tunnel]]\nname = "t"\ntoken_file = "missing"\n', "tunnel[0].token_file"),
    ('[[tunnel]]\nname = "t"\nping_interval = "fast"\n', "tunnel[0].ping_interval"),
    ('[[tunnel]]\nname = "t"\nbackoff = { initial = 5.0, max = 1.0 }\n', "tunnel[0].backoff"),
    ('[[tunnel]]\nname = "t"\nlisten = "[::1:80"\n', "tunnel[0].listen"),
    ('[[tunnel]]\nname = "a"\n[[tunnel]]\nname = "a"\n', "tunnel[1].name"),
    ("[tunnel\n", "TOML syntax error"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("text", "key"), BROKEN, ids=[k for _, k in BROKEN])
def test_check_rejects_broken_config_naming_the_key(tmp_path, text, key):
    path = tmp_path / "aiowstunnel.toml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "aiowstunnel", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert key in result.stderr, result.stderr


@pytest.mark.timeout(60)
def test_check_accepts_shipped_example_and_reports_all_errors_at_once(tmp_path):
    example = ROOT / "etc" / "aiowstunnel.toml"
    ok = subprocess.run(
        [sys.executable, "-m", "aiowstunnel", "check", "-c", str(example)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    path = tmp_path / "two.toml"
    path.write_text('[log]\nlevel = "loud"\n\n[[tunnel]]\nconect = "x"\n')
    bad = subprocess.run(
        [sys.executable, "-m", "aiowstunnel", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
    assert "log.level" in bad.stderr and "tunnel[0].conect" in bad.stderr


# -- lifecycle --------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_ready_reload_by_diff_invalid_reload_and_stop(tmp_path):
    backend = await start_backend()
    server, metrics, a, b, c = (free_port() for _ in range(5))
    tokens(tmp_path, t="token-t")
    top = head(metrics) + server_section(server, {"t": [f"{LOCAL}:{backend.port}"]})
    first = (
        top + tunnel("A", server, a, backend.port, "t") + tunnel("B", server, b, backend.port, "t")
    )
    second = (
        top + tunnel("A", server, a, backend.port, "t") + tunnel("C", server, c, backend.port, "t")
    )
    daemon = Daemon(tmp_path, first)
    try:
        await daemon.start()
        # READY came after every listener was bound: they accept connections right now.
        for port in (a, b, metrics, server):
            _, writer = await asyncio.open_connection(LOCAL, port)
            writer.close()
        await wait_healthy(metrics)

        stream = PacedStream(Address(LOCAL, a))
        transfer = asyncio.create_task(stream.run())
        while stream.count < 1 << 20:  # the stream is moving before the reload
            await asyncio.sleep(0.01)

        daemon.write_config(second)
        reloading, ready = await daemon.reload()
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert abs(now_usec - int(reloading["MONOTONIC_USEC"])) < 10_000_000
        moved_at_reload = stream.count
        await wait_healthy(metrics)  # C is up

        # The added tunnel carries data; the removed one's listener is gone.
        sent, received = await echo_roundtrip(Address(LOCAL, c), 1 << 20)
        assert sent == received
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCAL, b)
        # The unchanged tunnel's stream went on through the reload, intact.
        while stream.count < moved_at_reload + (1 << 20):
            await asyncio.sleep(0.01)
        stream.finish.set()
        await asyncio.wait_for(transfer, 20)
        assert stream.sent.digest() == stream.received.digest()
        assert await metric(metrics, "aiowstunnel_config_last_reload_successful") == 1
        assert await metric(metrics, "aiowstunnel_tunnel_up", tunnel="C") == 1
        assert await metric(metrics, "aiowstunnel_tunnel_up", tunnel="B") is None
        assert await metric(metrics, "aiowstunnel_tunnel_connects_total", tunnel="A") == 1

        # An invalid edit: the old config keeps running, the gauge says so.
        daemon.write_config(second + '\n[[tunnel]]\nname = "D"\nconect = "typo"\n')
        _, ready = await daemon.reload()
        assert "FAILED" in ready["STATUS"]
        assert await metric(metrics, "aiowstunnel_config_last_reload_successful") == 0
        sent, received = await echo_roundtrip(Address(LOCAL, a), 1 << 20)
        assert sent == received
        assert "tunnel[2].conect: unknown key" in daemon.log_text()

        # SIGTERM: STOPPING=1, exit 0 within shutdown_timeout (2 s here).
        started = time.monotonic()
        assert daemon.proc is not None
        daemon.proc.send_signal(15)
        await daemon.notify.wait_for("STOPPING", "1")
        assert await asyncio.wait_for(daemon.proc.wait(), 10) == 0
        assert time.monotonic() - started < 2.0 + 2.0
    finally:
        daemon.kill()
        backend.server.close()


@pytest.mark.timeout(60)
async def test_watchdog_pings_at_half_watchdog_usec(tmp_path):
    metrics = free_port()
    daemon = Daemon(tmp_path, head(metrics), env={"WATCHDOG_USEC": "400000"})
    try:
        await daemon.start()
        stamps = []
        while len(stamps) < 8:
            fields = await daemon.notify.wait_for("WATCHDOG", "1", timeout=5)
            assert fields["WATCHDOG"] == "1"
            stamps.append(time.monotonic())
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
        median = gaps[len(gaps) // 2]
        assert 0.1 < median < 0.35, gaps  # half of 0.4 s
        assert await daemon.stop() == 0
    finally:
        daemon.kill()


@pytest.mark.timeout(90)
async def test_permission_removed_on_reload_closes_only_that_clients_sessions(tmp_path):
    backend = await start_backend()
    server, metrics, la, lb = (free_port() for _ in range(4))
    tokens(tmp_path, alpha="token-alpha", beta="token-beta")
    allowed = [f"{LOCAL}:{backend.port}"]
    tunnels = tunnel("TA", server, la, backend.port, "alpha") + tunnel(
        "TB", server, lb, backend.port, "beta"
    )
    before = head(metrics) + server_section(server, {"alpha": allowed, "beta": allowed}) + tunnels
    after = head(metrics) + server_section(server, {"alpha": [], "beta": allowed}) + tunnels
    daemon = Daemon(tmp_path, before)
    try:
        await daemon.start()
        await wait_healthy(metrics)
        stream = PacedStream(Address(LOCAL, lb))
        transfer = asyncio.create_task(stream.run())
        while stream.count < 1 << 20:
            await asyncio.sleep(0.01)
        daemon.write_config(after)
        await daemon.reload()
        health = await wait_healthy(metrics, want=503)
        assert health["tunnels"] == {"TA": "down", "TB": "up"}
        marker = stream.count
        while stream.count < marker + (1 << 20):  # beta's stream keeps moving
            await asyncio.sleep(0.01)
        stream.finish.set()
        await asyncio.wait_for(transfer, 20)
        assert stream.sent.digest() == stream.received.digest()
        await wait_log(daemon, "403")  # alpha's reconnect is refused with the reason
        log = daemon.log_text()
        assert "client=alpha tunnel=TA peer=" in log and "closing the session" in log
        assert f"connect to {LOCAL}:{backend.port} is no longer allowed" in log
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
        backend.server.close()


@pytest.mark.timeout(90)
async def test_metrics_move_with_traffic_failures_reconnects_and_healthz(tmp_path):
    backend = await start_backend()
    server, server_metrics, client_metrics, listen = (free_port() for _ in range(4))
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    server_dir.mkdir()
    client_dir.mkdir()
    tokens(server_dir, t="token-t")
    tokens(client_dir, t="token-t")
    server_conf = head(server_metrics) + server_section(server, {"t": [f"{LOCAL}:{backend.port}"]})
    server_daemon = Daemon(server_dir, server_conf)
    client_daemon = Daemon(
        client_dir, head(client_metrics) + tunnel("T", server, listen, backend.port, "t")
    )
    try:
        await server_daemon.start()
        await client_daemon.start()
        await wait_healthy(client_metrics)
        m = client_metrics
        assert await metric(m, "aiowstunnel_tunnel_up", tunnel="T") == 1
        assert await metric(m, "aiowstunnel_tunnel_connects_total", tunnel="T") == 1

        sent, received = await echo_roundtrip(Address(LOCAL, listen), 1 << 20)
        assert sent == received
        assert await metric(m, "aiowstunnel_sent_bytes_total", tunnel="T") >= 1 << 20
        assert await metric(m, "aiowstunnel_received_bytes_total", tunnel="T") >= 1 << 20
        assert await metric(m, "aiowstunnel_streams_opened_total", tunnel="T") == 1
        s = server_metrics
        assert await metric(s, "aiowstunnel_server_sessions_active", client="t", tunnel="T") == 1
        assert await metric(s, "aiowstunnel_streams_opened_total", client="t", tunnel="T") == 1

        # A client with a wrong token: counted on the server by reason.
        intruder = Client(
            "connect",
            LOCAL,
            server,
            LOCAL,
            0,
            LOCAL,
            backend.port,
            token="wrong",
            backoff=FAST_BACKOFF,
        )
        intruder.start()
        while intruder.stats.connect_failures["bad_token"] < 2:
            await asyncio.sleep(0.02)
        await intruder.close(1)
        assert await metric(s, "aiowstunnel_server_rejected_total", reason="bad_token") >= 2

        # The server goes away: the tunnel is down, failures count, /healthz says 503.
        assert await server_daemon.stop() == 0
        health = await wait_healthy(m, want=503)
        assert health["tunnels"] == {"T": "down"}
        assert await metric(m, "aiowstunnel_tunnel_up", tunnel="T") == 0
        deadline = time.monotonic() + 10
        while not await metric(
            m, "aiowstunnel_tunnel_connect_failures_total", tunnel="T", reason="connect"
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        # It comes back: 200, and one more connect.
        server_daemon = Daemon(server_dir, server_conf)
        await server_daemon.start()
        await wait_healthy(m, want=200)
        assert await metric(m, "aiowstunnel_tunnel_connects_total", tunnel="T") == 2
        assert await client_daemon.stop() == 0
        assert await server_daemon.stop() == 0
    finally:
        client_daemon.kill()
        server_daemon.kill()
        backend.server.close()


@pytest.mark.timeout(60)
async def test_reload_rebinds_a_changed_server_listener(tmp_path):
    backend = await start_backend()
    old, new, metrics, listen = (free_port() for _ in range(4))
    tokens(tmp_path, t="token-t")
    allow = {"t": [f"{LOCAL}:{backend.port}"]}

    def conf(server_port: int) -> str:
        return (
            head(metrics)
            + server_section(server_port, allow)
            + tunnel("T", server_port, listen, backend.port, "t")
        )

    daemon = Daemon(tmp_path, conf(old))
    try:
        await daemon.start()
        await wait_healthy(metrics)
        daemon.write_config(conf(new))
        await daemon.reload()
        await wait_healthy(metrics)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCAL, old)
        sent, received = await echo_roundtrip(Address(LOCAL, listen), 1 << 20)
        assert sent == received
        assert f"listening on ws://{LOCAL}:{new}/aiowstunnel" in daemon.log_text()
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
        backend.server.close()


@pytest.mark.timeout(60)
async def test_tunnel_port_in_use_is_a_clear_error_and_others_run(tmp_path):
    backend = await start_backend()
    busy = await start_backend()  # holds the port the first tunnel wants
    server, metrics, free = (free_port() for _ in range(3))
    tokens(tmp_path, t="token-t")
    conf = (
        head(metrics)
        + server_section(server, {"t": [f"{LOCAL}:{backend.port}"]})
        + tunnel("blocked", server, busy.port, backend.port, "t")
        + tunnel("fine", server, free, backend.port, "t")
    )
    daemon = Daemon(tmp_path, conf)
    try:
        await daemon.start()  # READY despite the blocked port
        deadline = time.monotonic() + 10
        while await metric(metrics, "aiowstunnel_tunnel_up", tunnel="fine") != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        sent, received = await echo_roundtrip(Address(LOCAL, free), 1 << 20)
        assert sent == received
        assert f"cannot listen on {LOCAL}:{busy.port}: Address already in use" in daemon.log_text()
        failures = await metric(
            metrics,
            "aiowstunnel_tunnel_connect_failures_total",
            tunnel="blocked",
            reason="listen_failed",
        )
        assert failures >= 1
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
        backend.server.close()
        busy.server.close()


@pytest.mark.timeout(60)
async def test_reload_moves_the_metrics_exporter(tmp_path):
    old, new = free_port(), free_port()
    daemon = Daemon(tmp_path, head(old))
    try:
        await daemon.start()
        assert (await asyncio.to_thread(healthz, old))[0] == 200
        daemon.write_config(head(new))
        await daemon.reload()
        assert (await asyncio.to_thread(healthz, new))[0] == 200
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCAL, old)
        assert await metric(new, "aiowstunnel_config_last_reload_successful") == 1
        assert await daemon.stop() == 0
    finally:
        daemon.kill()


@pytest.mark.timeout(60)
async def test_exporter_turned_on_by_reload_counts_what_came_before(tmp_path):
    # Without [metrics] the daemon never loads prometheus_client (docs/performance.md,
    # round 4); the counters are kept all the same, and a reload that adds the exporter
    # shows them.
    backend = await start_backend()
    server, listen, metrics = free_port(), free_port(), free_port()
    tokens(tmp_path, t="token-t")
    body = server_section(server, {"t": [f"{LOCAL}:{backend.port}"]}) + tunnel(
        "T", server, listen, backend.port, "t"
    )
    off = '[metrics]\nenabled = false\n\n[log]\nlevel = "debug"\n\n'
    daemon = Daemon(tmp_path, off + body)
    try:
        await daemon.start()
        await wait_log(daemon, "tunnel up: connect")
        for _ in range(3):
            sent, received = await echo_roundtrip(Address(LOCAL, listen), 64 << 10)
            assert sent == received
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCAL, metrics)
        daemon.write_config(head(metrics) + body)
        await daemon.reload()
        assert await metric(metrics, "aiowstunnel_streams_opened_total", tunnel="T") == 3
        assert await metric(metrics, "aiowstunnel_tunnel_up", tunnel="T") == 1
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
        backend.server.close()


@pytest.mark.timeout(30)
def test_a_daemon_without_an_exporter_does_not_load_prometheus_client():
    code = (
        "import sys, aiowstunnel.cli, aiowstunnel.daemon, aiowstunnel.supervisor\n"
        "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout.strip() == "[]"
