"""Unix sockets on either side of a tunnel, both modes, with the real curl; a path that
the rules do not name is refused; a stale socket file is replaced, a live one is not."""

from __future__ import annotations

import asyncio
import os
import socket
import stat

import pytest

import aiowstunnel
from aiowstunnel.client import Client
from aiowstunnel.server import Server
from aiowstunnel.unixsock import clear_stale

from ..helpers import app_entry as entry
from ..helpers import http_handler, run_tool
from .conftest import FAST_BACKOFF, LOCAL, start_backend, wait_for_count

BODY = os.urandom(200_000)


async def curl(*args: str) -> tuple[int, bytes, str]:
    code, out, err = await run_tool("curl", "-sS", "--max-time", "20", *args)
    return code, out, err.decode(errors="replace")


async def unix_http(path: str) -> tuple[asyncio.Server, list[int]]:
    accepted = [0]
    handler = http_handler(BODY)

    async def counted(reader, writer) -> None:
        accepted[0] += 1
        await handler(reader, writer)

    return await asyncio.start_unix_server(counted, path), accepted


async def tunnel(mode, listen: str, connect: str, clients, connect_port: int = 0, **client_kw):
    server = Server(LOCAL, 0, clients=clients)
    await server.listen()
    client = Client(
        mode, LOCAL, server.port, listen, 0, connect, connect_port,
        token="s3cret", backoff=FAST_BACKOFF, name="unix", **client_kw,
    )  # fmt: skip
    client.start()
    return server, client


async def close(server: Server, client: Client) -> None:
    await client.close(1)
    await server.close(1)


@pytest.mark.timeout(30)
async def test_connect_unix_listener_here_unix_target_there(tmp_path) -> None:
    backend_path = str(tmp_path / "app.sock")
    backend, accepted = await unix_http(backend_path)
    entry_path = str(tmp_path / "in.sock")
    server, client = await tunnel(
        aiowstunnel.CONNECT, f"unix:{entry_path}", f"unix:{backend_path}",
        entry(connect=[f"unix:{backend_path}"]), socket_mode=0o600,
    )  # fmt: skip
    try:
        await client.wait_up(10)
        assert stat.S_IMODE(os.stat(entry_path).st_mode) == 0o600
        code, out, err = await curl("--unix-socket", entry_path, "http://app/")
        assert code == 0 and out == BODY, err
        assert accepted[0] == 1
    finally:
        await close(server, client)
        backend.close()


@pytest.mark.timeout(30)
async def test_a_unix_path_not_in_the_rules_is_refused(tmp_path) -> None:
    backend_path = str(tmp_path / "secret.sock")
    backend, accepted = await unix_http(backend_path)
    server, client = await tunnel(
        aiowstunnel.CONNECT, LOCAL, f"unix:{backend_path}",
        entry(connect=[f"unix:{tmp_path / 'other.sock'}", "127.0.0.1:*"]),
    )  # fmt: skip
    try:
        await wait_for_count(client.stats.connect_failures, "forbidden", 1)
        assert "may not connect to unix:" in client.last_error
        assert "not in allow_connect" in client.last_error
        assert server.stats.rejected["forbidden"] >= 1
        assert accepted[0] == 0
    finally:
        await close(server, client)
        backend.close()


@pytest.mark.timeout(30)
async def test_listen_unix_listener_on_the_server(tmp_path) -> None:
    web = await start_backend(http_handler(BODY))
    bound = str(tmp_path / "server-side.sock")
    server, client = await tunnel(
        aiowstunnel.LISTEN, f"unix:{bound}", LOCAL,
        entry(listen=[f"unix:{bound}"]), connect_port=web.port,
    )  # fmt: skip
    try:
        await client.wait_up(10)
        assert str(client.listen_address) == f"unix:{bound}"
        assert stat.S_IMODE(os.stat(bound).st_mode) == 0o660  # the default
        code, out, err = await curl("--unix-socket", bound, "http://app/")
        assert code == 0 and out == BODY, err
    finally:
        await close(server, client)
        web.server.close()
    # the session is gone: the server closed its listener (the file stays, stale)
    with pytest.raises(ConnectionRefusedError):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(bound)
        finally:
            probe.close()


@pytest.mark.timeout(30)
async def test_listen_unix_path_outside_allow_listen_is_403(tmp_path) -> None:
    server, client = await tunnel(
        aiowstunnel.LISTEN, f"unix:{tmp_path / 'x.sock'}", LOCAL,
        entry(listen=[f"unix:{tmp_path / 'y.sock'}"]), connect_port=1,
    )  # fmt: skip
    try:
        await wait_for_count(client.stats.connect_failures, "forbidden", 1)
        assert "not in allow_listen" in client.last_error
        assert not (tmp_path / "x.sock").exists()
    finally:
        await close(server, client)


def test_stale_socket_replaced_live_one_and_files_kept(tmp_path) -> None:
    stale = str(tmp_path / "stale.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(stale)
    sock.close()  # the file stays, nobody listens: what a killed daemon leaves
    clear_stale(stale)
    assert not os.path.exists(stale)

    live = str(tmp_path / "live.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(live)
    listener.listen()
    try:
        with pytest.raises(OSError, match="another process is listening there"):
            clear_stale(live)
        assert os.path.exists(live)
    finally:
        listener.close()

    plain = tmp_path / "plain"
    plain.write_text("data")
    with pytest.raises(OSError, match="exists and is not a socket"):
        clear_stale(str(plain))
    assert plain.read_text() == "data"


@pytest.mark.timeout(30)
async def test_listen_client_dials_a_unix_backend(tmp_path) -> None:
    backend_path = str(tmp_path / "local-app.sock")
    backend, accepted = await unix_http(backend_path)
    server, client = await tunnel(
        aiowstunnel.LISTEN, LOCAL, f"unix:{backend_path}", entry(listen=["127.0.0.1:*"])
    )
    try:
        await client.wait_up(10)
        code, out, err = await curl(f"http://{client.listen_address}/")
        assert code == 0 and out == BODY, err
        assert accepted[0] == 1
    finally:
        await close(server, client)
        backend.close()
