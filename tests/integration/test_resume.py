"""Streams survive a broken WebSocket (protocol.md, Resumption): a fault proxy between
client and server cuts the connection, both sides with an RST, and the session resumes
over a new one, on real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.frames import Close, Opcode

import aiowstunnel
from aiowstunnel.addresses import Address, AddressRule
from aiowstunnel.client import Client
from aiowstunnel.handshake import HEADER_TUNNEL
from aiowstunnel.metrics import TunnelCollector
from aiowstunnel.policy import ClientPolicy, token_digest
from aiowstunnel.resume import CLOSE_CODES, encode_resume
from aiowstunnel.resumeauth import HEADER_REFUSED, HEADER_RESUME, parse_challenge, resume_message
from aiowstunnel.server import Server
from aiowstunnel.stats import MetricsSnapshot

from ..attackers import RawSession
from ..udp_helpers import UdpEcho, udp_server
from .conftest import (
    FAST_BACKOFF,
    LOCAL,
    FaultProxy,
    echo_roundtrip,
    start_backend,
    wait_for_count,
)

MiB = 1 << 20
MODES = [aiowstunnel.CONNECT, aiowstunnel.LISTEN]


class Tunnel:
    """Server, fault proxy and client on loopback; the client reaches the server through
    the proxy."""

    def __init__(self, server: Server, proxy: FaultProxy, client: Client) -> None:
        self.server, self.proxy, self.client = server, proxy, client

    @classmethod
    async def start(
        cls, mode: aiowstunnel.Mode, target_port: int, server_kw=None, client_kw=None
    ) -> Tunnel:
        server = Server(LOCAL, 0, **(server_kw or {}))
        await server.listen()
        proxy = await FaultProxy(server.port).start()
        kw = {"backoff": FAST_BACKOFF, **(client_kw or {})}
        client = Client(mode, LOCAL, proxy.port, LOCAL, 0, LOCAL, target_port, **kw)
        client.start()
        await client.wait_up(10)
        return cls(server, proxy, client)

    @property
    def entry(self):
        return self.client.listen_address

    async def cut(self) -> None:
        """Cut the connection and wait until the session is resumed, over a new link: the
        old one can look alive for a while after the RST, until the client's loop reads
        it (a busy loop takes more than one 10 ms nap)."""
        session = self.client.session
        cut_link = session.link
        assert self.proxy.cut() >= 1
        for _ in range(1000):
            await asyncio.sleep(0.01)
            link = session.link
            resumed = self.client.session is session and link is not cut_link
            if resumed and not link.lost and self.client.up:
                return
        raise AssertionError("not resumed within 10 s")

    async def close(self) -> None:
        await self.client.close(1)
        await self.server.close(1)
        self.proxy.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(256 * 1024):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


async def transfer(entry, size: int, progress: list[int] | None = None) -> tuple[bytes, bytes]:
    """Send ``size`` random bytes through an echo, read them back: both digests
    (``progress[0]``: the bytes back so far)."""
    reader, writer = await asyncio.open_connection(entry.host, entry.port)
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0

    async def send() -> None:
        left = size
        while left:
            chunk = os.urandom(min(left, 256 * 1024))
            sent.update(chunk)
            writer.write(chunk)
            await writer.drain()
            left -= len(chunk)
        writer.write_eof()

    async def read() -> None:
        nonlocal received
        while data := await reader.read(256 * 1024):
            got.update(data)
            received += len(data)
            if progress is not None:
                progress[0] = received

    await asyncio.gather(send(), read())
    writer.close()
    assert received == size, f"{received} of {size} bytes came back"
    return sent.digest(), got.digest()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_one_stream_survives_cuts_intact(mode):
    """256 MiB each way on one stream, cut (both sides, RST) five times, spread over the
    transfer: every byte back, by digest, and the local socket never sees EOF or reset
    early (``transfer`` reads until the echo's FIN and counts)."""
    size = 256 * MiB
    backend = await start_backend(echo)
    tunnel = await Tunnel.start(mode, backend.port)
    try:
        progress = [0]
        task = asyncio.ensure_future(transfer(tunnel.entry, size, progress))
        cuts = 0
        while cuts < 5 and not task.done():
            await asyncio.sleep(0.005)
            if progress[0] >= (cuts + 1) * size // 6:  # at 1/6, 2/6, ... 5/6 of the way
                await tunnel.cut()
                cuts += 1
        sent, got = await asyncio.wait_for(task, 200)
        assert sent == got
        assert cuts == 5
        assert tunnel.client.stats.resumes["ok"] == cuts
        assert sum(tunnel.client.stats.stream_resets.values()) == 0
        # what was in flight at the cuts was resent (counted, and in the metrics)
        assert scrape(tunnel, "replayed_bytes_total") > 0
    finally:
        await tunnel.close()
        backend.server.close()


@pytest.mark.timeout(120)
async def test_200_echo_streams_survive_three_cuts(echo_backend):
    tunnel = await Tunnel.start(aiowstunnel.CONNECT, echo_backend.port)
    try:
        streams = asyncio.gather(*(echo_roundtrip(tunnel.entry, MiB) for _ in range(200)))
        for _ in range(3):
            await asyncio.sleep(0.1)
            await tunnel.cut()
        results = await asyncio.wait_for(streams, 90)
        assert all(sent == received for sent, received in results)
        assert tunnel.client.stats.resumes["ok"] == 3
        assert sum(tunnel.client.stats.stream_resets.values()) == 0
        assert echo_backend.accepted == 200  # each stream dialed once, never again
    finally:
        await tunnel.close()


@pytest.mark.timeout(60)
async def test_a_detach_past_resume_timeout_resets_the_streams_with_the_reason(
    echo_backend, caplog
):
    caplog.set_level(logging.INFO, logger="aiowstunnel")
    tunnel = await Tunnel.start(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"resume_timeout": 0.6},
        client_kw={"resume_timeout": 0.6},
    )
    try:
        streams = [
            await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port) for _ in range(3)
        ]
        for reader, writer in streams:
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
        tunnel.proxy.refuse = True  # the path stays down: every resume attempt fails
        tunnel.proxy.cut()
        for reader, writer in streams:
            with pytest.raises(ConnectionResetError):  # an RST, never a clean EOF
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
        assert tunnel.client.stats.stream_resets["expired"] == 3
        server_stats = next(iter(tunnel.server.client_stats.values()))
        await wait_for_count(server_stats.stream_resets, "expired", 3, 5)
        logged = [r.getMessage() for r in caplog.records]
        # the reason, on both sides: the client's tunnel line and the server's session line
        assert sum("not resumed within 0.6 s; 3 streams reset" in m for m in logged) == 2, logged
        assert server_stats.sessions_detached == 0 and not tunnel.server.sessions
        tunnel.proxy.refuse = False  # the path heals: a fresh session, new streams work
        await tunnel.client.wait_up(10)
        await _until(lambda: tunnel.client.up, 10)
        sent, received = await echo_roundtrip(tunnel.entry, MiB)
        assert sent == received
    finally:
        await tunnel.close()


