"""What the application and the operator see, with real daemon processes on both event loops:
a cut stream is a reset (ECONNRESET), a clean end an EOF; a reload never stalls; the server's
metrics and /healthz name each tunnel; debug logs one line per stream open and close."""

from __future__ import annotations

import asyncio
import errno
import json
import re
import signal
import socket
import struct
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiowstunnel.addresses import Address

from ..helpers import echo_roundtrip, start_backend
from .daemon_process import LOCAL, Daemon, free_port, healthz, wait_healthy
from .test_daemon import FAST, head, metric, tokens, tunnel, wait_log

ROOT = Path(__file__).resolve().parents[2]
LOOPS = ["asyncio", "uvloop"]
BLOCK = 64 * 1024


class Backend:
    """A TCP server told what to do by the first line of each connection:

    ``eof``: send BLOCK, read one byte, close normally (FIN). ``rst``: send BLOCK, read one
    byte, reset (SO_LINGER 0). ``slow``: send 16 KiB every 20 ms until the connection
    breaks (at most 30 s). ``who``: send its name and close. ``hold``: answer ``ok``, then
    read until the end, and record how it ended in ``outcomes``.
    """

    def __init__(self, name: bytes = b"backend") -> None:
        self.name = name
        self.outcomes: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._handle, LOCAL, 0, backlog=128)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            command = (await reader.readline()).strip()
            if command in (b"eof", b"rst"):
                writer.write(b"x" * BLOCK)
                await writer.drain()
                await reader.readexactly(1)
                if command == b"rst":
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    writer.transport.abort()
                    return
            elif command == b"slow":
                for _ in range(1500):
                    writer.write(b"s" * 16384)
                    await writer.drain()
                    await asyncio.sleep(0.02)
            elif command == b"who":
                writer.write(self.name)
            elif command == b"hold":
                writer.write(b"ok")
                try:
                    while await reader.read(65536):
                        pass
                    self.outcomes.append("eof")
                except ConnectionResetError:
                    self.outcomes.append("reset")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class App:
    """The application: a plain socket through the tunnel, as socat or ssh would use it."""

    def __init__(self, port: int, command: bytes) -> None:
        self.port = port
        self.command = command
        self.got = 0
        self.moving = asyncio.Event()  # some bytes arrived

    async def run(self, ack: bool = False, timeout: float = 30.0) -> str:
        """Read until the end: ``"eof"``, or ``"reset"`` for ECONNRESET."""
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (LOCAL, self.port))
            await loop.sock_sendall(sock, self.command + b"\n")
            while True:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
                if not data:
                    return "eof"
                self.got += len(data)
                self.moving.set()
                if ack and self.got >= BLOCK:
                    await loop.sock_sendall(sock, b"!")
                    ack = False
        except ConnectionResetError as exc:
            assert exc.errno == errno.ECONNRESET
            return "reset"
        finally:
            sock.close()

    async def reset_after_answer(self) -> None:
        """Send the command, wait for the answer, then reset the connection ourselves."""
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (LOCAL, self.port))
        await loop.sock_sendall(sock, self.command + b"\n")
        assert await asyncio.wait_for(loop.sock_recv(sock, 2), 10) == b"ok"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def server_conf(
    port: int, metrics: int, backend: int, listen: int, shutdown: float, resume: float = 60.0
) -> str:
    return head(metrics, shutdown) + (
        f'[server]\nlisten = "{LOCAL}:{port}"\nping_interval = 1.0\nping_timeout = 1.0\n'
        f"resume_timeout = {resume}\n\n"
        '[[server.client]]\nname = "acc"\ntoken_file = "tokens/acc"\n'
        f'allow_connect = ["{LOCAL}:{backend}"]\nallow_listen = ["{LOCAL}:{listen}"]\n'
    )


def listen_tunnel(name: str, server: int, listen: int, connect: int) -> str:
    return (
        f'\n[[tunnel]]\nname = "{name}"\nmode = "listen"\n'
        f'server = "ws://{LOCAL}:{server}/aiowstunnel"\ntoken_file = "tokens/acc"\n'
        f'listen = "{LOCAL}:{listen}"\nconnect = "{LOCAL}:{connect}"\n{FAST}\n'
    )


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def slow_stream(port: int) -> tuple[App, asyncio.Task[str]]:
    app = App(port, b"slow")
    task = asyncio.create_task(app.run())
    await asyncio.wait_for(app.moving.wait(), 10)
    return app, task


