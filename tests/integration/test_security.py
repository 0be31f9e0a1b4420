"""Tokens and rules are enforced before the upgrade; refusals carry their reason."""

from __future__ import annotations

import asyncio
import logging

import pytest

import aiowstunnel
from aiowstunnel.addresses import AddressRule
from aiowstunnel.client import Client
from aiowstunnel.policy import ClientPolicy, token_digest

from .conftest import FAST_BACKOFF, echo_roundtrip, start_backend, wait_for_count


def policy(name: str, token: str, connect: list[str] = (), listen: list[str] = ()):
    return ClientPolicy(
        name,
        token_digest(token),
        tuple(AddressRule.parse(r) for r in connect),
        tuple(AddressRule.parse(r) for r in listen),
    )


@pytest.mark.timeout(30)
async def test_good_token_and_allowed_target_carry_data(make_tunnel, echo_backend):
    clients = [policy("app", "s3cret", connect=[f"127.0.0.1:{echo_backend.port}"])]
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"clients": clients},
        client_kw={"token": "s3cret", "name": "app"},
    )
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 20)
    assert sent == received
    assert tunnel.server.client_stats["app", "app"].streams_opened == 1  # (entry, tunnel)


@pytest.mark.timeout(30)
async def test_wrong_token_is_401_with_reason_and_client_keeps_retrying(
    make_tunnel, echo_backend, caplog
):
    caplog.set_level(logging.INFO)
    clients = [policy("app", "s3cret", connect=[f"127.0.0.1:{echo_backend.port}"])]
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"clients": clients},
        client_kw={"token": "wrong"},
        wait=False,
    )
    await wait_for_count(tunnel.client.stats.connect_failures, "bad_token", 3)
    assert tunnel.server.stats.rejected["bad_token"] >= 3
    client_lines = [r.getMessage() for r in caplog.records if r.name == "aiowstunnel.client"]
    assert any("401" in line and "invalid token" in line for line in client_lines)
    assert not tunnel.client.up
    assert echo_backend.accepted == 0


@pytest.mark.timeout(30)
async def test_missing_token_is_401(make_tunnel, echo_backend):
    clients = [policy("app", "s3cret", connect=["*:*"])]
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT, echo_backend.port, server_kw={"clients": clients}, wait=False
    )
    await wait_for_count(tunnel.client.stats.connect_failures, "bad_token", 1)
    assert "missing bearer token" in tunnel.client.last_error


@pytest.mark.timeout(30)
async def test_refused_target_is_403_and_target_sees_no_connection(make_tunnel, caplog):
    caplog.set_level(logging.INFO)
    allowed = await start_backend()
    forbidden = await start_backend()
    clients = [policy("app", "s3cret", connect=[f"127.0.0.1:{allowed.port}"])]
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        forbidden.port,
        server_kw={"clients": clients},
        client_kw={"token": "s3cret"},
        wait=False,
    )
    await wait_for_count(tunnel.client.stats.connect_failures, "forbidden", 2)
    assert "403" in tunnel.client.last_error
    assert "not in allow_connect" in tunnel.client.last_error
    # A user connecting meanwhile is turned away locally; nothing reaches the target.
    listener = None
    for _ in range(200):
        listener = tunnel.client.listen_address
        if listener:
            break
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection(listener.host, listener.port)
    writer.write(b"knock")
    with pytest.raises(ConnectionResetError):  # a reset: the user knows it did not work
        await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert forbidden.accepted == 0
    assert tunnel.client.stats.stream_open_failures["tunnel_down"] >= 1


@pytest.mark.timeout(30)
async def test_listen_outside_allow_listen_is_403(make_tunnel, echo_backend):
    clients = [policy("app", "s3cret", listen=["127.0.0.1:1-1023"])]
    tunnel = await make_tunnel(
        aiowstunnel.LISTEN,
        echo_backend.port,
        server_kw={"clients": clients},
        client_kw={"token": "s3cret"},
        wait=False,
    )
    await wait_for_count(tunnel.client.stats.connect_failures, "forbidden", 1)
    assert "not in allow_listen" in tunnel.client.last_error


@pytest.mark.timeout(30)
async def test_listen_on_port_in_use_is_409_with_reason(make_tunnel, echo_backend):
    clients = [policy("app", "s3cret", listen=["127.0.0.1:*"])]
    busy = await start_backend()
    tunnel = await make_tunnel(
        aiowstunnel.LISTEN,
        echo_backend.port,
        server_kw={"clients": clients},
        client_kw={"token": "s3cret"},
        wait=False,
    )
    # Point the LISTEN request at a port that is already bound.
    tunnel.client.listen = type(tunnel.client.listen)("127.0.0.1", busy.port)
    await wait_for_count(tunnel.client.stats.connect_failures, "listen_failed", 1)
    assert f"cannot listen on 127.0.0.1:{busy.port}" in tunnel.client.last_error


@pytest.mark.timeout(30)
async def test_removing_permission_closes_session_with_reason(make_tunnel, echo_backend, caplog):
    """Only the client whose rule went away loses its session, and it is told why; another
    client of the same server keeps its session and its stream."""
    caplog.set_level(logging.INFO)
    rule = f"127.0.0.1:{echo_backend.port}"
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={
            "clients": [policy("app", "s3cret", connect=[rule]), policy("db", "t0k", [rule])]
        },
        client_kw={"token": "s3cret", "name": "app"},
    )
    other = Client(
        aiowstunnel.CONNECT,
        "127.0.0.1",
        tunnel.server.port,
        "127.0.0.1",
        0,
        "127.0.0.1",
        echo_backend.port,
        token="t0k",
        name="db",
        backoff=FAST_BACKOFF,
    )
    other.start()
    try:
        await other.wait_up(10)
        session = other.session
        tunnel.server.set_clients(
            [policy("app", "s3cret", connect=[]), policy("db", "t0k", [rule])]
        )
        await wait_for_count(tunnel.client.stats.connect_failures, "forbidden", 1)
        assert not tunnel.client.up
        down = [r.getMessage() for r in caplog.records if "tunnel down" in r.getMessage()]
        assert any(f"1008 connect to {rule} is no longer allowed" in m for m in down), down
        assert other.session is session  # untouched: the same session, still carrying data
        sent, received = await echo_roundtrip(other.listen_address, 1 << 16)
        assert sent == received
    finally:
        await other.close(1)


@pytest.mark.timeout(30)
async def test_tunnel_names_per_client_entry_are_bounded(echo_backend, monkeypatch):
    # Each name the client sends becomes a label: past the cap they share one series.
    from aiowstunnel import server as server_module
    from aiowstunnel.server import Server

    monkeypatch.setattr(server_module, "MAX_TUNNEL_NAMES", 2)
    server = Server("127.0.0.1", 0, clients=[policy("acc", "t", connect=["127.0.0.1:1-65535"])])
    await server.listen()
    clients = [
        Client(
            aiowstunnel.CONNECT,
            "127.0.0.1",
            server.port,
            "127.0.0.1",
            0,
            "127.0.0.1",
            echo_backend.port,
            token="t",
            name=name,
            backoff=FAST_BACKOFF,
        )
        for name in ("db", "web", "ssh", "db")
    ]
    try:
        for client in clients:
            client.start()
            await client.wait_up(10)
        assert sorted(server.client_stats) == [("acc", "(other)"), ("acc", "db"), ("acc", "web")]
        assert server.client_stats["acc", "db"].sessions_active == 2  # the same name twice
        assert server.client_stats["acc", "(other)"].sessions_active == 1  # ssh, past the cap
    finally:
        for client in clients:
            await client.close(1)
        await server.close(1)
