"""The tunnel notices dead peers and comes back by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

import pytest

import aiowstunnel
from aiowstunnel.addresses import Address
from aiowstunnel.client import Client
from aiowstunnel.server import Server

from .conftest import FAST_BACKOFF, LOCAL, FaultProxy, echo_roundtrip

SERVER_LAG = 0.3  # the server's deadline after the client's
PING = 0.4  # ping_interval = ping_timeout in these tests: a dead peer is declared in <= 0.8 s


async def wait_until(predicate, timeout: float) -> float:
    """Poll ``predicate`` (cheap, in-process state) until true; returns the time it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
@pytest.mark.parametrize("off", ["server", "client"], ids=lambda side: f"no-resume-{side}")
async def test_silent_peer_detected_within_ping_interval_plus_timeout(echo_backend, mode, off):
    """Without resumption (resume_timeout = 0 on either side: today's behaviour), a dead
    peer ends the session on both sides; tests/integration/test_resume.py has the rest."""
    # The server's deadline 0.3 s after the client's, so that the client's own keepalive,
    # not the server's abort relayed by the proxy, is what the client notices (with 0.1 s
    # the two still raced on a loaded machine); each side is held to its own bound below.
    server = Server(
        LOCAL,
        0,
        ping_interval=PING,
        ping_timeout=PING + SERVER_LAG,
        resume_timeout=0 if off == "server" else 60,
    )
    await server.listen()
    proxy = await FaultProxy(server.port).start()
    client = Client(
        mode,
        LOCAL,
        proxy.port,
        LOCAL,
        0,
        LOCAL,
        echo_backend.port,
        ping_interval=PING,
        ping_timeout=PING,
        backoff=FAST_BACKOFF,
        # A reconnect made during the blackhole loses its upgrade request: let it give up
        # soon, rather than after the default 10 s.
        handshake_timeout=2 * PING,
        resume_timeout=0 if off == "client" else 60,
    )
    client.start()
    try:
        await client.wait_up(10)
        server_port_in_listen_mode = client.listen_address.port
        proxy.blackhole = True
        # The reason is read as the tunnel goes down: a reconnect through the blackhole
        # replaces last_error once its handshake times out (2 * PING later).
        client_took = await wait_until(lambda: not client.up and client.last_error, 5)
        down_reason = client.last_error
        server_took = client_took + await wait_until(lambda: not server.sessions, 5)
        print(
            f"\nsilent peer ({mode}): client noticed in {client_took:.2f} s, "
            f"server in {server_took:.2f} s (bound {2 * PING:.1f} s)"
        )
        assert client_took <= 2 * PING + 0.3
        assert server_took <= 2 * PING + SERVER_LAG + 0.3
        assert "peer silent" in down_reason, down_reason
        if mode is aiowstunnel.LISTEN:  # the server released the port at once
            with socket.socket() as probe:
                probe.bind((LOCAL, server_port_in_listen_mode))
        proxy.blackhole = False
        await client.wait_up(10)  # and the tunnel comes back through the healed path
        sent, received = await echo_roundtrip(client.listen_address, 1 << 20)
        assert sent == received
    finally:
        await client.close(1)
        await server.close(1)
        proxy.close()


