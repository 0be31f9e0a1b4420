"""A slow consumer cannot make the tunnel buffer without bound, nor slow other streams.

The bound (protocol.md, Flow control): per stream, the receiver holds at most its window
(2 MiB by default) plus its socket's write buffer high-water mark (256 KiB); the sender
reads only what its credit lets it send at once, so it holds nothing waiting for credit:
under 2.5 MiB per stream per tunnel. The assertion allows 16 MiB of RSS growth for the
allocator's own slack, against 64 MiB pushed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import time

import pytest

import aiowstunnel

from ..helpers import proc_memory
from .conftest import LOCAL, start_backend

TUNNEL_PROGRAM = """
import asyncio, sys
import aiowstunnel
from aiowstunnel.client import Client
from aiowstunnel.server import Server

async def main():
    server = Server("127.0.0.1", 0)
    await server.listen()
    client = Client(aiowstunnel.CONNECT, "127.0.0.1", server.port, "127.0.0.1", 0,
                    "127.0.0.1", int(sys.argv[1]))
    client.start()
    await client.wait_up(10)
    print("READY", client.listen_address.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

MiB = 1024 * 1024
RSS_BOUND = 16 * MiB


async def slow_or_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """First byte S: read 1 KiB per second (bounded to 30 s). Else: echo to EOF."""
    kind = await reader.readexactly(1)
    if kind == b"S":
        for _ in range(30):
            if not await reader.read(1024):
                break
            await asyncio.sleep(1)
    else:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    writer.close()


async def echo_stream(port: int, total: int) -> float:
    """Echo ``total`` bytes through the tunnel; returns MB/s, asserts the digest."""
    reader, writer = await asyncio.open_connection(LOCAL, port, limit=MiB)
    payload = os.urandom(total)
    start = time.monotonic()
    writer.write(b"E")

    async def send() -> None:
        for i in range(0, total, 256 * 1024):
            writer.write(payload[i : i + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    task = asyncio.create_task(send())
    got = hashlib.sha256()
    n = 0
    while data := await reader.read(MiB):
        got.update(data)
        n += len(data)
    await task
    writer.close()
    assert n == total
    assert got.digest() == hashlib.sha256(payload).digest()
    return total / (time.monotonic() - start) / 1e6


class Pusher:
    """Pushes up to ``limit`` bytes at a connection, as fast as it will take them."""

    def __init__(self, writer: asyncio.StreamWriter, limit: int = 64 * MiB) -> None:
        self.writer = writer
        self.limit = limit
        self.pushed = 0
        self.task = asyncio.create_task(self._push())

    async def _push(self) -> None:
        block = os.urandom(256 * 1024)
        while self.pushed < self.limit:
            self.writer.write(block)
            await self.writer.drain()
            self.pushed += len(block)

    async def until_stalled(self, quiet: float) -> None:
        """Return once no byte was taken for ``quiet`` seconds (bounded by the test timeout)."""
        last = -1
        while self.pushed != last:
            last = self.pushed
            await asyncio.sleep(quiet)


@pytest.mark.timeout(90)
async def test_slow_consumer_memory_bounded_and_other_stream_full_speed():
    backend = await start_backend(slow_or_echo)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TUNNEL_PROGRAM, str(backend.port), stdout=asyncio.subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        port = int(line.split()[1])
        baseline_speed = await echo_stream(port, 32 * MiB)  # also warms the allocator
        baseline_rss = proc_memory(proc.pid)

        # The slow stream: push 64 MiB at a reader taking 1 KiB/s.
        _, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(b"S")
        pusher = Pusher(writer)
        await pusher.until_stalled(0.5)
        pushed = pusher.pushed
        stalled_rss = proc_memory(proc.pid)

        speed = await echo_stream(port, 32 * MiB)  # meanwhile, on the same tunnel
        after_rss = proc_memory(proc.pid)
        print(
            f"\nslow stream stalled after {pushed / MiB:.1f} MiB pushed; tunnel RSS "
            f"{baseline_rss / MiB:.1f} -> {stalled_rss / MiB:.1f} -> {after_rss / MiB:.1f} MiB; "
            f"other stream {speed:.0f} MB/s (alone before: {baseline_speed:.0f} MB/s)"
        )
        assert not pusher.task.done(), "the slow stream should still be blocked"
        assert pushed < 64 * MiB
        assert stalled_rss - baseline_rss < RSS_BOUND
        assert after_rss - baseline_rss < RSS_BOUND
        # Not a timing target, a sanity bound: the slow stream must not throttle the other.
        assert speed > baseline_speed / 4
        pusher.task.cancel()
        writer.close()
    finally:
        proc.kill()
        await proc.wait()
        backend.server.close()


class DroppedPause:
    """Streams whose transport forgets the pause made in connection_made(), as uvloop's
    do; :attr:`biggest` is the largest backlog a stream held after a read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from aiowstunnel.streams import StreamTable
        from aiowstunnel.tcp import TcpStream

        self.biggest = 0
        real_made, real_data = TcpStream.connection_made, StreamTable.data

        def made_then_unpaused(stream, transport):
            real_made(stream, transport)
            transport.resume_reading()  # the transport forgets the pause

        def record(table, stream, data):
            real_data(table, stream, data)
            held = len(stream.backlog) if stream.backlog is not None else 0
            self.biggest = max(self.biggest, held)

        monkeypatch.setattr(TcpStream, "connection_made", made_then_unpaused)
        monkeypatch.setattr(StreamTable, "data", record)


@pytest.fixture
def dropped_pause(monkeypatch: pytest.MonkeyPatch) -> DroppedPause:
    return DroppedPause(monkeypatch)


@pytest.mark.timeout(60)
async def test_a_pause_the_transport_dropped_is_applied_again(make_tunnel, dropped_pause):
    """uvloop (and Debian 12's Python 3.11.2) drop a pause_reading() made in
    connection_made(): the stream must notice at the next read and pause again, or it
    reads on into an unbounded backlog."""
    never = asyncio.Event()

    async def never_reads(reader, writer):
        await never.wait()
        writer.close()

    backend = await start_backend(never_reads)
    tunnel = await make_tunnel(aiowstunnel.CONNECT, backend.port)
    _, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    pusher = Pusher(writer)
    await pusher.until_stalled(0.3)
    assert not pusher.task.done()
    assert dropped_pause.biggest <= 1 * MiB, f"backlog grew to {dropped_pause.biggest} bytes"
    pusher.task.cancel()
    writer.close()
    never.set()
    backend.server.close()


@pytest.mark.timeout(60)
async def test_streams_waiting_for_open_ok_hold_almost_nothing(make_tunnel, dropped_pause):
    """Many clients connect and send at once; their OPEN_OKs are late (the target's accept
    queue is full, so its SYNs wait for a retransmission). What a stream reads before its
    OPEN_OK waits in its backlog and is later sent even while the WebSocket is paused, so
    it must stay one small read: at 16 KiB, 200 such streams held 3 MB twice over
    (docs/performance.md, round 4). Then every byte arrives, in order."""
    target = socket.socket()
    target.bind((LOCAL, 0))
    target.listen(0)  # room for one: the filler below takes it, later SYNs are dropped
    filler = socket.create_connection(target.getsockname())
    backend = None

    async def echo(reader, writer):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    try:
        tunnel = await make_tunnel(aiowstunnel.CONNECT, target.getsockname()[1])
        streams = 20
        payloads = [os.urandom(256 * 1024) for _ in range(streams)]
        conns = [await asyncio.open_connection(LOCAL, tunnel.entry.port) for _ in payloads]
        for (_, writer), payload in zip(conns, payloads, strict=True):
            writer.write(payload)
            writer.write_eof()
        session = tunnel.client.session
        deadline = time.monotonic() + 10
        while sum(s.backlog is not None for s in session.streams) < streams:
            assert time.monotonic() < deadline, "the streams did not read before their OPEN_OK"
            await asyncio.sleep(0.02)
        assert not any(session.streams.accepted(s) for s in session.streams)
        biggest = dropped_pause.biggest
        assert biggest <= 1024, f"a stream waiting for OPEN_OK held {biggest} bytes"

        backend = await asyncio.start_server(echo, sock=target, backlog=1024)  # SYNs get in
        for (reader, writer), payload in zip(conns, payloads, strict=True):
            got = await reader.read()
            writer.close()
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    finally:
        filler.close()
        if backend is not None:
            backend.close()
        else:
            target.close()