@pytest.mark.timeout(90)
@pytest.mark.parametrize("loop", LOOPS)
async def test_a_cut_is_a_reset_and_a_clean_end_an_eof(tmp_path, loop):
    env = {"AIOWSTUNNEL_EVENT_LOOP": loop}
    backend = await Backend().start()
    sport, smetrics, c1metrics, c2metrics, lc, ll = (free_port() for _ in range(6))
    dirs = [tmp_path / n for n in ("server", "c1", "c2")]
    for folder in dirs:
        folder.mkdir()
        tokens(folder, acc="token-acc")
    # Without resumption: a killed peer ends the session, and its streams with it (with
    # it, they wait resume_timeout for the peer: tests/integration/test_resume.py).
    sconf = server_conf(sport, smetrics, backend.port, ll, shutdown=0.5, resume=0)
    server = Daemon(dirs[0], sconf, env)
    c1 = Daemon(dirs[1], head(c1metrics) + tunnel("conn", sport, lc, backend.port, "acc"), env)
    c2 = Daemon(dirs[2], head(c2metrics) + listen_tunnel("lis", sport, ll, backend.port), env)
    try:
        await asyncio.gather(server.start(), c1.start(), c2.start())
        await wait_healthy(c1metrics)
        await wait_healthy(c2metrics)

        # A backend that closes normally: EOF, every byte there. One that resets: ECONNRESET.
        # And the other way: an application's reset reaches the backend as a reset.
        for entry in (lc, ll):
            app = App(entry, b"eof")
            assert await app.run(ack=True) == "eof" and app.got == BLOCK
            app = App(entry, b"rst")
            assert await app.run(ack=True) == "reset" and app.got == BLOCK
            await App(entry, b"hold").reset_after_answer()
        await until(lambda: len(backend.outcomes) == 2)
        assert backend.outcomes == ["reset", "reset"]

        # Drain timeout: SIGTERM on the server with a stream open each way (0.5 s drain).
        streams = [await slow_stream(lc), await slow_stream(ll)]
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        for _, task in streams:
            assert await asyncio.wait_for(task, 10) == "reset"
        assert await asyncio.wait_for(server.proc.wait(), 10) == 0
        assert "2 streams open at SIGTERM, 0 finished, 2 reset at the drain timeout" in (
            server.log_text()
        )
        assert (
            await metric(
                c1metrics, "aiowstunnel_streams_reset_total", tunnel="conn", reason="peer_reset"
            )
            == 2
        )  # the backend's RST, then the server's drain timeout

        server = Daemon(dirs[0], sconf, env)
        await server.start()
        await wait_healthy(c1metrics)
        await wait_healthy(c2metrics)

        # LISTEN, client SIGKILLed: the application on the server's port gets a reset.
        app, task = await slow_stream(ll)
        assert c2.proc is not None
        c2.proc.kill()
        assert await asyncio.wait_for(task, 10) == "reset"

        # CONNECT, server SIGKILLed: the application on the client's port gets a reset.
        app, task = await slow_stream(lc)
        server.proc.kill()
        assert await asyncio.wait_for(task, 10) == "reset"
        assert (
            await metric(
                c1metrics, "aiowstunnel_streams_reset_total", tunnel="conn", reason="session_lost"
            )
            == 1
        )
        await wait_log(c1, "; 1 stream reset")  # the "tunnel down" line counts what it cut
        # While down, the port still accepts, resets, and says so in the log.
        assert await App(lc, b"eof").run() == "reset"
        await wait_log(c1, "refused a connection from 127.0.0.1:")
        assert "Connect call failed" not in c1.log_text()  # one wording on both loops
        assert await c1.stop() == 0
    finally:
        for daemon in (server, c1, c2):
            daemon.kill()
        backend.close()