def _policy(name: str, token: str, target: str) -> ClientPolicy:
    return ClientPolicy(name, token_digest(token), (AddressRule.parse(target),))


def _close_code(frames) -> int:
    [close] = [f for f in frames if f.opcode is Opcode.CLOSE]
    return Close.parse(close.data).code


@pytest.mark.timeout(60)
async def test_forged_and_replayed_resumes_are_refused_and_the_owner_still_resumes(
    echo_backend,
):
    target = f"{LOCAL}:{echo_backend.port}"
    clients = [_policy("owner", "owner-token", target), _policy("other", "other-token", target)]
    tunnel = await Tunnel.start(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"clients": clients},
        client_kw={"token": "owner-token", "name": "t1"},
    )
    port = tunnel.server.port
    try:
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        resumption = tunnel.client.session.resumption
        resume_header = [(HEADER_RESUME, resumption.id_hex), (HEADER_TUNNEL, "t1")]
        # The owner's path goes down: its session is detached on the server, and every
        # forgery below goes straight to the server while the owner cannot resume.
        tunnel.proxy.refuse = True
        tunnel.proxy.cut()
        [held] = tunnel.server.sessions
        await _until(lambda: held.phase.value == "detached", 5)
        log_before = (held.resumption.log.sent, held.resumption.log.bytes_held)

        # Another client entry's valid token: refused before the upgrade.
        other = await RawSession.open(
            port, "other-token", address=target, extra=resume_header, status=410
        )
        assert other.response.headers[HEADER_REFUSED] == "wrong_client"
        # A session id nobody issued.
        unknown = await RawSession.open(
            port, "owner-token", address=target, extra=[(HEADER_RESUME, "ab" * 16)], status=410
        )
        assert unknown.response.headers[HEADER_REFUSED] == "unknown_session"
        # The owner's token, but no secret: a wrong proof.
        wrong = await RawSession.open(port, "owner-token", address=target, extra=resume_header)
        old_challenge = parse_challenge(wrong.response.headers)
        wrong.send(encode_resume(bytes(32), 0))
        assert _close_code(await wrong.frames(2)) == CLOSE_CODES["bad_proof"]
        # A captured RESUME sent again: the right secret, another resume's challenge.
        replayed = await RawSession.open(port, "owner-token", address=target, extra=resume_header)
        replayed.send(resume_message(resumption.credentials, old_challenge, 0))
        assert _close_code(await replayed.frames(2)) == CLOSE_CODES["bad_proof"]
        # The right proof claiming more than was ever sent: refused, and nothing is sent.
        greedy = await RawSession.open(port, "owner-token", address=target, extra=resume_header)
        challenge = parse_challenge(greedy.response.headers)
        greedy.send(resume_message(resumption.credentials, challenge, 10**9))
        frames = await greedy.frames(2)
        assert _close_code(frames) == CLOSE_CODES["bad_claim"]
        assert not [f for f in frames if f.opcode is Opcode.BINARY]  # no byte of the log
        refused = tunnel.server.stats.resumes
        assert (refused["wrong_client"], refused["unknown_session"]) == (1, 1)
        assert (refused["bad_proof"], refused["bad_claim"]) == (2, 1)

        # The detached session was never touched: still detached, its stream and its
        # replay log as they were, and its owner resumes it once the path heals.
        assert tunnel.server.sessions.keys() == {held} and held.phase.value == "detached"
        assert len(held.streams) == 1
        assert (held.resumption.log.sent, held.resumption.log.bytes_held) == log_before
        writer.write(b"during")
        tunnel.proxy.refuse = False
        assert await asyncio.wait_for(reader.readexactly(6), 10) == b"during"
        await _until(lambda: held.phase.value == "open", 5)
        writer.write(b"after")
        assert await reader.readexactly(5) == b"after"
        assert tunnel.client.stats.resumes["ok"] == 1
        assert tunnel.server.stats.resumes["ok"] == 1
        writer.close()
    finally:
        await tunnel.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_a_restarted_server_refuses_the_resume_and_a_fresh_session_starts(echo_backend, mode):
    from .test_faults import free_port, start_server_process

    proc, port = await start_server_process(0)
    listen_port = free_port() if mode is aiowstunnel.LISTEN else 0
    client = Client(
        mode, LOCAL, port, LOCAL, listen_port, LOCAL, echo_backend.port, backoff=FAST_BACKOFF
    )
    client.start()
    try:
        await client.wait_up(10)
        entry = client.listen_address
        reader, writer = await asyncio.open_connection(entry.host, entry.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        await _until(lambda: client.detached, 5)  # the stream is kept meanwhile
        proc, _ = await start_server_process(port)
        returned = time.monotonic()
        if mode is aiowstunnel.CONNECT:
            with pytest.raises(ConnectionResetError):  # told, by an RST
                await asyncio.wait_for(reader.read(), 5)
        # (LISTEN: that socket was the killed server's; the client's end, to the target,
        # is reset: counted below.)
        writer.close()
        await _until(lambda: client.up and client.stats.connects == 2, 5)
        took = time.monotonic() - returned
        print(f"\nserver restarted ({mode}): a fresh session {took:.2f} s after its return")
        assert took < 2
        assert client.stats.resumes["unknown_session"] == 1
        assert client.stats.stream_resets["resume_refused"] == 1
        sent, received = await echo_roundtrip(client.listen_address, MiB)
        assert sent == received
    finally:
        await client.close(1)
        proc.kill()
        await proc.wait()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("off", ["server", "client"])
async def test_resume_timeout_0_on_either_side_is_todays_behaviour(echo_backend, off):
    tunnel = await Tunnel.start(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"resume_timeout": 0} if off == "server" else {},
        client_kw={"resume_timeout": 0} if off == "client" else {},
    )
    try:
        session = tunnel.client.session
        assert session.resumption is None
        assert all(s.resumption is None for s in tunnel.server.sessions)
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        tunnel.proxy.cut()
        with pytest.raises(ConnectionResetError):  # the stream is cut with the session
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await _until(lambda: tunnel.client.up and tunnel.client.session is not session, 10)
        assert tunnel.client.stats.stream_resets["session_lost"] == 1
        assert tunnel.client.stats.resumes == {}
    finally:
        await tunnel.close()


