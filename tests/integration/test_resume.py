"""Streams survive a broken WebSocket (protocol.md, Resumption): a fault proxy between
client and server cuts the connection, both sides with an RST, and the session resumes
over a new one, on real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

import aiowstunnel
from aiowstunnel.client import Client
from aiowstunnel.server import Server

from .conftest import FAST_BACKOFF, LOCAL, FaultProxy, start_backend

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
        """Cut the connection and wait until the session is resumed."""
        session = self.client.session
        assert self.proxy.cut() >= 1
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if self.client.session is session and self.client.up and not session.link.lost:
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


async def transfer(entry, size: int) -> tuple[bytes, bytes]:
    """Send ``size`` random bytes through an echo, read them back: both digests."""
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

    await asyncio.gather(send(), read())
    writer.close()
    assert received == size, f"{received} of {size} bytes came back"
    return sent.digest(), got.digest()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_one_stream_survives_cuts_intact(mode):
    backend = await start_backend(echo)
    tunnel = await Tunnel.start(mode, backend.port)
    try:
        task = asyncio.ensure_future(transfer(tunnel.entry, 64 * MiB))
        cuts = 0
        while cuts < 5 and not task.done():
            await asyncio.sleep(0.05)
            await tunnel.cut()
            cuts += 1
        sent, got = await asyncio.wait_for(task, 90)
        assert sent == got
        assert cuts >= 3
        assert tunnel.client.stats.resumes["ok"] == cuts
        assert sum(tunnel.client.stats.stream_resets.values()) == 0
    finally:
        await tunnel.close()
        backend.server.close()
