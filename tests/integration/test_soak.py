"""No leaks: thousands of connections and a flapping server leave memory, fds and tasks
where they were. The tunnel runs in its own process and is measured from outside."""

from __future__ import annotations

import asyncio
import time

import pytest

from aiowstunnel.server import Server

from ..helpers import TunnelProcess
from .conftest import LOCAL

MB = 1_000_000


async def one_connection(port: int) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(b"x")
    assert await reader.readexactly(1) == b"x"
    writer.close()
    await writer.wait_closed()


async def settle(tunnel: TunnelProcess, fds: int, timeout: float = 10.0) -> dict:
    """Stats once the tunnel's fd count is back to ``fds`` (closes finish asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await tunnel.stats()
        if (stats["fds"] <= fds and stats["streams_active"] == 0) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


@pytest.mark.timeout(180)
async def test_10000_sequential_connections_no_growth(echo_backend):
    tunnel = await TunnelProcess("both", "connect", echo_backend.port).start()
    try:
        for _ in range(300):  # warm-up: allocator pools, caches
            await one_connection(tunnel.port)
        baseline = await settle(tunnel, 10_000)
        baseline = await settle(tunnel, baseline["fds"])
        started = time.monotonic()
        for _ in range(10_000):
            await one_connection(tunnel.port)
        rate = 10_000 / (time.monotonic() - started)
        after = await settle(tunnel, baseline["fds"])
        print(
            f"\n10,000 connections at {rate:.0f}/s: RSS {baseline['rss'] / MB:.1f} -> "
            f"{after['rss'] / MB:.1f} MB, fds {baseline['fds']} -> {after['fds']}, "
            f"tasks {baseline['tasks']} -> {after['tasks']}"
        )
        assert after["streams_opened"] == baseline["streams_opened"] + 10_000
        assert after["rss"] - baseline["rss"] < 5 * MB
        assert after["fds"] == baseline["fds"]
        assert after["tasks"] == baseline["tasks"]
    finally:
        await tunnel.stop()


@pytest.mark.timeout(180)
async def test_server_flapping_100_times_leaks_nothing_on_the_client(echo_backend):
    server = Server(LOCAL, 0, ping_interval=1.0, ping_timeout=1.0)
    await server.listen()
    port = server.port
    client = await TunnelProcess("client", "connect", port, echo_backend.port).start()
    try:
        flaps = 100
        baseline = None
        for flap in range(flaps + 1):
            while not (await client.stats())["up"]:
                await asyncio.sleep(0.005)
            await one_connection(client.port)  # each incarnation really carries data
            if flap == 0:
                baseline = await client.stats()
            await server.close(0.1)
            server = Server(LOCAL, port, ping_interval=1.0, ping_timeout=1.0)
            await server.listen()
        after = await settle(client, baseline["fds"])
        print(
            f"\n{flaps} server restarts: client RSS {baseline['rss'] / MB:.1f} -> "
            f"{after['rss'] / MB:.1f} MB, fds {baseline['fds']} -> {after['fds']}, "
            f"tasks {baseline['tasks']} -> {after['tasks']}, connects {after['connects']}"
        )
        assert after["connects"] >= flaps + 1
        assert after["fds"] <= baseline["fds"]
        assert after["tasks"] == baseline["tasks"]
        assert after["rss"] - baseline["rss"] < 5 * MB
    finally:
        await client.stop()
        await server.close(0.1)