@pytest.mark.timeout(60)
async def test_a_blackout_is_detected_by_the_keepalive_and_resumed_when_it_heals(echo_backend):
    ping = {"ping_interval": 0.3, "ping_timeout": 0.3}
    tunnel = await Tunnel.start(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw=ping,
        client_kw={**ping, "handshake_timeout": 0.6, "name": "t"},
    )
    try:
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        tunnel.proxy.blackhole = True  # silent, nothing is reset
        await _until(lambda: tunnel.client.detached, 5)
        assert "peer silent" in tunnel.client.session.detachment.reason
        await _until(lambda: scrape(tunnel, "server_sessions_detached", tunnel="t") == 1, 5)
        assert scrape(tunnel, "tunnel_detached", tunnel="t") == 1
        assert scrape(tunnel, "tunnel_up", tunnel="t") == 0
        writer.write(b"during")  # waits in the socket: the stream does not read now
        await asyncio.sleep(1.0)
        tunnel.proxy.blackhole = False
        tunnel.proxy.cut()  # the middlebox gives up on its old connections
        assert await asyncio.wait_for(reader.readexactly(6), 10) == b"during"
        assert tunnel.client.stats.resumes["ok"] == 1
        await _until(lambda: scrape(tunnel, "server_sessions_detached", tunnel="t") == 0, 5)
        assert scrape(tunnel, "tunnel_detached", tunnel="t") == 0
        # the client's tunnel and the server's client entry, one resume each
        assert scrape(tunnel, "resumes_total", tunnel="t", result="ok") == 2
        assert scrape(tunnel, "server_resumes_total", result="ok") == 1
        writer.close()
    finally:
        await tunnel.close()


