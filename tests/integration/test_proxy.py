"""A client behind an HTTP proxy reaches the server with CONNECT; a refusal is reported."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import aiowstunnel

from .conftest import LOCAL, echo_roundtrip, wait_for_count


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on loopback that records what it was asked."""

    def __init__(self, allow: bool = True) -> None:
        self.allow = allow
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, LOCAL, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        if not self.allow:
            writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            writer.close()
            return
        host, port = line.split()[1].rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src, dst) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.timeout(30)
async def test_tunnel_through_http_connect_proxy(make_tunnel, echo_backend):
    proxy = ConnectProxy()
    port = await proxy.start()
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT, echo_backend.port, client_kw={"proxy": f"http://{LOCAL}:{port}"}
    )
    sent, received = await echo_roundtrip(tunnel.entry, 4 << 20)
    assert sent == received
    assert proxy.requests == [f"CONNECT {LOCAL}:{tunnel.server.port} HTTP/1.1"]


@pytest.mark.timeout(30)
async def test_proxy_refusal_is_reported(make_tunnel, echo_backend):
    proxy = ConnectProxy(allow=False)
    port = await proxy.start()
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        client_kw={"proxy": f"http://{LOCAL}:{port}"},
        wait=False,
    )
    await wait_for_count(tunnel.client.stats.connect_failures, "connect", 1)
    assert "refused CONNECT" in tunnel.client.last_error
    assert "403 Forbidden" in tunnel.client.last_error
