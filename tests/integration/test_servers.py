"""Several servers per tunnel, and the GOAWAY a client answers at once (issue 17).

The library's Server and Client on loopback: a CONNECT tunnel spreads its streams over a
session to each server and survives the loss of one; a LISTEN tunnel binds its listener on
every server; a server's GOAWAY makes the client open the next session at once while the
old one drains, and connections that come meanwhile are held for it, never refused.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import aiowstunnel
from aiowstunnel.addresses import Address
from aiowstunnel.affinity import SERVER_HEADER
from aiowstunnel.backoff import BackoffPolicy
from aiowstunnel.client import Client
from aiowstunnel.server import Server

from ..helpers import FAST_BACKOFF, LOCAL, FaultProxy, echo_roundtrip, start_backend


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def servers(n: int, **kwargs) -> list[Server]:
    out = []
    for i in range(n):
        server = Server(LOCAL, 0, ping_interval=1.0, ping_timeout=1.0, name=f"s{i}", **kwargs)
        await server.listen()
        out.append(server)
    return out


def url(server: Server) -> str:
    return f"ws://{LOCAL}:{server.port}/aiowstunnel"


def opened(server: Server) -> int:
    return sum(stats.streams_opened for stats in server.client_stats.values())


def slow_backoff_client(server: Server, backend_port: int) -> Client:
    """A CONNECT client of ``server`` whose backoff (30 s) would show: after a GOAWAY its
    next session must open at once, not after the backoff."""
    return Client(
        aiowstunnel.CONNECT,
        LOCAL,
        server.port,
        LOCAL,
        0,
        LOCAL,
        backend_port,
        backoff=BackoffPolicy(initial=30.0, max=30.0),
    )


class Held:
    """An echo connection kept open: one byte echoed, then it waits to be finished."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, address: Address) -> None:
        reader, self.writer = await asyncio.open_connection(address.host, address.port)
        self.reader = reader
        self.writer.write(b"x")
        assert await reader.readexactly(1) == b"x"

    async def finish(self) -> None:
        assert self.writer is not None
        self.writer.write_eof()
        assert await self.reader.read() == b""
        self.writer.close()


@pytest.mark.timeout(60)
async def test_connect_spreads_over_every_server_and_outlives_the_loss_of_one():
    backend = await start_backend()
    three = await servers(3)
    client = Client(
        aiowstunnel.CONNECT,
        LOCAL,
        three[0].port,
        LOCAL,
        0,
        LOCAL,
        backend.port,
        backoff=FAST_BACKOFF,
        ping_interval=1.0,
        ping_timeout=1.0,
        more_servers=[url(s) for s in three[1:]],
    )
    client.start()
    try:
        await until(lambda: all(m.session_up for m in client.group))
        assert [m.affinity.server for m in client.group] == ["s0", "s1", "s2"]
        entry = client.listen_address
        assert entry is not None

        # Short streams one after another: equal counts, so each server in turn.
        for _ in range(30):
            sent, received = await echo_roundtrip(entry, 64 * 1024)
            assert sent == received
        assert [opened(s) for s in three] == [10, 10, 10]

        # 30 streams open at once: each goes to the session with the fewest.
        held = [Held() for _ in range(30)]
        for h in held:
            await h.open(entry)
        assert [m.own_streams for m in client.group] == [10, 10, 10]
        await asyncio.gather(*(h.finish() for h in held))
        await until(lambda: client.streams_active == 0)

        # Server 1 dies (its socket and sessions gone at once, as a killed process's).
        port1 = three[1].port
        three[1]._server.close()
        for session in list(three[1].sessions):
            session.abort("killed")
        # Every new connection succeeds, with no wait: the two others serve.
        await until(lambda: not client.group[1].session_up)
        before = [opened(three[0]), opened(three[2])]
        started = time.monotonic()
        for _ in range(20):
            sent, received = await echo_roundtrip(entry, 16 * 1024)
            assert sent == received
        assert time.monotonic() - started < 5
        assert opened(three[0]) + opened(three[2]) - sum(before) == 20
        assert client.up and client.stats.stream_open_failures["tunnel_down"] == 0

        # It comes back on its port: the client rejoins it, and it carries streams again.
        three[1] = Server(LOCAL, port1, ping_interval=1.0, ping_timeout=1.0, name="s1")
        await three[1].listen()
        await until(lambda: client.group[1].session_up)
        for _ in range(6):
            await echo_roundtrip(entry, 1024)
        assert opened(three[1]) == 2
    finally:
        await client.close(1)
        for server in three:
            await server.close(0.1)
        backend.server.close()


