"""A tunnel endpoint in its own process, for tests that measure it from outside.

    python tests/tunnel_process.py both CONNECT|LISTEN TARGET_PORT   # server + client
    python tests/tunnel_process.py client CONNECT|LISTEN SERVER_PORT TARGET_PORT [LISTEN_PORT]

It prints ``READY <entry port>`` once the tunnel is up (for ``client``, once it is started:
the server may not exist yet), then answers each line on stdin: ``stats`` prints one JSON
line with its RSS, open fds, asyncio tasks and the client's counters; ``quit`` exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from helpers import proc_memory  # this script's folder (tests/) is first on sys.path

import aiowstunnel
from aiowstunnel.backoff import BackoffPolicy
from aiowstunnel.client import Client
from aiowstunnel.server import Server

FAST = BackoffPolicy(initial=0.02, max=0.1, factor=2.0)


def own_stats(client: Client) -> dict:
    return {
        "rss": proc_memory(os.getpid()),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "up": client.up,
        "detached": client.detached,
        "connects": client.stats.connects,
        "streams_active": client.stats.streams_active,
        "streams_opened": client.stats.streams_opened,
    }


async def main(argv: list[str]) -> None:
    role, mode = argv[0], aiowstunnel.Mode(argv[1].lower())
    server = None
    if role == "both":
        server = Server("127.0.0.1", 0, ping_interval=1.0, ping_timeout=1.0)
        await server.listen()
        server_port, target, listen_port = server.port, int(argv[2]), 0
    else:
        server_port, target = int(argv[2]), int(argv[3])
        listen_port = int(argv[4]) if len(argv) > 4 else 0
    client = Client(
        mode,
        "127.0.0.1",
        server_port,
        "127.0.0.1",
        listen_port,
        "127.0.0.1",
        target,
        backoff=FAST,
        ping_interval=1.0,
        ping_timeout=1.0,
    )
    client.start()
    if role == "both":
        await client.wait_up(10)
        print("READY", client.listen_address.port, flush=True)
    else:
        await client.first_bind.wait()
        port = client.listen_address.port if client.listen_address else listen_port
        print("READY", port, flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).strip():
        if line == b"stats":
            print(json.dumps(own_stats(client)), flush=True)
        elif line == b"quit":
            break
    await client.close(1)
    if server is not None:
        await server.close(1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