def scrape(where: Tunnel, name: str, **labels: str) -> float:
    """The value the exporter shows for the tunnel's counters, as Prometheus parses it:
    the samples named ``aiowstunnel_<name>`` whose labels include ``labels``, added up."""
    snapshot = MetricsSnapshot(
        tunnels=[where.client.stats],
        server_clients=list(where.server.client_stats.values()),
        server=where.server.stats,
    )
    registry = CollectorRegistry()
    registry.register(TunnelCollector(lambda: snapshot))
    text = generate_latest(registry).decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"aiowstunnel_{name}" and labels.items() <= sample.labels.items()
    )


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.timeout(60)
async def test_a_half_closed_stream_stays_half_closed_across_a_cut():
    asked = asyncio.Event()
    answer = asyncio.Event()

    async def server_app(reader, writer):
        request = await reader.read()  # until the client's FIN
        assert request == b"request"
        asked.set()
        await answer.wait()
        writer.write(b"response after the cut")
        await writer.drain()
        writer.close()

    backend = await start_backend(server_app)
    tunnel = await Tunnel.start(aiowstunnel.CONNECT, backend.port)
    try:
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(b"request")
        writer.write_eof()  # half-closed: the client will send no more
        await asyncio.wait_for(asked.wait(), 10)
        await tunnel.cut()
        answer.set()
        got = await asyncio.wait_for(reader.read(), 10)  # the rest, then a clean EOF
        assert got == b"response after the cut"
        assert sum(tunnel.client.stats.stream_resets.values()) == 0
        writer.close()
    finally:
        await tunnel.close()
        backend.server.close()


