"""Fixtures for tests over real loopback sockets: backends and tunnels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

import aiowstunnel
from aiowstunnel.addresses import Address
from aiowstunnel.client import Client
from aiowstunnel.server import Server

from ..helpers import (  # noqa: F401  (re-exported for the tests of this folder)
    FAST_BACKOFF,
    LOCAL,
    Backend,
    FaultProxy,
    echo_roundtrip,
    pattern_block,
    start_backend,
    wait_for_count,
)


@pytest.fixture
async def echo_backend() -> AsyncIterator[Backend]:
    backend = await start_backend()
    yield backend
    backend.server.close()


@dataclass
class Tunnel:
    server: Server
    client: Client

    @property
    def entry(self) -> Address:
        """Where a user connects to enter the tunnel (the listener of either side)."""
        assert self.client.listen_address is not None
        return self.client.listen_address


@pytest.fixture
async def make_tunnel() -> AsyncIterator[Callable[..., object]]:
    """Start a Server and a Client on loopback; returns the factory, closes them after."""
    made: list[Tunnel] = []

    async def factory(
        mode: aiowstunnel.Mode,
        target_port: int,
        *,
        server_kw: dict | None = None,
        client_kw: dict | None = None,
        wait: bool = True,
    ) -> Tunnel:
        server = Server(LOCAL, 0, **(server_kw or {}))
        await server.listen()
        kw = {"backoff": FAST_BACKOFF, **(client_kw or {})}
        client = Client(mode, LOCAL, server.port, LOCAL, 0, LOCAL, target_port, **kw)
        client.start()
        tunnel = Tunnel(server, client)
        made.append(tunnel)
        if wait:
            await client.wait_up(10)
        return tunnel

    yield factory
    for tunnel in made:
        await tunnel.client.close(timeout=1)
        await tunnel.server.close(timeout=1)
