"""wss:// with a test CA, and mutual TLS that refuses a client without a certificate."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import pytest
import trustme

import aiowstunnel
from aiowstunnel import tcp
from aiowstunnel.client import Client
from aiowstunnel.server import Server
from aiowstunnel.tcp import link_read_buffer

from ..helpers import loop_factory
from .conftest import FAST_BACKOFF, LOCAL, echo_roundtrip, start_backend, wait_for_count


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


def client_context(ca: trustme.CA, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if with_cert:
        ca.issue_cert("branch-office").configure_cert(context)
    return context


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
async def test_wss_carries_data(make_tunnel, echo_backend, ca, mode):
    tunnel = await make_tunnel(
        mode,
        echo_backend.port,
        server_kw={"ssl": server_context(ca, False)},
        client_kw={"ssl": client_context(ca, False)},
    )
    assert tunnel.client.url.startswith("wss://")
    sent, received = await echo_roundtrip(tunnel.entry, 4 << 20)
    assert sent == received


@pytest.mark.timeout(30)
async def test_untrusted_server_certificate_is_refused(make_tunnel, echo_backend, ca):
    other_ca = trustme.CA()
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"ssl": server_context(other_ca, False)},
        client_kw={"ssl": client_context(ca, False)},
        wait=False,
    )
    await wait_for_count(tunnel.client.stats.connect_failures, "tls", 1)
    assert "CERTIFICATE_VERIFY_FAILED" in tunnel.client.last_error


@pytest.mark.timeout(30)
async def test_mutual_tls_accepts_client_with_certificate(make_tunnel, echo_backend, ca):
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"ssl": server_context(ca, True)},
        client_kw={"ssl": client_context(ca, True)},
    )
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 20)
    assert sent == received


@pytest.mark.timeout(30)
async def test_mutual_tls_refuses_client_without_certificate(make_tunnel, echo_backend, ca):
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"ssl": server_context(ca, True)},
        client_kw={"ssl": client_context(ca, False)},
        wait=False,
    )
    # TLS 1.3: the server checks the client's certificate after the client thinks the
    # handshake is done, so the client sees the connection closed, not a TLS error.
    await wait_for_count(tunnel.client.stats.connect_failures, "connect", 2)
    assert "client certificate" in tunnel.client.last_error
    assert not tunnel.client.up
    assert tunnel.server.sessions == {}
    assert echo_backend.accepted == 0


async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An echo backend that reads as the slow reader does (naps; its listening socket has a
    small receive buffer, see slow_readers), so that the dialing side's writes to it stay
    partial too: in LISTEN mode the client's link payloads go to the backend, the server's
    to the application."""
    reads = 0
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(32 * 1024):
            writer.write(data)
            await writer.drain()
            reads += 1
            if reads % 8 == 0:
                await asyncio.sleep(0.002)
        writer.write_eof()
    writer.close()


async def slow_readers(mode: aiowstunnel.Mode, ca: trustme.CA) -> None:
    backend = await start_backend(slow_echo)
    # Set on the listening socket, so that each connection has it from its handshake on:
    # shrinking it on an accepted socket that early data already reached stalls the
    # sender on a zero window (Linux), which is no test of ours.
    for sock in backend.server.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    # 16 MiB windows: more than a socket's send buffer takes, so writes stay partial
    server = Server(LOCAL, 0, ssl=server_context(ca, False), window=16 << 20)
    await server.listen()
    client = Client(
        mode, LOCAL, server.port, LOCAL, 0, LOCAL, backend.port,
        backoff=FAST_BACKOFF, ssl=client_context(ca, False), window=16 << 20,
    )  # fmt: skip
    client.start()
    try:
        await client.wait_up(10)
        assert client.listen_address is not None
        address = client.listen_address
        echoes = (echo_roundtrip(address, 16 << 20, slow_reader=True) for _ in range(6))
        for sent, received in await asyncio.gather(*echoes):
            assert sent == received
    finally:
        await client.close(timeout=1)
        await server.close(timeout=1)
        backend.server.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_wss_slow_readers_get_their_bytes_intact(ca, mode, loop):
    # Both ends read TLS into one reused buffer (tlsreads); a payload that a slow reader's
    # transport still holds must not be overwritten by the next read. uvloop's transports
    # keep such a payload as it is (asyncio's on 3.11 copy it, so there nothing is kept).
    # How often a write stays partial is up to the scheduler: the echoes go again (3 rounds
    # at most) until a payload was kept, so that the case this test is about happened.
    before = tcp.link_buffers_taken
    for _ in range(3):
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            runner.run(slow_readers(mode, ca))
        if loop == "asyncio" or tcp.link_buffers_taken > before:
            break
    if loop == "uvloop":
        assert tcp.link_buffers_taken > before


