"""The replay log's limit follows the path (resume.paced_limit): over a long path it grows
so that several streams are not held to the floor per round trip, on loopback it stays at
the floor, and the bytes arrive intact either way. The long path is a FaultProxy that
forwards each chunk 50 ms after it came, in each direction (100 ms round trip)."""

from __future__ import annotations

import asyncio

import pytest

import aiowstunnel
from aiowstunnel.client import Client
from aiowstunnel.resume import DEFAULT_MAX_LOG_BYTES, DEFAULT_MIN_LOG_BYTES, ReplayLog
from aiowstunnel.server import Server

from .conftest import FAST_BACKOFF, LOCAL, FaultProxy, start_backend
from .test_resume import transfer

MiB = 1 << 20


async def _largest_limits(client: Client, server: Server, work) -> tuple[int, int]:
    """Run ``work`` and return the largest limit each side's log had meanwhile (polled)."""
    session = client.session
    assert session is not None and session.resumption is not None
    server_sessions = list(server.resumable.sessions.values())
    assert len(server_sessions) == 1 and server_sessions[0].resumption is not None
    logs: list[ReplayLog] = [session.resumption.log, server_sessions[0].resumption.log]
    largest = [log.limit for log in logs]
    task = asyncio.ensure_future(work)
    while not task.done():
        largest = [max(seen, log.limit) for seen, log in zip(largest, logs, strict=True)]
        await asyncio.wait([task], timeout=0.01)
    await task
    return largest[0], largest[1]


async def _tunnel(delay: float):
    backend = await start_backend()
    server = Server(LOCAL, 0)
    await server.listen()
    proxy = await FaultProxy(server.port, delay=delay).start()
    client = Client(
        aiowstunnel.CONNECT, LOCAL, proxy.port, LOCAL, 0, LOCAL, backend.port,
        backoff=FAST_BACKOFF,
    )  # fmt: skip
    client.start()
    await client.wait_up(10)
    return backend, server, proxy, client


async def _close(backend, server, proxy, client) -> None:
    await client.close(1)
    await server.close(1)
    proxy.close()
    backend.server.close()


async def _echo_all(client: Client, streams: int, size: int) -> None:
    entry = client.listen_address
    results = await asyncio.gather(*(transfer(entry, size) for _ in range(streams)))
    for sent, got in results:
        assert sent == got


@pytest.mark.timeout(90)
async def test_over_a_long_path_both_logs_grow_to_their_ceiling_and_the_bytes_arrive() -> None:
    parts = await _tunnel(delay=0.05)
    client, server = parts[3], parts[1]
    try:
        # the opening pings timed the path on both sides
        session = client.session
        assert session is not None
        await asyncio.wait_for(_until_measured(session.link), 5)
        assert 0.09 < session.link.round_trip < 0.5
        up, down = await _largest_limits(client, server, _echo_all(client, 4, 6 * MiB))
        # 4 streams of a 2 MiB window each could keep 8 MiB in flight each way
        assert (up, down) == (DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_LOG_BYTES)
    finally:
        await _close(*parts)


@pytest.mark.timeout(60)
async def test_on_loopback_the_logs_stay_at_their_floor_under_200_echoes() -> None:
    parts = await _tunnel(delay=0.0)
    client, server = parts[3], parts[1]
    try:
        up, down = await _largest_limits(client, server, _echo_all(client, 200, MiB))
        assert (up, down) == (DEFAULT_MIN_LOG_BYTES, DEFAULT_MIN_LOG_BYTES)
    finally:
        await _close(*parts)


async def _until_measured(link) -> None:
    while link.round_trip == float("inf"):
        await asyncio.sleep(0.01)
