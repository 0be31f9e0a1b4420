"""The reset helper and the error wording, on real loopback sockets, on both event loops."""

from __future__ import annotations

import asyncio
import socket

import pytest

from aiowstunnel.errors import describe
from aiowstunnel.resets import reset

from .helpers import loop_factory

pytestmark = pytest.mark.timeout(20)
LOCAL = "127.0.0.1"
Runner = getattr(asyncio, "Runner", None)  # Python 3.11+


def run(loop: str, coro):
    if Runner is None:
        pytest.skip("asyncio.Runner needs Python 3.11")
    with Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro)


async def peer_sees(end) -> str:
    """Connect a plain socket to a server whose transport ``end`` closes; what recv says."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Side(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.set_result(transport)

    server = await loop.create_server(Side, LOCAL, 0)
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, server.sockets[0].getsockname())
        end(await asyncio.wait_for(accepted, 5))
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
        except ConnectionResetError:
            return "reset"
        return "eof" if data == b"" else "data"
    finally:
        sock.close()
        server.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_abort_alone_is_an_eof_reset_is_a_reset(loop: str) -> None:
    # Why resets.reset exists: with nothing unread, abort() sends a FIN on both loops.
    assert run(loop, peer_sees(lambda t: t.abort())) == "eof"
    assert run(loop, peer_sees(reset)) == "reset"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_refused_connect_reads_the_same_on_both_loops(loop: str) -> None:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port = s.getsockname()[1]  # nothing listens there

    async def attempt() -> str:
        try:
            await asyncio.get_running_loop().create_connection(asyncio.Protocol, LOCAL, port)
        except OSError as exc:
            return describe(exc)
        return "connected?"

    assert run(loop, attempt()) == "Connection refused"
