"""Memory of the two daemons of a tunnel under many busy streams (docs/performance.md).

The daemons run as in production (`python -m aiowstunnel run`, each its own process); the
outcome is their peak RSS (VmHWM) while 200 streams echo 1 MiB each at once, every byte
checked by digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from ..helpers import proc_memory, start_backend
from .daemon_process import LOCAL, Daemon, free_port, wait_healthy

MiB = 1024 * 1024
#: growth of both daemons together. Before reads were sized to credit, the same test grew
#: them by 34-37 MiB (one 256 KiB read held per stream, each way); round 3 by 2.4-3.1,
#: round 4 (small reads before OPEN_OK) by 1.3-1.9 (docs/performance.md).
BUSY_BOUND = 12 * MiB


class GatedEcho:
    """An echo backend that reads nothing until :attr:`gate` opens: until then every
    stream's credit runs out, which is when a tunnel's memory is at its highest."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.gate.wait()
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.close()


async def echo_many(port: int, streams: int, size: int, gate: asyncio.Event) -> None:
    """``streams`` connections at once, each echoing ``size`` bytes of its own (digest
    checked). The gate opens once every stream has stalled or sent all."""
    pushed = [0] * streams

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection(LOCAL, port)
        payload = os.urandom(size)

        async def send() -> None:
            for at in range(0, size, 64 * 1024):
                writer.write(payload[at : at + 64 * 1024])
                await writer.drain()
                pushed[i] = at + 64 * 1024
            writer.write_eof()

        sending = asyncio.create_task(send())
        got = await reader.read()  # bounded: the backend closes after the echo
        await sending
        writer.close()
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), f"stream {i}"

    echoes = asyncio.gather(*(one(i) for i in range(streams)))
    last = -1
    while sum(pushed) != last:  # bounded by the test's timeout; each round moves or ends
        last = sum(pushed)
        await asyncio.sleep(0.3)
    gate.set()
    await echoes


@pytest.mark.timeout(120)
async def test_200_busy_streams_cost_the_daemons_little_memory(tmp_path: Path):
    echo = GatedEcho()
    echo.gate.set()  # open while the tunnel comes up and warms
    backend = await start_backend(echo)
    ws_port, entry, metrics = free_port(), free_port(), free_port()
    (tmp_path / "s").mkdir()
    (tmp_path / "c").mkdir()
    for side in ("s", "c"):
        (tmp_path / side / "token").write_text("memory-test-token\n")
    server = Daemon(
        tmp_path / "s",
        '[metrics]\nenabled = false\n\n[log]\nlevel = "warning"\n\n'
        # The data path's own memory: without resumption, whose replay log holds what is
        # in flight, up to a window per stream each way (docs/performance.md, memory).
        f'[server]\nlisten = "{LOCAL}:{ws_port}"\nresume_timeout = 0\n\n[[server.client]]\n'
        f'name = "bench"\ntoken_file = "token"\nallow_connect = ["{LOCAL}:{backend.port}"]\n',
    )
    client = Daemon(
        tmp_path / "c",
        f'[metrics]\nlisten = "{LOCAL}:{metrics}"\n\n[log]\nlevel = "warning"\n\n'
        '[[tunnel]]\nname = "bench"\nmode = "connect"\n'
        f'server = "ws://{LOCAL}:{ws_port}/aiowstunnel"\ntoken_file = "token"\n'
        f'listen = "{LOCAL}:{entry}"\nconnect = "{LOCAL}:{backend.port}"\n',
    )
    try:
        await server.start()
        await client.start()
        await wait_healthy(metrics)  # 200 once the tunnel is up
        await echo_many(entry, 20, 256 * 1024, echo.gate)  # warms the allocator
        echo.gate.clear()
        pids = [server.proc.pid, client.proc.pid]
        before = [proc_memory(pid, "VmHWM") for pid in pids]
        await echo_many(entry, 200, MiB, echo.gate)
        after = [proc_memory(pid, "VmHWM") for pid in pids]
        grown = sum(after) - sum(before)
        print(
            f"\n200 x 1 MiB echoed; peak RSS server {before[0] / MiB:.1f} -> "
            f"{after[0] / MiB:.1f} MiB, client {before[1] / MiB:.1f} -> {after[1] / MiB:.1f} MiB"
        )
        assert grown < BUSY_BOUND, f"the daemons grew by {grown / MiB:.1f} MiB"
    finally:
        await client.stop()
        await server.stop()
        backend.server.close()