@pytest.mark.timeout(60)
async def test_listen_binds_on_every_server():
    backend = await start_backend()
    two = await servers(2)
    client = Client(
        aiowstunnel.LISTEN,
        LOCAL,
        two[0].port,
        LOCAL,
        0,
        LOCAL,
        backend.port,
        backoff=FAST_BACKOFF,
        more_servers=[url(two[1])],
    )
    client.start()
    try:
        await until(lambda: all(m.session_up for m in client.group))
        bound = [m.listen_address for m in client.group]
        assert all(b is not None and b.port for b in bound) and bound[0] != bound[1]
        for address in bound:
            sent, received = await echo_roundtrip(address, 256 * 1024)
            assert sent == received
        assert [opened(s) for s in two] == [1, 1]
        assert client.streams_active == 0
    finally:
        await client.close(1)
        for server in two:
            await server.close(0.1)
        backend.server.close()


@pytest.mark.timeout(60)
async def test_goaway_opens_the_next_session_at_once_and_holds_new_connections():
    await goaway_opens_the_next_session_at_once()


@pytest.mark.timeout(60)
def test_goaway_holds_new_connections_on_uvloop_too():
    # The daemon's loop: uvloop makes a connection a turn after building its protocol,
    # when the new session may be open already (a held connection then attaches at once).
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(goaway_opens_the_next_session_at_once())


async def goaway_opens_the_next_session_at_once():
    backend = await start_backend()
    (server,) = await servers(1)
    client = slow_backoff_client(server, backend.port)
    client.start()
    try:
        await client.wait_up(10)
        entry = client.listen_address
        assert entry is not None
        old = Held()
        await old.open(entry)  # a stream on the first session, open across the GOAWAY
        first = client.session
        assert first is not None
        burst: list[asyncio.Task] = []

        def connect_now(_session) -> None:
            # Connections that arrive while the next session is being opened.
            burst.extend(asyncio.ensure_future(echo_roundtrip(entry, 32 * 1024)) for _ in range(10))

        first.on_goaway.append(connect_now)
        started = time.monotonic()
        (server_side,) = server.sessions
        server_side.goaway("restarting")
        await until(lambda: client.session is not None and client.session is not first)
        assert time.monotonic() - started < 2
        results = await asyncio.gather(*burst)
        assert all(sent == received for sent, received in results)
        assert client.stats.connects == 2
        assert client.stats.stream_open_failures["tunnel_down"] == 0
        # The old stream still works on the draining session, and ends cleanly.
        assert old.writer is not None
        old.writer.write(b"y")
        assert await old.reader.readexactly(1) == b"y"
        await old.finish()
        await until(lambda: first.closed.done())
        assert client.up and client.streams_active == 0
    finally:
        await client.close(1)
        await server.close(0.1)
        backend.server.close()


