# An experiment script (benchmarks/README.md, docs/performance.md).
"""Both tunnel ends in one process: a library Server and a CONNECT Client on uvloop, with
run.py's echo backend and its driver (connect or rtt) as subprocesses, so that a profiler or
callgrind sees both daemons' work and nothing else. Prints the driver's result and the CPU
time of this process per operation; --profile adds cProfile's table and Python calls per op.
--relays puts two chained minimal relays (relay.py's, no WebSocket) in their place, for rtt:
the floor.
usage: inproc.py [--scen connect|rtt] [--count N] [--relays] [--profile] [--sort KEY] [--top N]
Run with the venv's python from outside the checkout (or with the package to measure first on
PYTHONPATH): the copy it imports is printed first.
"""

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import subprocess
import sys
import time

import uvloop

import aiowstunnel
from aiowstunnel.client import Client
from aiowstunnel.server import Server

RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "run.py")
ap = argparse.ArgumentParser()
ap.add_argument("--scen", choices=["connect", "rtt"], default="connect")
ap.add_argument("--count", type=int, default=1000)
ap.add_argument("--relays", action="store_true")
ap.add_argument("--profile", action="store_true")
ap.add_argument("--sort", default="tottime")
ap.add_argument("--top", type=int, default=40)
a = ap.parse_args()
if a.relays and a.scen != "rtt":
    ap.error("--relays measures rtt only (a connect loop through these relays crashed uvloop)")


class Half(asyncio.Protocol):
    """One side of a minimal relay: what it reads, its peer writes (relay.py's, in brief)."""

    def __init__(self, peer: "Half | None" = None, target: int = 0) -> None:
        self.peer, self.target, self.tr, self.pending = peer, target, None, []

    def connection_made(self, tr):
        self.tr = tr
        if self.peer is None:  # the front: dial the target, hold what comes meanwhile
            self.peer = Half(self)
            tr.pause_reading()
            loop = asyncio.get_running_loop()
            dial = loop.create_connection(lambda: self.peer, "127.0.0.1", self.target)
            loop.create_task(dial).add_done_callback(
                lambda task: tr.abort() if task.exception() else tr.resume_reading()
            )
        else:
            for data in self.peer.pending:
                tr.write(data)

    def data_received(self, data):
        if self.peer.tr is None:
            self.pending.append(data)
        else:
            self.peer.tr.write(data)

    def eof_received(self):
        if self.peer.tr is not None:
            self.peer.tr.write_eof()
        return True

    def connection_lost(self, exc):
        if self.peer is not None and self.peer.tr is not None:
            self.peer.tr.close()


def port() -> int:
    return random.randint(20000, 29999)  # run.py's range; a clash fails loudly


async def main() -> None:
    print(aiowstunnel.__file__, flush=True)
    bport, tport, lport = port(), port(), port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    backend = subprocess.Popen([sys.executable, RUN, "backend", "--port", str(bport)], **quiet)
    loop = asyncio.get_running_loop()
    for _ in range(100):  # until the backend listens
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", bport)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    if a.relays:
        relays = [
            await loop.create_server(lambda: Half(target=bport), "127.0.0.1", tport),
            await loop.create_server(lambda: Half(target=tport), "127.0.0.1", lport),
        ]
    else:
        server = Server("127.0.0.1", tport)
        server.start()
        client = Client(
            aiowstunnel.CONNECT, "127.0.0.1", tport, "127.0.0.1", lport, "127.0.0.1", bport
        )
        client.start()
    try:
        if not a.relays:
            await client.wait_up(10)
        for _ in range(100):  # until the backend answers through the tunnel
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", lport)
                writer.write(b"c")
                ok = await asyncio.wait_for(reader.read(1), 1) == b"c"
                writer.close()
                if ok:
                    break
            except (OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
        profile = cProfile.Profile() if a.profile else None
        started = time.process_time()
        if profile:
            profile.enable()
        args = [RUN, "client", a.scen, "--port", str(lport), "--count", str(a.count)]
        driver = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=subprocess.PIPE)
        out, _ = await driver.communicate()
        if profile:
            profile.disable()
        cpu = time.process_time() - started
        result = json.loads(out.decode().split("RESULT ", 1)[1])
        shown = {k: result[k] for k in ("per_s", "p50_us", "ok", "errors") if k in result}
        print(shown, f"CPU per op {cpu / a.count * 1e6:.0f} us (both ends)")
        if profile:
            stats = pstats.Stats(profile)
            stats.sort_stats(a.sort).print_stats(a.top)
            calls = sum(v[1] for v in stats.stats.values())
            print(f"Python calls per op {calls / a.count:.0f}")
    finally:
        if a.relays:
            for relay in relays:
                relay.close()
        else:
            await client.close(1)
            await server.close(1)
        backend.terminate()


uvloop.run(main())
