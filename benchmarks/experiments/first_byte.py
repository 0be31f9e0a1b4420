# An experiment script (benchmarks/README.md, docs/performance.md).
"""Early data over a long path: a library Server and Client in one process, the client
reaching the server through tests/helpers.py's FaultProxy with a delay (DELAY seconds each
way), COUNT connections one after the other, each sending a 100-byte request at once and
timing the echo's first byte (what an HTTP or TLS client waits for). --no-early sends no
early data (the opener's cap set to 0: the first bytes wait for OPEN_OK, as before early data).
usage: first_byte.py [--no-early] [--delay S] [--count N]
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
from aiowstunnel import mux
from aiowstunnel.client import Client
from aiowstunnel.server import Server
from tests.helpers import FAST_BACKOFF, LOCAL, FaultProxy

ap = argparse.ArgumentParser()
ap.add_argument("--no-early", action="store_true")
ap.add_argument("--delay", type=float, default=0.025, help="one way, seconds")
ap.add_argument("--count", type=int, default=20)
a = ap.parse_args()
if a.no_early:
    mux.EARLY_DATA = 0


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main() -> None:
    backend = await asyncio.start_server(echo, LOCAL, 0)
    server = Server(LOCAL, 0)
    await server.listen()
    proxy = await FaultProxy(server.port, delay=a.delay).start()
    client = Client(aiowstunnel.CONNECT, LOCAL, proxy.port, LOCAL, 0, LOCAL,
                    backend.sockets[0].getsockname()[1], backoff=FAST_BACKOFF)  # fmt: skip
    client.start()
    await client.wait_up(10)
    entry = client.listen_address
    request = os.urandom(100)
    times = []
    for _ in range(a.count):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(entry.host, entry.port)
        writer.write(request)
        got = await asyncio.wait_for(reader.readexactly(len(request)), 10)
        times.append(time.monotonic() - started)
        assert got == request
        writer.close()
    print(
        f"early data {'off' if a.no_early else 'on'}: {a.delay * 2e3:.0f} ms round trip, "
        f"{a.count} connections: first byte p50 {statistics.median(times) * 1e3:.1f} ms, "
        f"min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}"
    )
    await client.close(1)
    await server.close(1)
    proxy.close()
    backend.close()


logging.getLogger("aiowstunnel").setLevel(logging.ERROR)  # the open-relay warning
uvloop.run(main())