@pytest.mark.timeout(60)
async def test_streams_opened_around_a_cut_end_opened_never_hung(echo_backend):
    tunnel = await Tunnel.start(aiowstunnel.CONNECT, echo_backend.port)
    try:

        async def one(i: int) -> bytes:
            reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
            payload = f"stream {i}".encode()
            writer.write(payload)
            try:
                return await asyncio.wait_for(reader.readexactly(len(payload)), 10)
            finally:
                writer.close()

        opening = [asyncio.ensure_future(one(i)) for i in range(20)]
        await asyncio.sleep(0)  # their OPENs are on the way (or not yet sent) as it breaks
        tunnel.proxy.cut()
        opening += [asyncio.ensure_future(one(i)) for i in range(20, 40)]  # while detached
        got = await asyncio.gather(*opening)
        assert got == [f"stream {i}".encode() for i in range(40)]
        assert tunnel.client.stats.resumes["ok"] == 1
    finally:
        await tunnel.close()


@pytest.mark.timeout(60)
async def test_a_restarted_listen_client_replaces_its_detached_session(echo_backend):
    from ..helpers import TunnelProcess
    from .test_faults import free_port

    server = Server(LOCAL, 0, ping_interval=0.4, ping_timeout=0.4)
    await server.listen()
    listen_port = free_port()

    def listen_client() -> TunnelProcess:
        return TunnelProcess("client", "listen", server.port, echo_backend.port, listen_port)

    async def carries_data() -> None:
        await _until(lambda: any(s.phase.value == "open" for s in server.sessions), 10)
        sent, received = await echo_roundtrip(Address(LOCAL, listen_port), MiB)
        assert sent == received

    first = await listen_client().start()
    try:
        await carries_data()
        os.kill(first.proc.pid, signal.SIGKILL)
        await _until(lambda: any(s.phase.value == "detached" for s in server.sessions), 5)
        second = await listen_client().start()  # same tunnel, a fresh session
        try:
            await carries_data()  # the detached session made room, port included
            stats = next(iter(server.client_stats.values()))
            assert stats.stream_resets["expired"] == 0  # it had no stream open
            assert stats.sessions_active == 1 and stats.sessions_detached == 0
        finally:
            await second.stop()
    finally:
        await first.stop()
        await server.close(1)


