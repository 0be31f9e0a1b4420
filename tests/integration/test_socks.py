"""SOCKS5 through the tunnel, with the real curl: socks5 (the client listens, the server
dials) and reverse-socks5 (the server listens, the client dials), each target checked
against the dialing side's rules before anything is dialed."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

import pytest

import aiowstunnel
from aiowstunnel.addresses import Address, AddressRule
from aiowstunnel.client import Client
from aiowstunnel.socks5 import Credentials, client_request

from ..helpers import app_entry as entry
from ..helpers import http_handler, run_tool
from .conftest import FAST_BACKOFF, LOCAL, start_backend, wait_for_count

BODY = os.urandom(300_000)


async def curl(proxy: Address, url: str, *extra: str) -> tuple[int, bytes, str]:
    code, out, err = await run_tool(
        "curl", "-sS", "--max-time", "20", "--socks5-hostname", str(proxy), *extra, url
    )
    return code, out, err.decode(errors="replace")


@pytest.fixture
async def backends():
    allowed = await start_backend(http_handler(BODY))
    refused = await start_backend(http_handler(b"must never be reached"))
    yield allowed, refused
    allowed.server.close()
    refused.server.close()


@pytest.mark.timeout(40)
async def test_socks5_curl_allowed_and_refused(make_tunnel, backends, caplog) -> None:
    caplog.set_level(logging.INFO)
    allowed, refused = backends
    tunnel = await make_tunnel(
        aiowstunnel.SOCKS5,
        0,
        server_kw={"clients": entry(connect=[f"127.0.0.0/8:{allowed.port}"])},
        client_kw={"token": "s3cret", "name": "socks"},
    )
    # a name, resolved on the server side (socks5h) and pinned to the address the rule allows
    code, out, err = await curl(tunnel.entry, f"http://localhost:{allowed.port}/")
    assert code == 0, err
    assert hashlib.sha256(out).digest() == hashlib.sha256(BODY).digest()
    code, out, err = await curl(tunnel.entry, f"http://127.0.0.1:{allowed.port}/")
    assert code == 0 and out == BODY, err

    code, out, err = await curl(tunnel.entry, f"http://127.0.0.1:{refused.port}/")
    assert code == 97 and out == b"", (code, err)  # 97: the proxy refused the request
    assert "(2)" in err, err  # curl names the reply: 0x02, not allowed by the rules
    assert refused.accepted == 0
    server_stats = tunnel.server.client_stats["app", "socks"]
    assert server_stats.stream_open_failures["forbidden"] == 1
    assert tunnel.client.stats.stream_open_failures["peer_refused"] == 1
    lines = [r.getMessage() for r in caplog.records]
    # the client's log names the rule set that refused
    assert any(
        "refused" in line and "client 'app' may not connect to" in line and "allow_connect" in line
        for line in lines
    ), lines

    # nothing listens there: the server's dial is refused, curl hears 0x05
    free = await start_backend()
    port = free.port
    free.server.close()
    await free.server.wait_closed()
    tunnel.server.set_clients(entry(connect=["127.0.0.0/8:*"]))
    code, _, err = await curl(tunnel.entry, f"http://127.0.0.1:{port}/")
    assert code == 97 and "(5)" in err, err  # 0x05 connection refused
    assert server_stats.stream_open_failures["refused"] == 1


@pytest.mark.timeout(40)
async def test_reverse_socks5_the_client_decides(make_tunnel, backends) -> None:
    allowed, refused = backends
    tunnel = await make_tunnel(
        aiowstunnel.REVERSE_SOCKS5,
        0,
        server_kw={"clients": entry(listen=["127.0.0.1:*"])},
        client_kw={
            "token": "s3cret",
            "name": "rsocks",
            "allow_connect": (AddressRule.parse(f"127.0.0.1:{allowed.port}"),),
        },
    )
    code, out, err = await curl(tunnel.entry, f"http://127.0.0.1:{allowed.port}/")
    assert code == 0 and out == BODY, err
    code, out, err = await curl(tunnel.entry, f"http://127.0.0.1:{refused.port}/")
    assert code == 97 and "(2)" in err, err
    assert refused.accepted == 0
    assert tunnel.client.stats.stream_open_failures["forbidden"] == 1
    assert tunnel.server.client_stats["app", "rsocks"].stream_open_failures["peer_refused"] == 1


@pytest.mark.timeout(40)
async def test_socks5_username_password(make_tunnel, backends) -> None:
    allowed, _ = backends
    tunnel = await make_tunnel(
        aiowstunnel.SOCKS5,
        0,
        server_kw={"clients": entry(connect=[f"127.0.0.1:{allowed.port}"])},
        client_kw={"token": "s3cret", "socks_credentials": Credentials("alice", "pw1")},
    )
    url = f"http://127.0.0.1:{allowed.port}/"
    code, out, err = await curl(tunnel.entry, url, "--proxy-user", "alice:pw1")
    assert code == 0 and out == BODY, err
    code, _, err = await curl(tunnel.entry, url, "--proxy-user", "alice:wrong")
    assert code == 97, err
    code, _, err = await curl(tunnel.entry, url)  # offers no username/password
    assert code == 97, err
    assert tunnel.client.stats.stream_open_failures["socks"] == 2
    assert allowed.accepted == 1


@pytest.mark.timeout(60)
async def test_200_concurrent_socks_streams_of_1_mib(make_tunnel, echo_backend) -> None:
    tunnel = await make_tunnel(
        aiowstunnel.SOCKS5,
        0,
        server_kw={"clients": entry(connect=[f"127.0.0.1:{echo_backend.port}"])},
        client_kw={"token": "s3cret"},
    )
    size = 1 << 20

    async def one(index: int) -> bool:
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(client_request(Address(LOCAL, echo_backend.port)))
        assert await reader.readexactly(2) == b"\x05\x00"
        assert (await reader.readexactly(10))[1] == 0  # succeeded
        data = hashlib.sha256(index.to_bytes(4, "big")).digest() * (size // 32)
        writer.write(data)
        writer.write_eof()
        got = await reader.read(-1)
        writer.close()
        return hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 50)
    assert all(results)
    assert echo_backend.accepted == 200


def test_socks_modes_need_no_fixed_target() -> None:
    client = Client(aiowstunnel.SOCKS5, LOCAL, 1, LOCAL, 0, "", 0, backoff=FAST_BACKOFF)
    assert client.connect is None


@pytest.mark.timeout(30)
async def test_reverse_socks5_negotiations_count_in_the_server_limits(make_tunnel, echo_backend):
    from aiowstunnel.limits import ServerLimits

    tunnel = await make_tunnel(
        aiowstunnel.REVERSE_SOCKS5,
        0,
        server_kw={
            "clients": entry(listen=["127.0.0.1:*"]),
            "limits": ServerLimits(max_client_streams=2, max_streams_total=4),
        },
        client_kw={
            "token": "s3cret",
            "name": "rsocks",
            "allow_connect": (AddressRule.parse(f"127.0.0.1:{echo_backend.port}"),),
        },
    )
    proxy = tunnel.entry
    idle = []
    for _ in range(2):  # connected, greeting sent, request never finished: each holds a slot
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        idle.append(writer)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        writer.write(b"\x05\x01\x00")
        await reader.readexactly(2)  # refused at once: the client entry's streams are used
    writer.close()
    assert tunnel.server.limit_stats.hits["client_streams"] >= 1
    for writer in idle:
        writer.close()
    await asyncio.sleep(0)  # the slots come back as the server sees the closes

    async def works() -> bool:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(client_request(Address(LOCAL, echo_backend.port)) + b"x")
        writer.write_eof()
        data = await reader.read(-1)
        writer.close()
        return data == b"\x05\x00" + bytes((5, 0, 0, 1, 0, 0, 0, 0, 0, 0)) + b"x"

    for _ in range(50):  # bounded: the server handles the two closes within a few loops
        if await works():
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the slots of closed negotiations were not given back")


@pytest.mark.timeout(30)
async def test_socks5_session_closed_when_its_entry_may_connect_nowhere(make_tunnel, backends):
    allowed, _ = backends
    tunnel = await make_tunnel(
        aiowstunnel.SOCKS5,
        0,
        server_kw={"clients": entry(connect=[f"127.0.0.1:{allowed.port}"])},
        client_kw={"token": "s3cret", "name": "socks"},
    )
    tunnel.server.set_clients(entry())  # a reload takes every allow_connect rule away
    await wait_for_count(tunnel.client.stats.connect_failures, "forbidden", 1)
    assert "may not connect anywhere (allow_connect is empty)" in tunnel.client.last_error
    assert not tunnel.server.sessions


@pytest.mark.timeout(30)
async def test_reverse_socks5_username_password(make_tunnel, backends) -> None:
    allowed, _ = backends
    tunnel = await make_tunnel(
        aiowstunnel.REVERSE_SOCKS5,
        0,
        server_kw={"clients": entry(listen=["127.0.0.1:*"])},
        client_kw={
            "token": "s3cret",
            "allow_connect": (AddressRule.parse(f"127.0.0.1:{allowed.port}"),),
            "socks_credentials": Credentials("bob", "pw2"),  # sent to the server's proxy
        },
    )
    url = f"http://127.0.0.1:{allowed.port}/"
    code, out, err = await curl(tunnel.entry, url, "--proxy-user", "bob:pw2")
    assert code == 0 and out == BODY, err
    code, _, err = await curl(tunnel.entry, url, "--proxy-user", "bob:nope")
    assert code == 97, err
    assert allowed.accepted == 1


@pytest.mark.timeout(30)
async def test_socks5_ipv6_target(make_tunnel) -> None:
    served = []

    async def handler(reader, writer) -> None:
        served.append(writer.get_extra_info("sockname")[0])
        await http_handler(BODY)(reader, writer)

    v6 = await asyncio.start_server(handler, "::1", 0)
    port = v6.sockets[0].getsockname()[1]
    try:
        tunnel = await make_tunnel(
            aiowstunnel.SOCKS5,
            0,
            server_kw={"clients": entry(connect=[f"[::1]:{port}"])},
            client_kw={"token": "s3cret"},
        )
        for flag in ("--socks5-hostname", "--socks5"):  # as a name or as an IPv6 address
            code, out, err = await run_tool(
                "curl", "-sS", "--max-time", "20", flag, str(tunnel.entry), f"http://[::1]:{port}/"
            )
            assert code == 0 and out == BODY, err
        assert served == ["::1", "::1"]
    finally:
        v6.close()
