"""Early data over real sockets (protocol.md, Early data): what an application writes the
moment it connects reaches the target intact, after a PROXY protocol header, in both modes;
a refused target still resets the application's socket; peers say what they take."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

import aiowstunnel
from aiowstunnel.wire import EARLY_DATA

from .conftest import start_backend
from .test_faults import free_port, wait_until

MODES = [aiowstunnel.CONNECT, aiowstunnel.LISTEN]


async def _record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads everything to EOF, then answers with its digest."""
    body = await reader.read()
    writer.write(hashlib.sha256(body).hexdigest().encode())
    await writer.drain()
    writer.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("size", [100, EARLY_DATA, EARLY_DATA + 1, 1 << 20], ids=str)
async def test_bytes_written_at_connect_arrive_intact(make_tunnel, mode, size):
    backend = await start_backend(_record)
    tunnel = await make_tunnel(mode, backend.port)
    # both sides announced what they take, so the first bytes go with the OPEN
    session = tunnel.client.session
    assert session is not None and session.mux.early_send == session.mux.early_receive > 0
    request = os.urandom(size)
    reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    writer.write(request)  # at once: before the stream's OPEN_OK can have come back
    writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 20)
    assert reply == hashlib.sha256(request).hexdigest().encode()
    writer.close()
    backend.server.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_early_data_follows_the_proxy_protocol_header(make_tunnel, version):
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(await reader.read())
        writer.close()

    backend = await start_backend(keep)
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT, backend.port, client_kw={"proxy_protocol": version}
    )
    request = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
    _, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    writer.write(request)
    writer.write_eof()
    received = await asyncio.wait_for(got, 10)
    header = b"PROXY TCP4 127.0.0.1 " if version == "v1" else b"\r\n\r\n\x00\r\nQUIT\n"
    assert received.startswith(header)  # the header first, then the early bytes
    assert received.endswith(request) and received.count(request) == 1
    writer.close()
    backend.server.close()


@pytest.mark.timeout(30)
async def test_early_data_to_a_refused_target_is_dropped_and_the_socket_reset(make_tunnel):
    tunnel = await make_tunnel(aiowstunnel.CONNECT, free_port())  # nothing listens there
    reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    writer.write(b"hello?")
    with pytest.raises(ConnectionResetError):  # sent early, then refused: a reset, not EOF
        await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await wait_until(lambda: tunnel.client.stats.stream_resets["open_failed"] == 1, 5)
    name = tunnel.client.name
    assert tunnel.server.client_stats["anonymous", name].stream_open_failures["refused"] == 1
    # the session goes on: the next stream is opened (and refused) the same way
    reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 10)
    writer.close()