@pytest.mark.timeout(120)
async def test_a_detached_session_with_200_streams_holds_at_most_a_window_each_way():
    """Measured from the client process's RSS: detached with 200 streams whose target
    reads nothing (every credit used up), the session holds at most a window per stream
    per direction (protocol.md, Resumption: what is unconfirmed never exceeds the credit
    not yet returned)."""
    from ..helpers import TunnelProcess

    # The window the client may fill per stream is the server's: 256 KiB, not the default
    # 2 MiB, so that a small push uses up every stream's credit (200 default windows
    # would be 400 MiB through the test).
    window = 256 * 1024

    never = asyncio.Event()

    async def stalled(reader, writer):  # reads nothing: every stream's credit runs out
        await never.wait()

    backend = await start_backend(stalled)
    server = Server(LOCAL, 0, window=window)
    await server.listen()
    proxy = await FaultProxy(server.port).start()
    client = await TunnelProcess("client", "connect", proxy.port, backend.port).start()
    writers = []
    try:
        await _until(lambda: bool(server.sessions), 10)
        before = (await client.stats())["rss"]
        block = os.urandom(window + 128 * 1024)  # more than a window: each stream stalls
        for _ in range(200):
            _, writer = await asyncio.open_connection(LOCAL, client.port)
            writer.write(block)
            writers.append(writer)
        stats = await client.stats()
        for _ in range(100):  # until all 200 are open and the pushing has stopped
            await asyncio.sleep(0.1)
            previous, stats = stats, await client.stats()
            if stats["streams_active"] == 200 and stats["rss"] == previous["rss"]:
                break
        proxy.refuse = True  # the path stays down: it stays detached
        proxy.cut()
        for _ in range(100):
            if (await client.stats())["detached"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        after = await client.stats()
        assert after["detached"] and after["streams_active"] == 200
        grown = after["rss"] - before
        bound = 200 * 2 * window
        print(f"\ndetached with 200 stalled streams: client RSS +{grown / MiB:.1f} MiB")
        assert grown < bound, f"+{grown / MiB:.1f} MiB, bound {bound / MiB:.0f} MiB"
    finally:
        for writer in writers:
            writer.close()
        await client.stop()
        await server.close(1)
        proxy.close()
        never.set()
        backend.server.close()


@pytest.mark.timeout(60)
async def test_a_resume_replaces_the_link_of_a_session_the_server_still_holds(echo_backend):
    """The client saw the break first (its keepalive is the quicker): the server's
    session is still attached when the resume comes, and the resume replaces its link."""
    tunnel = await Tunnel.start(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"ping_interval": 30.0, "ping_timeout": 30.0},
        client_kw={"ping_interval": 0.3, "ping_timeout": 0.3, "handshake_timeout": 0.6},
    )
    try:
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        [held] = tunnel.server.sessions
        old_link = held.link
        tunnel.proxy.blackhole = tunnel.proxy.hold = True  # the server is never told
        await _until(lambda: tunnel.client.detached, 5)
        assert held.phase.value == "open"  # the server has noticed nothing
        tunnel.proxy.blackhole = False  # the old connection stays, idle; a new one resumes
        await _until(lambda: tunnel.client.up, 10)
        assert held.link is not old_link and old_link.lost  # replaced, the old one dropped
        writer.write(b"after")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"after"
        assert tunnel.server.stats.resumes["ok"] == 1
        assert next(iter(tunnel.server.client_stats.values())).sessions_detached == 0
        writer.close()
    finally:
        await tunnel.close()


@pytest.mark.timeout(30)
async def test_a_resume_told_busy_waits_the_retry_after_and_resumes(echo_backend):
    from aiowstunnel.limits import ServerLimits

    tunnel = await Tunnel.start(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"limits": ServerLimits(max_handshakes_per_address=1)},
        client_kw={"random": lambda: 0.1},  # the Retry-After of 1 s is waited 0.6 s
    )
    rejected = tunnel.server.stats.rejected
    try:
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        # an upgrade from the same address that never ends holds the address's one slot
        _, holder = await asyncio.open_connection(LOCAL, tunnel.server.port)
        holder.write(b"GET /aiowstunnel HTTP/1.1\r\n")
        await _until(lambda: tunnel.server.admission.handshakes.total == 1, 5)
        tunnel.proxy.cut()
        await _until(lambda: rejected["too_many_handshakes"] >= 1, 5)
        busy_at = asyncio.get_running_loop().time()
        await asyncio.sleep(1.5)  # the attempts it makes meanwhile are counted
        told = rejected["too_many_handshakes"]
        holder.close()
        await _until(lambda: tunnel.client.up, 10)
        # at 0, 0.6, 1.2 s (the one at 1.8 s resumes); the resume's own backoff alone asked
        # 8 times in those 1.5 s
        assert 2 <= told <= 4, (told, asyncio.get_running_loop().time() - busy_at)
        assert tunnel.server.stats.resumes["ok"] == 1
        writer.write(b"after")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"after"
        writer.close()
    finally:
        await tunnel.close()


