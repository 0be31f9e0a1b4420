# ruff: noqa: E501  (experiment script: benchmarks/README.md, docs/performance.md)
# python pausetest.py [uv]: does pause_reading() in connection_made() hold, and does the transport keep reading after?
import asyncio
import contextlib
import socket
import sys


class P(asyncio.Protocol):
    n = 0

    def connection_made(self, t):
        self.t = t
        t.pause_reading()

    def data_received(self, d):
        P.n += len(d)


async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(P, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    sent = 0
    for _ in range(200):
        with contextlib.suppress(BlockingIOError):
            sent += s.send(b"x" * 65536)
        await asyncio.sleep(0.005)
    print(
        sys.version.split()[0],
        "uvloop" if "uvloop" in type(loop).__module__ else "asyncio",
        f"sent {sent} bytes, delivered while paused: {P.n}",
    )


if sys.argv[1:] == ["uv"]:
    import uvloop

    uvloop.install()
asyncio.run(main())
