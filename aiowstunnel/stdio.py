"""``aiowstunnel stdio URL HOST:PORT``: standard input and output joined to one stream.

For ``ssh -o ProxyCommand='aiowstunnel stdio wss://gw/aiowstunnel %h:%p --token-file F'``:
one session in CONNECT mode to HOST:PORT (the server checks it at the handshake, as any
CONNECT tunnel), one stream over it. Standard input's EOF is the stream's FIN (half-close:
the answer still flows); the process exits when the stream has ended both ways (0), or
with 1 when the server refuses, the stream is reset or the session is lost (why goes to
stderr, the only place this command ever writes to besides the stream).

The stream is a TcpStream like any other, on one end of a socketpair; two pumps copy
stdin into the other end and that end into stdout, so the session's flow control, resets
and half-close apply unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import sys
import threading
from typing import IO

from .client import Client
from .errors import HandshakeRefused, describe

log = logging.getLogger("aiowstunnel.stdio")

CHUNK = 256 * 1024


async def run_stdio(
    client: Client,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> int:
    """Join ``stdin``/``stdout`` (default: the process's) to one stream of ``client``'s
    tunnel, a CONNECT client that is never started. Returns the exit code."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    loop = asyncio.get_running_loop()
    try:
        session = await client.connect_once()
    except HandshakeRefused as exc:
        log.error("server refused the tunnel: %s", exc)
        return 1
    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
        log.error("cannot reach %s: %s", client.url, describe(exc))
        return 1
    ours, theirs = socket.socketpair()
    try:
        await loop.connect_accepted_socket(session.new_stream, theirs)
        reader, writer = await asyncio.open_connection(sock=ours, limit=CHUNK)
        up = loop.create_task(_stdin_to_stream(stdin, writer))
        down = loop.create_task(_stream_to_stdout(reader, stdout))
        lost = loop.create_task(session.wait_closed())
        await asyncio.wait({down, lost}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if not down.done():  # the session ended under the stream
            log.error("the tunnel closed before the stream ended: %s", lost.result())
            code = 1
            down.cancel()
        elif down.exception() is not None:
            log.error("the stream ended early: %s", describe(down.exception()))  # type: ignore[arg-type]
            code = 1
        up.cancel()
        lost.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await up
        writer.close()
        return code
    finally:
        ours.close()
        await session.shutdown("stdio done", 2.0)


async def _stdin_to_stream(stdin: IO[bytes], writer: asyncio.StreamWriter) -> None:
    """stdin -> the stream; EOF -> FIN (shutdown SHUT_WR on our end of the pair)."""
    loop = asyncio.get_running_loop()
    fd = stdin.fileno()
    reader = asyncio.StreamReader(limit=CHUNK)
    transport: asyncio.BaseTransport | None = None
    chunks: asyncio.Queue[bytes] | None = None
    if _pollable(fd):
        pipe = os.fdopen(os.dup(fd), "rb", 0)  # the transport closes its own copy
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    else:
        chunks = _read_in_thread(fd, loop)
    try:
        while True:
            if chunks is not None:
                data = await chunks.get()
            else:
                data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    finally:
        if transport is not None:
            transport.close()


async def _stream_to_stdout(reader: asyncio.StreamReader, stdout: IO[bytes]) -> None:
    """The stream -> stdout, until the stream's FIN (a clean end) or its reset (raises)."""
    loop = asyncio.get_running_loop()
    fd = stdout.fileno()
    if not _pollable(fd):  # plain writes, in a thread
        while data := await reader.read(CHUNK):
            await loop.run_in_executor(None, _write_all, fd, data)
        return
    pipe = os.fdopen(os.dup(fd), "wb", 0)
    transport, protocol = await loop.connect_write_pipe(_Drain, pipe)
    try:
        while data := await reader.read(CHUNK):
            if transport.is_closing():  # the reader of stdout went away (EPIPE)
                raise BrokenPipeError("standard output was closed")
            transport.write(data)
            await protocol.drain()
    finally:
        transport.close()
        await protocol.closed


def _read_in_thread(fd: int, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[bytes]:
    """Read ``fd`` in a daemon thread (a terminal's read may block for ever: such a thread
    must not hold up the exit), a few chunks ahead at most; b"" is the end."""
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def read() -> None:
        while True:
            try:
                data = os.read(fd, CHUNK)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(data), loop).result()
            except RuntimeError:  # the loop is closed: nobody reads any more
                return
            if not data:
                return

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return chunks


def _pollable(fd: int) -> bool:
    """A pipe or a socket, which the event loop can watch (ssh's ProxyCommand gives pipes).
    A file, a terminal or /dev/null is read and written in a thread instead: epoll refuses
    files and /dev/null, and uvloop aborts the process on them."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Drain(asyncio.Protocol):
    """A write pipe's protocol with flow control: ``drain`` waits while the pipe is full."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if not self.closed.done():
            self.closed.set_result(None)

    async def drain(self) -> None:
        await self._writable.wait()