def test_the_link_read_buffer_is_reused_only_when_nothing_points_into_it():
    # ids, not names: a name of ours would hold the buffer as a transport's view does
    first = id(link_read_buffer().obj)
    assert id(link_read_buffer().obj) == first  # nothing kept: the same buffer
    kept = link_read_buffer()[:10]  # what a transport keeps of a payload it could not write
    second = id(link_read_buffer().obj)
    assert second != first
    assert id(link_read_buffer().obj) == second
    del kept
    assert id(link_read_buffer().obj) == second


@pytest.mark.timeout(30)
async def test_over_the_handshake_limits_a_tls_connection_is_dropped_before_any_tls(ca):
    # The admission comes before the TLS handshake: a connection the server would drop
    # anyway costs it no handshake (nor the wait for a ClientHello that never comes).
    from aiowstunnel.limits import ServerLimits

    backend = await start_backend()
    server = Server(
        LOCAL, 0, ssl=server_context(ca, False), handshake_timeout=5.0,
        limits=ServerLimits(max_handshakes=2),
    )  # fmt: skip
    await server.listen()
    holders = []
    try:
        for _ in range(2):  # TCP connections that never say hello hold both slots
            holders.append(await asyncio.open_connection(LOCAL, server.port))
        await until(lambda: server.admission.handshakes.total == 2)
        reader, writer = await asyncio.open_connection(LOCAL, server.port)
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 2.0)  # reset, with no ServerHello
        assert asyncio.get_running_loop().time() - started < 1.0
        assert server.limit_stats.hits["handshakes"] == 1
        writer.close()
        for _, holder in holders:  # the slots come back; a real client is served
            holder.close()
        await until(lambda: server.admission.handshakes.total == 0)
        client = Client(
            aiowstunnel.CONNECT, LOCAL, server.port, LOCAL, 0, LOCAL, backend.port,
            backoff=FAST_BACKOFF, ssl=client_context(ca, False),
        )  # fmt: skip
        client.start()
        try:
            await client.wait_up(10)
            assert client.listen_address is not None
            sent, received = await echo_roundtrip(client.listen_address, 1 << 16)
            assert sent == received
        finally:
            await client.close(1)
    finally:
        await server.close(1)
        backend.server.close()


async def until(predicate, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


@pytest.mark.timeout(30)
async def test_closing_the_server_ends_the_tls_handshakes_under_way(ca):
    server = Server(LOCAL, 0, ssl=server_context(ca, False), handshake_timeout=20.0)
    await server.listen()
    silent = [await asyncio.open_connection(LOCAL, server.port) for _ in range(3)]
    await until(lambda: server.admission.handshakes.total == 3)  # each waits for a hello
    await server.close(1)
    for reader, writer in silent:  # each is closed, not left to its 20 s
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert server.admission.handshakes.total == 0


@pytest.mark.timeout(30)
async def test_one_address_holds_its_share_of_tls_handshakes_and_the_others_are_served(ca):
    # Connections that never say hello count against their address before TLS: past its
    # share and the places of those told to come back, the next is reset at once, and
    # another address still gets its handshake.
    from aiowstunnel.limits import ServerLimits

    server = Server(
        LOCAL, 0, ssl=server_context(ca, False), handshake_timeout=10.0,
        limits=ServerLimits(max_handshakes=16),
    )  # fmt: skip
    await server.listen()
    admission = server.admission
    assert (admission.handshakes_per_address.limit, admission.busy.limit) == (8, 2)
    silent = []
    try:
        for _ in range(10):  # 8 in the address's share, 2 to be told to come back
            silent.append(await asyncio.open_connection(LOCAL, server.port))
        held = admission.handshakes_per_address
        await until(lambda: (held.total, admission.busy.total) == (8, 2))
        reader, writer = await asyncio.open_connection(LOCAL, server.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 2.0)
        writer.close()
        assert server.limit_stats.hits["handshakes_per_address"] == 3  # 2 told, 1 reset
        # another address: its TLS handshake is done
        _, other = await asyncio.open_connection(
            LOCAL, server.port, ssl=client_context(ca, False), server_hostname="localhost",
            local_addr=("127.0.0.2", 0),
        )  # fmt: skip
        assert other.get_extra_info("ssl_object").version() is not None
        other.close()
    finally:
        for _, holder in silent:
            holder.close()
        await server.close(1)
    await until(lambda: admission.handshakes.total == admission.busy.total == 0)
