"""A 15-second blackout (issue 14, Must show): the path stops forwarding without a word to
either side (the fault proxy holds every connection open and drops nothing), both
keepalives detect it and detach the session, the proxy then drops the connection, the path
heals, and the session resumes: the stream that was carrying data both ways arrives
intact, by digest."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

import aiowstunnel

from .conftest import start_backend
from .test_resume import Tunnel, _until, echo, scrape

BLACKOUT = 15.0
CHUNK = 16 * 1024
CHUNKS = 400  # 6.25 MiB each way, paced over about 4 s of flowing path


@pytest.mark.timeout(60)
async def test_a_15_second_blackout_is_detected_and_the_session_resumes_intact():
    # A keepalive that notices within 5 s, as an operator would set it for a lossy path
    # (the defaults, 20 s + 20 s, would outlast this blackout); an upgrade through the
    # dead path gives up after 2 s, and the client tries again.
    ping = {"ping_interval": 2.0, "ping_timeout": 3.0}
    backend = await start_backend(echo)
    tunnel = await Tunnel.start(
        aiowstunnel.CONNECT,
        backend.port,
        server_kw=ping,
        client_kw={**ping, "handshake_timeout": 2.0, "name": "t"},
    )
    try:
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        sent, got = hashlib.sha256(), hashlib.sha256()
        received = 0

        async def send() -> None:  # paced, so that it is mid-stream when the path dies
            for _ in range(CHUNKS):
                chunk = os.urandom(CHUNK)
                sent.update(chunk)
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write_eof()

        async def read() -> None:
            nonlocal received
            while data := await reader.read(256 * 1024):
                got.update(data)
                received += len(data)

        flows = asyncio.gather(send(), read())
        await _until(lambda: received >= 20 * CHUNK, 10)  # data flows both ways
        session = tunnel.client.session
        tunnel.proxy.stalled = True  # the blackout: nothing forwarded, nothing dropped
        started = time.monotonic()
        await _until(lambda: tunnel.client.detached, 8)
        assert "peer silent" in session.detach_reason
        await _until(lambda: scrape(tunnel, "server_sessions_detached", tunnel="t") == 1, 8)
        during = received
        await asyncio.sleep(BLACKOUT - (time.monotonic() - started))
        assert received == during  # nothing got through the blackout
        tunnel.proxy.cut()  # the middlebox finally drops its connections ...
        tunnel.proxy.stalled = False  # ... and the path heals
        healed = time.monotonic()
        await asyncio.wait_for(flows, 30)
        writer.close()
        assert received == CHUNKS * CHUNK, f"{received} of {CHUNKS * CHUNK} bytes back"
        assert sent.digest() == got.digest()
        assert tunnel.client.session is session  # the same session, resumed
        assert tunnel.client.stats.resumes["ok"] == 1
        assert sum(tunnel.client.stats.stream_resets.values()) == 0
        assert tunnel.server.stats.resumes["ok"] == 1
        took = time.monotonic() - healed
        print(f"\nblackout {BLACKOUT:g} s: the stream done {took:.1f} s after the path healed")
    finally:
        await tunnel.close()
        backend.server.close()
