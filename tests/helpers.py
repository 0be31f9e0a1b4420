"""Test helpers shared by integration and system tests: backends, byte movers, faults.

Every listener binds port 0; readiness is awaited, never slept for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest

from aiowstunnel.addresses import Address, AddressRule
from aiowstunnel.backoff import BackoffPolicy
from aiowstunnel.policy import ClientPolicy, token_digest
from aiowstunnel.resets import reset

LOCAL = "127.0.0.1"
FAST_BACKOFF = BackoffPolicy(initial=0.05, max=0.3, factor=2.0)


@dataclass
class Backend:
    """A TCP server on loopback that records how many connections it accepted."""

    server: asyncio.Server
    accepted: int = 0
    received: list[bytes] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then half-close back (so half-close is visible end to end)."""
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def start_backend(handler=_echo) -> Backend:
    backend: Backend

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend.accepted += 1
        await handler(reader, writer)

    # backlog: asyncio's default of 100 overflows when hundreds of streams dial at once,
    # and the kernel's SYN-cookie fallback then resets a connection now and then (seen
    # as a rare ConnectionResetError in the 500-stream test; nstat ListenOverflows).
    server = await asyncio.start_server(counted, LOCAL, 0, limit=1 << 20, backlog=1024)
    backend = Backend(server)
    return backend


async def wait_for_count(counter, key: str, at_least: int, timeout: float = 10.0) -> None:
    """Wait until ``counter[key]`` (a stats Counter) reaches ``at_least``."""

    async def poll() -> None:
        while counter[key] < at_least:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def proc_memory(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc/PID/status, in bytes (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def pattern_block(index: int, size: int, seed: bytes) -> bytes:
    """A block that differs per index, so reordered or repeated blocks change the digest."""
    head = index.to_bytes(8, "big")
    return head + seed[: size - len(head)]


async def echo_roundtrip(
    address: Address, total: int, block: int = 256 * 1024, *, slow_reader: bool = False
) -> tuple[str, str]:
    """Send ``total`` bytes while reading the echo back; returns (sent, received) sha256.

    ``slow_reader``: a 16 KiB receive buffer and a 2 ms nap every 8 reads of 32 KiB, so the
    tunnel's writes to this socket are often partial (a payload its transport keeps).
    """
    if slow_reader:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address.host, address.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    else:
        reader, writer = await asyncio.open_connection(address.host, address.port, limit=1 << 20)
    seed = os.urandom(block)
    sent, received = hashlib.sha256(), hashlib.sha256()

    async def send() -> None:
        remaining, index = total, 0
        while remaining > 0:
            chunk = pattern_block(index, min(block, remaining), seed)
            sent.update(chunk)
            writer.write(chunk)
            await writer.drain()
            remaining -= len(chunk)
            index += 1
        writer.write_eof()

    sender = asyncio.create_task(send())
    count = reads = 0
    while data := await reader.read(32 * 1024 if slow_reader else 1 << 20):
        received.update(data)
        count += len(data)
        reads += 1
        if slow_reader and reads % 8 == 0:
            await asyncio.sleep(0.002)
    await sender
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    assert count == total, f"received {count} of {total} bytes"
    return sent.hexdigest(), received.hexdigest()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """New event loops of ``name``, "asyncio" or "uvloop" (the test skips without uvloop)."""
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop
    return asyncio.new_event_loop


class FaultProxy:
    """A TCP relay on loopback that can go silent (a blackholed network) on command.

    While ``blackhole`` is set it keeps every connection open but forwards nothing, in
    either direction: to each peer, the other has simply gone quiet. While ``stalled`` it
    also forwards nothing, but drops nothing either: what arrives is held (in the sockets'
    buffers and here) until the stall ends or the connection is cut, new connections too.

    With ``delay`` it is a long path: each chunk goes on ``delay`` seconds after it arrived,
    in each direction, and reading never waits for that, so what is in flight grows with
    the rate as on a real one (up to ``MAX_IN_FLIGHT`` bytes per direction held here).
    """

    MAX_IN_FLIGHT = 64 * 1024 * 1024

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.blackhole = False
        self.refuse = False  # reset each new connection at once: the path is down
        #: while set, one side closing leaves the other open (a NAT that forgot the
        #: mapping: the far end is never told)
        self.hold = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @stalled.setter
    def stalled(self, stalled: bool) -> None:
        if stalled:
            self._flowing.clear()
        else:
            self._flowing.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._relay, LOCAL, 0, backlog=1024)
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            reset(writer.transport)
            return
        up_reader, up_writer = await asyncio.open_connection(LOCAL, self.target_port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    await self._flowing.wait()  # stalled: held, not dropped
                    if not self.blackhole:
                        dst.write(data)
                        await dst.drain()
            if not self.hold:
                dst.close()

        async def late_pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            loop = asyncio.get_running_loop()
            chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            room = asyncio.Semaphore(self.MAX_IN_FLIGHT // 65536)

            async def arrive() -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        await room.acquire()
                        chunks.put_nowait((loop.time() + self.delay, data))
                chunks.put_nowait((loop.time() + self.delay, b""))

            async def leave() -> None:
                with contextlib.suppress(ConnectionError):
                    while True:
                        due, data = await chunks.get()
                        room.release()
                        await asyncio.sleep(due - loop.time())
                        if not data:
                            break
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(arrive(), leave())

        relay = late_pipe if self.delay else pipe
        await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))

    def cut(self) -> int:
        """Break every relayed connection now, both sides, with an RST (SO_LINGER 0), as
        a NAT rebinding or a crashed middlebox does. New connections are relayed again.
        Returns how many connections were cut."""
        writers, self._writers = self._writers, []
        for writer in writers:
            transport = writer.transport
            if not transport.is_closing():
                reset(transport)
        return len(writers) // 2

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self._writers:
            writer.close()


class TunnelProcess:
    """tests/tunnel_process.py as a subprocess: a tunnel measured from outside."""

    SCRIPT = str(__import__("pathlib").Path(__file__).with_name("tunnel_process.py"))

    def __init__(self, *args: object) -> None:
        self.args = [str(a) for a in args]
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> TunnelProcess:
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            self.SCRIPT,
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 15)
        assert line.startswith(b"READY"), line
        self.port = int(line.split()[1])
        return self

    async def stats(self) -> dict:
        import json

        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 10))

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.kill()
        await self.proc.wait()


def http_handler(body: bytes):
    """A handler for :func:`start_backend`: answers one HTTP/1.0-style request with ``body``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return serve


async def run_tool(*argv: str, timeout: float = 30.0, stdin: bytes | None = None):
    """Run a real client (curl, ssh, ...) to completion: (returncode, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out, err


def app_entry(connect: Iterable[str] = (), listen: Iterable[str] = ()) -> list[ClientPolicy]:
    """The one client entry "app" (token "s3cret") with these allow_connect / allow_listen
    rules, as a Server's ``clients``."""
    return [
        ClientPolicy(
            "app",
            token_digest("s3cret"),
            tuple(AddressRule.parse(r) for r in connect),
            tuple(AddressRule.parse(r) for r in listen),
        )
    ]
