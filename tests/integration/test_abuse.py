"""Hostile or broken peers get a defined answer, are counted, and hurt nobody else."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import aiowstunnel
from aiowstunnel import wire
from aiowstunnel.addresses import Address, AddressRule
from aiowstunnel.handshake import TunnelRequest
from aiowstunnel.limits import ServerLimits
from aiowstunnel.policy import ClientPolicy, token_digest

from .conftest import LOCAL, echo_roundtrip


@pytest.mark.timeout(30)
async def test_slowloris_handshakes_are_cut_at_the_timeout(make_tunnel, echo_backend):
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        # all 50 from one address: this test is about the timeout, not the per-address limit
        server_kw={"handshake_timeout": 0.5, "limits": ServerLimits(max_handshakes_per_address=64)},
    )
    port = tunnel.server.port

    durations = await asyncio.gather(*(_drip(port) for _ in range(50)))
    assert all(d < 0.5 + 1.0 for d in durations), durations
    assert tunnel.server.stats.rejected["handshake_timeout"] == 50
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 20)  # others are fine
    assert sent == received


@pytest.mark.timeout(30)
async def test_the_handshake_deadline_ends_with_the_upgrade_and_stays_for_a_refusal(
    make_tunnel, echo_backend
):
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT, echo_backend.port, server_kw={"handshake_timeout": 0.5}
    )
    # an open session does not keep its deadline's timer (nor the session in it)
    assert [s.guard.deadline for s in tunnel.server.sessions if s.guard] == [None]
    # a refused peer that stays connected is still dropped at the deadline (0.5 s), not
    # at the closing handshake's 5 s: the server's EOF comes with the 404, its RST then
    reader, writer = await asyncio.open_connection(LOCAL, tunnel.server.port)
    started = time.monotonic()
    writer.write(
        b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 5)  # the server's side, half-closed
    assert answer.startswith(b"HTTP/1.1 404"), answer[:40]
    assert b"X-Aiowstunnel-Refusal: bad_path" in answer
    with pytest.raises(ConnectionError):
        for _ in range(100):  # ours still open: each write lands, until the server's RST
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)
    assert time.monotonic() - started < 2.0
    writer.close()
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 16)  # the session lives on
    assert sent == received


async def _drip(port: int) -> float:
    """Send an upgrade request one byte at a time until the server hangs up."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    started = time.monotonic()
    writer.write(b"GET /aiowstunnel HTTP/1.1\r\nHost: x\r\n")
    closed = asyncio.ensure_future(reader.read())
    for _ in range(100):  # at most 5 s
        if closed.done():
            break
        try:
            writer.write(b"X")
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.wait([closed], timeout=0.05)
    took = time.monotonic() - started
    closed.cancel()
    writer.close()
    return took


@pytest.mark.timeout(60)
async def test_thousands_of_failed_authentications_while_a_client_works(make_tunnel, echo_backend):
    clients = [
        ClientPolicy(
            "app",
            token_digest("s3cret"),
            (AddressRule.parse(f"{LOCAL}:{echo_backend.port}"),),
        )
    ]
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"clients": clients},
        client_kw={"token": "s3cret"},
    )
    request = TunnelRequest(aiowstunnel.CONNECT, Address(LOCAL, echo_backend.port), "guess")
    url = f"ws://{LOCAL}:{tunnel.server.port}/aiowstunnel"
    attempts = 2000

    async def attacker(count: int) -> int:
        refused = 0
        for _ in range(count):
            try:
                async with connect(
                    url, subprotocols=[wire.SUBPROTOCOL], additional_headers=request.headers()
                ):
                    pass
            except InvalidStatus as exc:
                assert exc.response.status_code == 401
                refused += 1
        return refused

    attack = asyncio.gather(*(attacker(attempts // 20) for _ in range(20)))
    legit = [echo_roundtrip(tunnel.entry, 4 << 20) for _ in range(5)]
    results = await asyncio.gather(attack, *legit)
    assert sum(results[0]) == attempts
    assert all(sent == received for sent, received in results[1:])
    assert tunnel.server.stats.rejected["bad_token"] == attempts
    assert tunnel.client.up


@pytest.mark.timeout(30)
async def test_stream_id_exhaustion_starts_a_new_session(make_tunnel, echo_backend):
    tunnel = await make_tunnel(aiowstunnel.CONNECT, echo_backend.port)
    first = tunnel.client.session
    first.mux._next_id = 0xFFFFFFFF  # the last odd id: one more stream, then none
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 16)
    assert sent == received
    reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    with pytest.raises(ConnectionResetError):  # refused: no id left; a reset, not an EOF
        await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await asyncio.wait_for(first.wait_closed(), 5)
    await tunnel.client.wait_up(10)
    assert tunnel.client.session is not first
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 16)
    assert sent == received


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "token",
    [b"\xff\xfe", "caf\u00e9".encode(), b"\xed\xa0\x80", b"x" * 4000],
    ids=["latin1-bytes", "utf8", "encoded-surrogate", "long"],
)
async def test_non_ascii_token_bytes_get_a_prompt_401(make_tunnel, echo_backend, token):
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"clients": [ClientPolicy("app", token_digest("s3cret"), ())]},
        client_kw={"token": "s3cret"},
        wait=False,
    )
    reader, writer = await asyncio.open_connection(LOCAL, tunnel.server.port)
    writer.write(
        b"GET /aiowstunnel HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: aiowstunnel.v1\r\nX-Aiowstunnel-Mode: connect\r\n"
        b"X-Aiowstunnel-Address: 127.0.0.1:1\r\nAuthorization: Bearer " + token + b"\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
    assert b"invalid token" in answer
