"""The detached sessions' limits (docs/configuration.md: max_detached_per_client,
max_detached_sessions, max_detached_bytes): past one, the oldest detached session expires
early, its streams reset toward their applications, the hit counted; its client's resume
is refused with ``limit`` and a fresh session works at once; the others resume intact."""

from __future__ import annotations

import asyncio
import time

import pytest

import aiowstunnel
from aiowstunnel.addresses import AddressRule
from aiowstunnel.client import Client
from aiowstunnel.limits import ServerLimits
from aiowstunnel.policy import ClientPolicy, token_digest
from aiowstunnel.server import Server

from .conftest import FAST_BACKOFF, LOCAL, FaultProxy, echo_roundtrip


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Tunnels:
    """One server; each tunnel a Client of its own, through a FaultProxy of its own, with
    one echo stream open."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.proxies: dict[str, FaultProxy] = {}
        self.clients: dict[str, Client] = {}
        self.streams: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def add(self, name: str, entry: str, target: int) -> None:
        proxy = await FaultProxy(self.server.port).start()
        client = Client(
            aiowstunnel.CONNECT, LOCAL, proxy.port, LOCAL, 0, LOCAL, target,
            token=f"{entry}-token", name=name, backoff=FAST_BACKOFF, resume_timeout=8,
        )  # fmt: skip
        client.start()
        await client.wait_up(10)
        address = client.listen_address
        assert address is not None
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        self.proxies[name], self.clients[name] = proxy, client
        self.streams[name] = reader, writer

    def detached(self, entry: str) -> int:
        return sum(
            s.sessions_detached for s in self.server.client_stats.values() if s.client == entry
        )

    async def break_path(self, name: str, server_knows) -> None:
        """The path of ``name`` goes down and stays down; wait until ``server_knows()``."""
        proxy = self.proxies[name]
        proxy.refuse = True
        proxy.cut()
        await _until(lambda: self.clients[name].detached, 5)
        await _until(server_knows, 5)

    async def close(self) -> None:
        for _, writer in self.streams.values():
            writer.close()
        for client in self.clients.values():
            await client.close(1)
        await self.server.close(1)
        for proxy in self.proxies.values():
            proxy.close()


def _entries(target: int) -> list[ClientPolicy]:
    rule = (AddressRule.parse(f"{LOCAL}:{target}"),)
    return [ClientPolicy(e, token_digest(f"{e}-token"), rule) for e in ("a", "b")]


@pytest.mark.timeout(60)
async def test_past_a_detached_limit_the_oldest_expires_and_its_client_starts_afresh(
    echo_backend,
):
    limits = ServerLimits(max_detached_per_client=2, max_detached_sessions=2)
    server = Server(LOCAL, 0, clients=_entries(echo_backend.port), limits=limits)
    await server.listen()
    tunnels = Tunnels(server)
    try:
        for name, entry in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")):
            await tunnels.add(name, entry, echo_backend.port)
        hits = server.limit_stats.hits
        await tunnels.break_path("a1", lambda: tunnels.detached("a") == 1)
        await tunnels.break_path("a2", lambda: tunnels.detached("a") == 2)
        held = sum(s.detached_bytes for s in server.client_stats.values())
        assert held > 0  # what a1 and a2 sent and were not told was received
        # A third of entry a: over max_detached_per_client, its oldest (a1) expires.
        await tunnels.break_path("a3", lambda: hits["detached_per_client"] == 1)
        assert tunnels.detached("a") == 2
        assert server.client_stats["a", "a1"].stream_resets["detached_limit"] == 1
        # One of entry b: over max_detached_sessions, the oldest of all (a2) expires.
        await tunnels.break_path("b1", lambda: hits["detached_sessions"] == 1)
        assert server.client_stats["a", "a2"].stream_resets["detached_limit"] == 1
        assert tunnels.detached("a") == 1 and tunnels.detached("b") == 1

        for proxy in tunnels.proxies.values():  # the paths heal
            proxy.refuse = False
        for name in ("a1", "a2"):  # told why: their streams reset, a fresh session at once
            reader, _ = tunnels.streams[name]
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 10)
            client = tunnels.clients[name]
            await _until(lambda c=client: c.up and c.stats.connects == 2, 10)
            assert client.stats.resumes["limit"] == 1
            assert client.stats.stream_resets["resume_refused"] == 1
            address = client.listen_address
            sent, received = await echo_roundtrip(address, 1 << 20)
            assert sent == received
        for name in ("a3", "b1"):  # under the limits: resumed, the stream intact
            reader, writer = tunnels.streams[name]
            writer.write(b"after")
            assert await asyncio.wait_for(reader.readexactly(5), 10) == b"after"
            assert tunnels.clients[name].stats.resumes["ok"] == 1
        assert server.stats.resumes["limit"] == 2 and server.stats.resumes["ok"] == 2
        await _until(lambda: tunnels.detached("a") + tunnels.detached("b") == 0, 5)
        assert sum(s.detached_bytes for s in server.client_stats.values()) == 0
    finally:
        await tunnels.close()


@pytest.mark.timeout(60)
async def test_past_max_detached_bytes_a_detached_session_expires_at_once(echo_backend):
    # One byte: any detached session holding what its client has not confirmed is over.
    server = Server(
        LOCAL, 0, clients=_entries(echo_backend.port), limits=ServerLimits(max_detached_bytes=1)
    )
    await server.listen()
    tunnels = Tunnels(server)
    try:
        await tunnels.add("a1", "a", echo_backend.port)
        proxy = tunnels.proxies["a1"]
        proxy.refuse = True
        proxy.cut()
        await _until(lambda: server.limit_stats.hits["detached_bytes"] == 1, 5)
        stats = server.client_stats["a", "a1"]
        assert stats.stream_resets["detached_limit"] == 1
        assert stats.sessions_detached == 0 and stats.detached_bytes == 0
        assert not server.sessions
        proxy.refuse = False
        reader, _ = tunnels.streams["a1"]
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 10)
        # and then closed at once, while its fresh session is being opened: close() must
        # not hang (Python 3.11's wait_for could drop its cancellation: clientconnect)
        assert tunnels.clients["a1"].stats.resumes["limit"] == 1
    finally:
        await tunnels.close()