@pytest.mark.timeout(60)
async def test_reload_changes_one_tunnel_without_stalling_the_others(tmp_path):
    one, two = await Backend(b"one").start(), await Backend(b"two").start()
    sport, metrics, la, lb, lc = (free_port() for _ in range(5))
    tokens(tmp_path, acc="token-acc")
    top = head(metrics, shutdown=1.5) + (
        f'[server]\nlisten = "{LOCAL}:{sport}"\n\n[[server.client]]\nname = "acc"\n'
        f'token_file = "tokens/acc"\nallow_connect = ["{LOCAL}:{one.port}", "{LOCAL}:{two.port}"]\n'
    )
    b = tunnel("B", sport, lb, one.port, "acc")
    first = top + tunnel("A", sport, la, one.port, "acc") + b
    added = tunnel("C", sport, lc, one.port, "acc")
    second = top + tunnel("A", sport, la, two.port, "acc") + b + added
    daemon = Daemon(tmp_path, first)
    try:
        await daemon.start()
        await wait_healthy(metrics)
        _, old = await slow_stream(la)  # a stream on A's old instance
        unchanged_app, unchanged = await slow_stream(lb)

        async def who(port: int) -> bytes:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(b"who\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer

        daemon.write_config(second)
        sighup = time.monotonic()
        _, ready = await daemon.reload()
        ready_after = time.monotonic() - sighup
        served = {}
        while len(served) < 2:
            for name, port, want in (("C", lc, b"one"), ("A", la, b"two")):
                if name not in served:
                    try:
                        if await who(port) == want:
                            served[name] = time.monotonic() - sighup
                    except (ConnectionError, OSError):
                        pass  # C not listening yet
            assert time.monotonic() - sighup < 5, served
            await asyncio.sleep(0.01)
        print(
            f"\nreload: READY {ready_after:.3f} s, C serves {served['C']:.3f} s, "
            f"A its new target {served['A']:.3f} s after SIGHUP"
        )
        assert ready_after < 1.0 and max(served.values()) < 1.0
        assert not old.done()  # the old instance's stream is still open
        assert "draining: A (1 stream)" in ready["STATUS"]
        status, body = await asyncio.to_thread(healthz, metrics)
        health = json.loads(body)
        assert status == 200 and health["draining"] == {"A": 1}
        assert health["tunnels"] == {"A": "up", "B": "up", "C": "up"}

        # docs/operations.md: the old streams drain up to shutdown_timeout, then are reset.
        assert await asyncio.wait_for(old, 10) == "reset"
        took = time.monotonic() - sighup
        assert 1.0 < took < 1.5 + 2.0, took
        # (a probe of the loop above may have reached the old instance and finished there)
        await wait_log(daemon, "finished, 1 reset at the 1.5 s drain timeout")
        moved = unchanged_app.got
        await until(lambda: unchanged_app.got > moved + BLOCK)  # B never noticed
        assert not unchanged.done()
        assert json.loads((await asyncio.to_thread(healthz, metrics))[1]).get("draining") is None
        assert await daemon.stop() == 0
        assert await asyncio.wait_for(unchanged, 10) == "reset"  # 1.5 s SIGTERM drain
    finally:
        daemon.kill()
        one.close()
        two.close()


def documented_metrics() -> set[str]:
    """The metric names in docs/operations.md's table (first column, backticked)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Metrics and health", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([a-z_*]+)`", line.split("|")[1]))
    return names


def exported_metrics(port: int) -> set[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://{LOCAL}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        names.add("process_*" if name.startswith("process_") else name)
    return names


@pytest.mark.timeout(60)
async def test_server_names_each_tunnel_and_debug_logs_one_line_per_stream(tmp_path):
    backend = await start_backend()
    sport, smetrics, cmetrics = (free_port() for _ in range(3))
    ports = {name: free_port() for name in ("db", "web", "ssh")}
    for folder in (tmp_path / "server", tmp_path / "client"):
        folder.mkdir()
        tokens(folder, acc="token-acc")
    sconf = server_conf(sport, smetrics, backend.port, free_port(), shutdown=2.0)
    cconf = head(cmetrics) + "".join(
        tunnel(name, sport, port, backend.port, "acc") for name, port in ports.items()
    )
    server = Daemon(tmp_path / "server", sconf)
    client = Daemon(tmp_path / "client", cconf)
    try:
        started = time.time()
        await server.start()
        await client.start()
        stamp = "aiowstunnel_config_last_reload_success_timestamp_seconds"
        for port in (smetrics, cmetrics):  # set at start, not only after a first SIGHUP
            assert started - 1 <= await metric(port, stamp) <= time.time()
        await wait_healthy(cmetrics)
        await wait_log(client, "running ")
        assert "3/3 tunnels up" in client.log_text()  # after the first attempts, not before

        before = {d: len(d.log_text().splitlines()) for d in (server, client)}
        for port in ports.values():  # 1 MiB each way per stream: many DATA frames
            sent, received = await echo_roundtrip(Address(LOCAL, port), 1 << 20)
            assert sent == received
        for daemon in (server, client):
            await until(lambda d=daemon: len(re.findall(r"stream \d+ closed", d.log_text())) == 3)
            lines = daemon.log_text().splitlines()[before[daemon] :]
            assert len([x for x in lines if re.search(r"DEBUG .*stream \d+ opened", x)]) == 3
            assert len([x for x in lines if re.search(r"DEBUG .*stream \d+ closed", x)]) == 3
            assert len(lines) == 6, lines  # nothing per chunk, at any level

        for name in ports:
            who = {"client": "acc", "tunnel": name}
            assert await metric(smetrics, "aiowstunnel_server_sessions_active", **who) == 1
            assert await metric(smetrics, "aiowstunnel_streams_opened_total", **who) == 1
            assert await metric(smetrics, "aiowstunnel_sent_bytes_total", **who) == 1 << 20
        _, body = await asyncio.to_thread(healthz, smetrics)
        assert json.loads(body)["server"] == {"acc": {"db": "up", "web": "up", "ssh": "up"}}
        assert "client=acc tunnel=db peer=127.0.0.1:" in server.log_text()
        assert "session opened: connect to" in server.log_text()

        # docs/operations.md's table lists exactly what /metrics prints.
        exported = exported_metrics(smetrics) | exported_metrics(cmetrics)
        assert documented_metrics() == exported
        assert await client.stop() == 0
        assert await server.stop() == 0
    finally:
        client.kill()
        server.kill()
        backend.server.close()
