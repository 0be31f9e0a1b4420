# ruff: noqa: E501, RUF006  (experiment script: benchmarks/README.md, docs/performance.md)
"""Minimal asyncio TCP relay (the floor for a 2-process Python tunnel): relay.py LISTEN_PORT TARGET_PORT [uv]"""

import asyncio
import sys


class Half(asyncio.Protocol):
    def __init__(self, peer=None):
        self.peer = peer
        self.tr = None
        self.pending = []

    def connection_made(self, tr):
        self.tr = tr
        tr.set_write_buffer_limits(high=256 * 1024)
        if self.peer is not None and self.peer.pending:  # the back half: flush early data first
            for d in self.peer.pending:
                tr.write(d)
            self.peer.pending = []

    def data_received(self, d):
        if self.peer.tr is None:
            self.peer.pending.append(d)
            return
        self.peer.tr.write(d)

    def eof_received(self):
        if self.peer.tr:
            self.peer.tr.write_eof()
        return True

    def connection_lost(self, exc):
        if self.peer and self.peer.tr:
            self.peer.tr.close()

    def pause_writing(self):
        self.peer.tr.pause_reading()

    def resume_writing(self):
        self.peer.tr.resume_reading()


class Front(Half):
    def connection_made(self, tr):
        super().connection_made(tr)
        back = Half(self)
        self.peer = back
        tr.pause_reading()

        async def dial():
            await asyncio.get_running_loop().create_connection(
                lambda: back, "127.0.0.1", int(sys.argv[2])
            )
            tr.resume_reading()

        asyncio.ensure_future(dial())

    def data_received(self, d):
        if self.peer.tr is None:
            self.pending.append(d)
            return
        self.peer.tr.write(d)


async def main():
    await asyncio.get_running_loop().create_server(
        Front, "127.0.0.1", int(sys.argv[1]), backlog=1024
    )
    await asyncio.Event().wait()


if sys.argv[3:] == ["uv"]:
    import uvloop

    uvloop.install()
asyncio.run(main())
