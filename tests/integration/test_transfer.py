"""Bytes through both modes arrive intact, with many streams at once and with half-close."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

import aiowstunnel

from .conftest import echo_roundtrip, start_backend

MODES = [aiowstunnel.CONNECT, aiowstunnel.LISTEN]
MiB = 1024 * 1024


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_256_mib_each_way_intact(make_tunnel, echo_backend, mode):
    tunnel = await make_tunnel(mode, echo_backend.port)
    sent, received = await echo_roundtrip(tunnel.entry, 256 * MiB)
    assert sent == received
    assert tunnel.client.stats.sent_bytes >= 256 * MiB
    assert tunnel.client.stats.received_bytes >= 256 * MiB


@pytest.mark.timeout(180)
async def test_500_concurrent_streams_each_intact(make_tunnel, echo_backend):
    tunnel = await make_tunnel(aiowstunnel.CONNECT, echo_backend.port)
    results = await asyncio.gather(*(echo_roundtrip(tunnel.entry, MiB) for _ in range(500)))
    assert all(sent == received for sent, received in results)
    assert echo_backend.accepted == 500
    assert tunnel.client.stats.streams_opened == 500


async def _request_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the whole request (to EOF), then answers with its digest and size."""
    body = await reader.read()
    reply = hashlib.sha256(body).hexdigest().encode() + b" %d\n" % len(body)
    writer.write(reply * 1000)  # a reply larger than one frame
    await writer.drain()
    writer.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_half_close_request_then_reply(make_tunnel, mode):
    backend = await start_backend(_request_then_reply)
    tunnel = await make_tunnel(mode, backend.port)
    reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    request = os.urandom(3 * MiB + 17)
    writer.write(request)
    writer.write_eof()  # shutdown(SHUT_WR): "no more from me", keep reading
    reply = await asyncio.wait_for(reader.read(), 20)
    expected = hashlib.sha256(request).hexdigest().encode() + b" %d\n" % len(request)
    assert reply == expected * 1000
    writer.close()
    backend.server.close()


@pytest.mark.timeout(30)
async def test_backend_half_close_reaches_client_and_client_can_still_send(make_tunnel):
    """The reverse direction: the backend shuts down its write side first."""
    got = asyncio.get_running_loop().create_future()

    async def greet_then_listen(reader, writer):
        writer.write(b"hello")
        writer.write_eof()
        got.set_result(await reader.read())
        writer.close()

    backend = await start_backend(greet_then_listen)
    tunnel = await make_tunnel(aiowstunnel.CONNECT, backend.port)
    reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    assert await asyncio.wait_for(reader.read(), 10) == b"hello"  # EOF arrived after it
    writer.write(b"still talking")
    writer.write_eof()
    assert await asyncio.wait_for(got, 10) == b"still talking"
    writer.close()
    backend.server.close()


@pytest.mark.timeout(30)
async def test_data_and_eof_before_open_ok_wait_for_it(make_tunnel, echo_backend, monkeypatch):
    """Some asyncio versions deliver the first read even though connection_made() paused
    reading (seen with Debian 12's Python 3.11.2): bytes and EOF that arrive before OPEN_OK
    must wait for it, not break the stream."""
    from aiowstunnel.tcp import TcpStream

    real = TcpStream.set_reading

    def ignores_first_pause(self, on: bool) -> None:
        if not on and not self.table.accepted(self):
            return  # as if pause_reading() in connection_made() had no effect
        real(self, on)

    monkeypatch.setattr(TcpStream, "set_reading", ignores_first_pause)
    tunnel = await make_tunnel(aiowstunnel.CONNECT, echo_backend.port)
    results = await asyncio.gather(*(echo_roundtrip(tunnel.entry, 64 * 1024) for _ in range(20)))
    assert all(sent == received for sent, received in results)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_ipv6_loopback_everywhere(mode):
    """Server, listener and target all on [::1]: brackets survive the URL, the handshake's
    address header and the bound-address header."""
    import socket

    from aiowstunnel.client import Client
    from aiowstunnel.server import Server

    from .conftest import FAST_BACKOFF

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    backend = await asyncio.start_server(echo, "::1", 0)
    server = Server("::1", 0)
    await server.listen()
    client = Client(
        mode,
        "::1",
        server.port,
        "::1",
        0,
        "::1",
        backend.sockets[0].getsockname()[1],
        backoff=FAST_BACKOFF,
    )
    client.start()
    try:
        await client.wait_up(10)
        assert client.url.startswith("ws://[::1]:")
        assert client.listen_address.host == "::1"
        sent, received = await echo_roundtrip(client.listen_address, 1 << 20)
        assert sent == received
    finally:
        await client.close(1)
        await server.close(1)
        backend.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_without_own_framing_everything_goes_through_websockets(
    make_tunnel, echo_backend, mode, monkeypatch
):
    """Should websockets rename what the data path leans on, sessions fall back to
    websockets for every frame: still intact, both ways, many streams."""
    from aiowstunnel.link import Link

    real_init = Link.__init__
    links = []

    def init_without(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.framer.own = False
        links.append(self)

    monkeypatch.setattr(Link, "__init__", init_without)
    tunnel = await make_tunnel(mode, echo_backend.port)
    results = await asyncio.gather(*(echo_roundtrip(tunnel.entry, 2 * MiB) for _ in range(8)))
    assert all(sent == received for sent, received in results)
    assert links and all(link.framer.splitter is None for link in links)


def test_one_read_buffer_per_thread():
    """Reads are consumed in their own callback, so one loop's streams share a buffer;
    another thread (another loop) must get its own."""
    import threading

    from aiowstunnel.tcp import READ_SIZE, thread_read_buffer

    here = thread_read_buffer()
    assert thread_read_buffer() is here and len(here) == READ_SIZE
    other = []
    thread = threading.Thread(target=lambda: other.append(thread_read_buffer()))
    thread.start()
    thread.join(5)
    assert other and other[0].obj is not here.obj