@pytest.mark.timeout(30)
async def test_the_server_names_itself_in_the_101():
    (server,) = await servers(1)
    reader, writer = await asyncio.open_connection(LOCAL, server.port)
    writer.write(
        b"GET /aiowstunnel HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: aiowstunnel.v1\r\nX-Aiowstunnel-Mode: connect\r\n"
        b"X-Aiowstunnel-Address: 127.0.0.1:9\r\n\r\n"
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    assert head.startswith("HTTP/1.1 101")
    assert f"{SERVER_HEADER}: s0\r\n" in head
    writer.close()
    await server.close(0.1)


@pytest.mark.timeout(60)
async def test_an_open_that_crosses_the_goaway_is_opened_again_on_the_next_session():
    """The OPEN went out before the server's GOAWAY arrived: the server answers it
    OPEN_FAIL (it keeps the idle session for GOAWAY_LINGER rather than closing under it),
    and the client opens the stream again on its next session; the application sees
    nothing but its echo."""
    backend = await start_backend()
    (server,) = await servers(1)
    client = slow_backoff_client(server, backend.port)
    client.start()
    try:
        await client.wait_up(10)
        first = client.session
        assert first is not None and first.transport is not None and client.listen_address
        first.transport.pause_reading()  # the GOAWAY waits unread while the OPEN goes out
        (server_side,) = server.sessions
        server_side.goaway("restarting")
        echo = asyncio.ensure_future(echo_roundtrip(client.listen_address, 64 * 1024))
        await until(lambda: len(first.streams) == 1)  # OPEN sent on the first session
        first.transport.resume_reading()
        sent, received = await asyncio.wait_for(echo, 10)
        assert sent == received
        assert client.session is not first and client.stats.connects == 2
        assert client.stats.stream_resets.total() == 0
        assert client.stats.stream_open_failures["peer_refused"] == 0
    finally:
        await client.close(1)
        await server.close(0.1)
        backend.server.close()


@pytest.mark.timeout(60)
async def test_a_draining_session_cut_after_the_goaway_resumes_in_the_background():
    """The server sent GOAWAY (its stream drains on the old session while the client serves
    on a new one), then the path is cut with RST: both sessions resume, each on its own,
    and the draining stream finishes intact."""
    backend = await start_backend()
    (server,) = await servers(1)
    proxy = await FaultProxy(server.port).start()
    client = Client(
        aiowstunnel.CONNECT,
        LOCAL,
        proxy.port,
        LOCAL,
        0,
        LOCAL,
        backend.port,
        backoff=FAST_BACKOFF,
    )
    client.start()
    try:
        await client.wait_up(10)
        entry = client.listen_address
        assert entry is not None
        old = Held()
        await old.open(entry)
        first = client.session
        assert first is not None
        (server_side,) = server.sessions
        server_side.goaway("restarting")
        await until(lambda: client.session is not None and client.session is not first)
        assert client.session is not None and client.session_up
        assert proxy.cut() == 2  # the draining session's connection and the new one's
        await until(lambda: client.stats.resumes["ok"] == 2)
        assert not first.closed.done() and client.own_streams == 1
        assert old.writer is not None
        old.writer.write(b"y")
        assert await old.reader.readexactly(1) == b"y"
        await old.finish()
        await until(lambda: first.closed.done())
        sent, received = await echo_roundtrip(entry, 64 * 1024)
        assert sent == received
        assert client.stats.connects == 2 and client.stats.stream_resets.total() == 0
    finally:
        await client.close(1)
        proxy.close()
        await server.close(0.1)
        backend.server.close()


@pytest.mark.timeout(60)
async def test_an_open_the_server_accepted_before_its_goaway_finishes_on_the_old_session():
    """The OPEN arrived before the server's GOAWAY, and its dial ends after it: the stream
    opens on the draining session and finishes there (a GOAWAY stops new streams, not the
    ones already asked for), and the session waits for it before it closes."""
    backend = await start_backend()
    (server,) = await servers(1)
    gate = asyncio.Event()
    dialing = asyncio.Event()
    real = server._dialer

    def slow_dialer(grant):
        dial = real(grant)

        async def slow(factory, origin, target):
            dialing.set()
            await gate.wait()
            return await dial(factory, origin, target)

        return slow

    server._dialer = slow_dialer
    client = slow_backoff_client(server, backend.port)
    client.start()
    try:
        await client.wait_up(10)
        first = client.session
        assert first is not None and client.listen_address is not None
        echo = asyncio.ensure_future(echo_roundtrip(client.listen_address, 256 * 1024))
        await asyncio.wait_for(dialing.wait(), 10)
        (server_side,) = server.sessions
        server_side.goaway("restarting")
        await until(lambda: client.session is not None and client.session is not first)
        gate.set()
        sent, received = await asyncio.wait_for(echo, 10)
        assert sent == received
        await until(lambda: first.closed.done())
        assert client.stats.stream_resets.total() == 0
        assert client.stats.stream_open_failures.total() == 0
    finally:
        gate.set()
        await client.close(1)
        await server.close(0.1)
        backend.server.close()


def flows(server: Server) -> int:
    return sum(stats.flows_opened for stats in server.client_stats.values())


@pytest.mark.timeout(60)
async def test_udp_goes_to_the_next_server_while_its_own_is_lost_and_stays_there():
    from ..udp_helpers import UdpEcho, exchange, udp_server

    echo_transport, _, echo_port = await udp_server(UdpEcho)
    two = await servers(2)
    client = Client(
        aiowstunnel.CONNECT, LOCAL, two[0].port, LOCAL, 0, LOCAL, echo_port,
        protocol="udp", backoff=FAST_BACKOFF, ping_interval=1.0, ping_timeout=1.0,
        more_servers=[url(two[1])],
    )  # fmt: skip
    client.start()
    try:
        await until(lambda: all(m.session_up for m in client.group))
        entry = client.listen_address
        assert entry is not None
        # A source's flow lives in one session: every datagram goes to the first server's.
        results = await exchange(entry.host, entry.port, 4, 20)
        assert [r.intact for r in results] == [20] * 4
        assert (flows(two[0]), flows(two[1])) == (4, 0)

        # Server 0 is lost (its sessions cut; the client's detaches, to resume when it can).
        port0 = two[0].port
        two[0]._server.close()
        for session in list(two[0].sessions):
            session.abort("killed")
        await until(lambda: not client.group[0].session_up)
        results = await exchange(entry.host, entry.port, 4, 20)
        assert [r.intact for r in results] == [20] * 4, client.stats.datagram_drops
        assert flows(two[1]) == 4

        # It comes back, and the datagrams stay with the session they moved to: new
        # sources' flows open there too, while it is open.
        two[0] = Server(LOCAL, port0, ping_interval=1.0, ping_timeout=1.0, name="s0")
        await two[0].listen()
        await until(lambda: client.group[0].session_up)
        results = await exchange(entry.host, entry.port, 4, 20)
        assert [r.intact for r in results] == [20] * 4
        assert (flows(two[0]), flows(two[1])) == (0, 8)
    finally:
        await client.close(1)
        for server in two:
            await server.close(0.1)
        echo_transport.close()
