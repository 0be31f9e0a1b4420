"""Time from a cut to data flowing again, over resumption (docs/reliability.md).

    .venv/bin/python benchmarks/resume_cut.py [--cuts 50]

A server and a client in one process, on 127.0.0.1, the client reaching the server through
a relay that cuts both sides of the connection with an RST on command; one stream echoes
a byte at a time. For each cut, the time from the RST to the next echoed byte: the client
notices the reset, reconnects, proves the resume, both sides replay, the byte comes back.
Prints p50 / p99 / max, and checks that every byte came back, in order. Bounded: --cuts
cuts, each waiting at most 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiowstunnel
from aiowstunnel.backoff import BackoffPolicy
from aiowstunnel.client import Client
from aiowstunnel.server import Server
from tests.helpers import FaultProxy, start_backend

FAST = BackoffPolicy(initial=0.02, max=0.1)


async def measure(cuts: int) -> list[float]:
    backend = await start_backend()
    server = Server("127.0.0.1", 0)
    await server.listen()
    proxy = await FaultProxy(server.port).start()
    client = Client(
        aiowstunnel.CONNECT,
        "127.0.0.1",
        proxy.port,
        "127.0.0.1",
        0,
        "127.0.0.1",
        backend.port,
        backoff=FAST,
    )
    client.start()
    await client.wait_up(10)
    entry = client.listen_address
    assert entry is not None
    reader, writer = await asyncio.open_connection(entry.host, entry.port)
    took = []
    counter = 0

    async def echo_one() -> None:
        nonlocal counter
        byte = bytes([counter % 256])
        counter += 1
        writer.write(byte)
        assert await asyncio.wait_for(reader.readexactly(1), 10) == byte

    for _ in range(20):
        await echo_one()  # warm
    for _ in range(cuts):
        await asyncio.sleep(0.05)
        start = time.monotonic()
        proxy.cut()
        await echo_one()
        took.append(time.monotonic() - start)
    writer.close()
    ok = client.stats.resumes["ok"]
    await client.close(1)
    await server.close(1)
    proxy.close()
    backend.server.close()
    assert ok == cuts, f"{ok} resumes for {cuts} cuts"
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=50)
    args = parser.parse_args()
    took = sorted(asyncio.run(measure(args.cuts)))
    p99 = took[min(len(took) - 1, round(0.99 * (len(took) - 1)))]
    print(
        f"{len(took)} cuts: p50 {statistics.median(took) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