@pytest.mark.timeout(60)
async def test_a_token_revoked_during_the_detach_means_no_resume(echo_backend):
    target = f"{LOCAL}:{echo_backend.port}"
    tunnel = await Tunnel.start(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"clients": [_policy("owner", "owner-token", target)]},
        client_kw={"token": "owner-token"},
    )
    try:
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        tunnel.proxy.refuse = True
        tunnel.proxy.cut()
        await _until(lambda: tunnel.client.detached, 5)
        tunnel.server.set_clients([_policy("other", "other-token", target)])  # revoked
        assert not tunnel.server.sessions  # its detached session ended with its entry
        tunnel.proxy.refuse = False
        with pytest.raises(ConnectionResetError):  # no resume: the stream is reset
            await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert tunnel.client.stats.stream_resets["resume_refused"] == 1
        assert tunnel.client.stats.connect_failures["bad_token"] >= 1
        assert not tunnel.client.up
    finally:
        await tunnel.close()


class _UdpPeer(asyncio.DatagramProtocol):
    """A UDP application at the tunnel's entry: one source address, its replies queued."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent = 0  # by _ask

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)


async def _ask(transport: asyncio.DatagramTransport, peer: _UdpPeer, data: bytes) -> bytes:
    """Send ``data`` until its echo comes back (UDP may lose one; each try waits 1 s)."""
    for _ in range(5):
        transport.sendto(data)
        peer.sent += 1
        try:
            while (reply := await asyncio.wait_for(peer.replies.get(), 1)) != data:
                pass  # a late echo of an earlier try
            return reply
        except asyncio.TimeoutError:
            continue
    raise AssertionError(f"no echo of {data!r}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_a_udp_flow_survives_cuts_and_its_datagrams_meanwhile_are_dropped(mode):
    """protocol.md, Resumption, "Datagrams and resumption": after each cut the flow goes
    on, on the same stream and the same socket toward the target (one source address
    there, one flow opened), and the datagrams sent while detached are dropped and
    counted as ``detached``, never replayed."""
    echo_transport, echo, port = await udp_server(UdpEcho)
    tunnel = await Tunnel.start(mode, port, client_kw={"protocol": "udp"})
    loop = asyncio.get_running_loop()
    entry = tunnel.entry
    app, peer = await loop.create_datagram_endpoint(_UdpPeer, remote_addr=(entry.host, entry.port))
    try:
        assert await _ask(app, peer, b"before") == b"before"
        for n in range(3):
            await tunnel.cut()
            assert await _ask(app, peer, b"after cut %d" % n) == b"after cut %d" % n
        # The listening side counts its flows and drops: the client in CONNECT mode, the
        # server in LISTEN mode.
        (server_stats,) = tunnel.server.client_stats.values()
        listening = server_stats if mode is aiowstunnel.LISTEN else tunnel.client.stats
        assert tunnel.client.stats.resumes["ok"] == 3
        assert listening.flows_opened == 1 and listening.flows_active == 1
        assert len(echo.sources) == 1  # the target saw one source port: the same flow

        tunnel.proxy.refuse = True  # the path stays down: the session waits, detached
        tunnel.proxy.cut()
        await _until(lambda: tunnel.client.detached and server_stats.sessions_detached, 5)
        echoed, asked = echo.count, peer.sent
        for _ in range(10):
            app.sendto(b"while detached")
        await _until(lambda: listening.datagram_drops["detached"] == 10, 5)
        tunnel.proxy.refuse = False
        await _until(lambda: tunnel.client.up, 10)
        assert await _ask(app, peer, b"resumed") == b"resumed"
        # none of the ten was replayed to the target: it got only what _ask sent since
        await _until(lambda: echo.count >= echoed + peer.sent - asked, 5)
        assert echo.count == echoed + peer.sent - asked
        assert listening.flows_opened == 1 and len(echo.sources) == 1
        assert scrape(tunnel, "datagrams_dropped_total", reason="detached") == 10
    finally:
        app.close()
        await tunnel.close()
        echo_transport.close()
