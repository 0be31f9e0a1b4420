"""Every TCP socket of a tunnel has TCP_NODELAY: a small message (a keystroke, a 9-byte
WINDOW grant) leaves at once, not after the peer's delayed ACK (Nagle would hold it ~40 ms
and starve a sender waiting for credit). The event loops set it on their TCP transports, on
asyncio and on uvloop; this holds them to it, over ws:// and wss://, in both modes."""

from __future__ import annotations

import asyncio
import socket

import pytest
import trustme

import aiowstunnel
from aiowstunnel.client import Client
from aiowstunnel.server import Server

from ..helpers import loop_factory
from .conftest import FAST_BACKOFF, LOCAL, start_backend
from .test_tls import client_context, server_context


def nodelay(transport: asyncio.BaseTransport | None) -> int:
    assert transport is not None
    sock = transport.get_extra_info("socket")
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def sockets_of_a_tunnel(mode: aiowstunnel.Mode, tls: bool) -> dict[str, int]:
    """TCP_NODELAY of each socket while one stream is open: the WebSocket at both ends and
    the stream's two TCP connections (the application's and the target's)."""
    ca = trustme.CA()
    backend = await start_backend()
    server = Server(LOCAL, 0, ssl=server_context(ca, False) if tls else None)
    await server.listen()
    client = Client(
        mode, LOCAL, server.port, LOCAL, 0, LOCAL, backend.port,
        backoff=FAST_BACKOFF, ssl=client_context(ca, False) if tls else None,
    )  # fmt: skip
    client.start()
    try:
        await client.wait_up(10)
        entry = client.listen_address
        assert entry is not None
        reader, writer = await asyncio.open_connection(entry.host, entry.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        [server_session] = server.sessions
        found = {"client link": nodelay(client.session.link.transport)}
        found["server link"] = nodelay(server_session.link.transport)
        for side, session in (("client", client.session), ("server", server_session)):
            [stream] = session.streams
            found[f"{side} stream"] = nodelay(stream.transport)
        writer.close()
        return found
    finally:
        await client.close(timeout=1)
        await server.close(timeout=1)
        backend.server.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_tcp_socket_of_a_tunnel_sends_small_messages_at_once(loop, mode, tls):
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        found = runner.run(sockets_of_a_tunnel(mode, tls))
    assert len(found) == 4 and all(found.values()), found