SERVER_PROGRAM = """
import asyncio, sys
from aiowstunnel.server import Server

async def main():
    server = Server("127.0.0.1", int(sys.argv[1]), ping_interval=0.5, ping_timeout=0.5)
    await server.listen()
    print("READY", server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def start_server_process(port: int) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER_PROGRAM,
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    assert line.startswith(b"READY"), line
    return proc, int(line.split()[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
async def test_server_killed_and_restarted_client_comes_back(echo_backend, mode):
    proc, port = await start_server_process(0)
    listen_port = free_port() if mode is aiowstunnel.LISTEN else 0
    client = Client(
        mode,
        LOCAL,
        port,
        LOCAL,
        listen_port,
        LOCAL,
        echo_backend.port,
        ping_interval=0.5,
        ping_timeout=0.5,
        backoff=FAST_BACKOFF,
        resume_timeout=0,  # today's behaviour; test_resume.py: the resume is refused
    )
    client.start()
    try:
        await client.wait_up(10)
        entry = client.listen_address
        transfer = asyncio.create_task(echo_roundtrip(entry, 1 << 30))
        await wait_until(lambda: client.stats.received_bytes > 8 << 20, 10)  # mid-transfer
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        with pytest.raises((ConnectionError, AssertionError)):  # that stream is cut, honestly
            await transfer
        await wait_until(lambda: not client.up, 5)
        proc, _ = await start_server_process(port)
        took = await wait_until(lambda: client.up, 10)
        print(f"\nserver killed mid-transfer ({mode}): back {took:.2f} s after its return")
        assert took < 2  # backoff max is 0.3 s here
        assert client.listen_address == entry  # LISTEN: the same port is bound again
        sent, received = await echo_roundtrip(client.listen_address, 1 << 20)
        assert sent == received
        assert client.stats.connects == 2
    finally:
        await client.close(1)
        proc.kill()
        await proc.wait()


@pytest.mark.timeout(30)
async def test_client_started_before_server_waits_for_it(echo_backend):
    port = free_port()
    client = Client(
        aiowstunnel.CONNECT,
        LOCAL,
        port,
        LOCAL,
        0,
        LOCAL,
        echo_backend.port,
        backoff=FAST_BACKOFF,
    )
    client.start()
    try:
        await wait_until(lambda: client.stats.connect_failures["connect"] >= 2, 10)
        assert "cannot reach" in client.last_error
        proc, _ = await start_server_process(port)
        try:
            await client.wait_up(10)
            sent, received = await echo_roundtrip(client.listen_address, 1 << 16)
            assert sent == received
        finally:
            proc.kill()
            await proc.wait()
    finally:
        await client.close(1)


@pytest.mark.timeout(30)
async def test_refused_backend_reason_reaches_client_log_and_socket_is_reset(make_tunnel, caplog):
    port = free_port()  # nothing listens there
    tunnel = await make_tunnel(aiowstunnel.CONNECT, port)
    reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    with pytest.raises(ConnectionResetError):  # accepted, then not opened: a reset, not EOF
        await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await wait_until(lambda: tunnel.client.stats.stream_open_failures, 5)
    name = tunnel.client.name  # the server counts by client entry and the tunnel's own name
    assert tunnel.server.client_stats["anonymous", name].stream_open_failures["refused"] == 1
    assert tunnel.client.stats.stream_resets["open_failed"] == 1
    assert any(
        "refused by the other side" in r.getMessage() and "Connection refused" in r.getMessage()
        for r in caplog.records
        if r.name == "aiowstunnel.session"
    )


@pytest.mark.timeout(30)
async def test_client_killed_server_releases_listen_port_and_new_client_binds_it(echo_backend):
    from ..helpers import TunnelProcess

    # Without resumption (test_resume.py: with it, the new client's fresh session replaces
    # the detached one and binds the port as well).
    server = Server(LOCAL, 0, ping_interval=PING, ping_timeout=PING, resume_timeout=0)
    await server.listen()
    listen_port = free_port()

    def listen_client() -> TunnelProcess:
        return TunnelProcess("client", "listen", server.port, echo_backend.port, listen_port)

    async def carries_data() -> None:
        await wait_until(lambda: bool(server.sessions), 10)
        sent, received = await echo_roundtrip(Address(LOCAL, listen_port), 1 << 20)
        assert sent == received

    first = await listen_client().start()
    try:
        await carries_data()
        os.kill(first.proc.pid, signal.SIGKILL)
        took = await wait_until(lambda: not server.sessions, 5)
        print(f"\nclient killed: server released the LISTEN port in {took:.3f} s")
        assert took <= 2 * PING + 0.3  # the kernel's RST usually makes it immediate
        second = await listen_client().start()
        try:
            await carries_data()
        finally:
            await second.stop()
    finally:
        await first.stop()
        await server.close(1)
