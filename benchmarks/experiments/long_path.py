# ruff: noqa: E501  (experiment script: benchmarks/README.md, docs/performance.md)
"""The replay log's limit over a long path: a library Server and Client in one process, the
client reaching the server through tests/helpers.py's FaultProxy with a delay (each chunk
forwarded DELAY seconds late, each way), STREAMS streams pushing MIB MiB each to a sink.
Prints MB/s and the largest limit the client's log had, for the log as shipped (paced) or
with its limit held at 8 MiB or 2 MiB (fixed sizes for comparison; the 3/4 at which a full
log reads again is today's, so they are not exactly the code before the pacing).
--first-byte N: early data instead, over the same path: N connections one after the other to
an echo backend, each sending a 100-byte request at once and timing the echo's first byte;
--no-early sends no early data (the opener's cap at 0: the bytes wait for OPEN_OK).
usage: long_path.py [--log paced|fixed8|fixed2] [--delay S] [--streams N] [--mib M]
       long_path.py --first-byte N [--no-early] [--delay S]
Run from the checkout root with the venv's python.
"""

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())
import uvloop

import aiowstunnel
from aiowstunnel import mux, resume
from aiowstunnel.client import Client
from aiowstunnel.server import Server
from tests.helpers import FAST_BACKOFF, LOCAL, FaultProxy

MiB = 1 << 20
ap = argparse.ArgumentParser()
ap.add_argument("--log", choices=["paced", "fixed8", "fixed2"], default="paced")
ap.add_argument("--delay", type=float, default=0.05, help="one way, seconds")
ap.add_argument("--streams", type=int, default=8)
ap.add_argument("--mib", type=int, default=32)
ap.add_argument("--first-byte", type=int, default=0, metavar="N")
ap.add_argument("--no-early", action="store_true")
a = ap.parse_args()
if a.no_early:
    mux.EARLY_DATA = 0

if a.log != "paced":
    size = (8 if a.log == "fixed8" else 2) * MiB
    _init = resume.ReplayLog.__init__

    def fixed(self, *args, **kw):
        _init(self, max_bytes=size, min_bytes=size)

    resume.ReplayLog.__init__ = fixed


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    n = 0
    while data := await reader.read(1 << 18):
        n += len(data)
    writer.write(str(n).encode())
    await writer.drain()
    writer.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def first_byte(entry) -> None:
    request = os.urandom(100)
    times = []
    for _ in range(a.first_byte):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(entry.host, entry.port)
        writer.write(request)
        got = await asyncio.wait_for(reader.readexactly(len(request)), 10)
        times.append(time.monotonic() - started)
        assert got == request
        writer.close()
    print(
        f"early data {'off' if a.no_early else 'on'}: {a.delay * 2e3:.0f} ms round trip, "
        f"{a.first_byte} connections: first byte p50 {statistics.median(times) * 1e3:.1f} ms, "
        f"min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}"
    )


async def main() -> None:
    backend = await asyncio.start_server(echo if a.first_byte else sink, LOCAL, 0)
    server = Server(LOCAL, 0)
    await server.listen()
    proxy = await FaultProxy(server.port, delay=a.delay).start()
    client = Client(aiowstunnel.CONNECT, LOCAL, proxy.port, LOCAL, 0, LOCAL,
                    backend.sockets[0].getsockname()[1], backoff=FAST_BACKOFF)  # fmt: skip
    client.start()
    await client.wait_up(10)
    entry = client.listen_address
    if a.first_byte:
        await first_byte(entry)
        await client.close(1)
        await server.close(1)
        proxy.close()
        backend.close()
        return
    log = client.session.resumption.log
    largest = log.limit
    block = os.urandom(1 << 18)

    async def push() -> None:
        reader, writer = await asyncio.open_connection(entry.host, entry.port)
        for _ in range(a.mib * 4):
            writer.write(block)
            await writer.drain()
        writer.write_eof()
        assert int(await reader.read()) == a.mib * MiB
        writer.close()

    started = time.monotonic()
    work = asyncio.gather(*(push() for _ in range(a.streams)))
    while not work.done():
        largest = max(largest, log.limit)
        await asyncio.wait([work], timeout=0.01)
    await work
    took = time.monotonic() - started
    print(
        f"log {a.log}: {a.delay * 2e3:.0f} ms round trip (pong {client.session.link.round_trip * 1e3:.1f} ms), "
        f"{a.streams} x {a.mib} MiB: {a.streams * a.mib * MiB / took / 1e6:.1f} MB/s in {took:.1f} s; "
        f"largest limit {largest // 1024} KiB"
    )
    await client.close(1)
    await server.close(1)
    proxy.close()
    backend.close()


logging.getLogger("aiowstunnel").setLevel(logging.ERROR)  # the open-relay warning
uvloop.run(main())
