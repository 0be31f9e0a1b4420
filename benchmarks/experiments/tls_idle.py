# Experiment script: benchmarks/README.md, docs/performance.md
"""The floor of a wss:// session's memory: RSS per idle TLS connection on a bare uvloop
server (no tunnel code), N clients in a child process opening at most 512 at once, as a
client daemon with N tunnels does after a restart.
usage: tls_idle.py [N] [tls|plain]
"""

import asyncio
import gc
import os
import ssl
import sys
import tempfile
from pathlib import Path

import uvloop

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run as R

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
MODE = sys.argv[2] if len(sys.argv) > 2 else "tls"

CLIENT = """
import asyncio, ssl, uvloop
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
async def main():
    sem = asyncio.Semaphore(512); keep = []
    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", {port}, ssl=ctx if {tls} else None)
            w.write(b"x" * 300); await w.drain(); keep.append(w)
    await asyncio.gather(*[one() for _ in range({n})])
    print("up", flush=True); await asyncio.sleep(3600)
uvloop.run(main())
"""


def rss_kib() -> int:
    return R.mem_kb(os.getpid())["VmRSS"]


class Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def main(workdir: Path) -> None:
    ctx = None
    if MODE == "tls":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*R.self_signed(workdir))
    srv = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0, ssl=ctx)
    port = srv.sockets[0].getsockname()[1]
    gc.collect()
    before = rss_kib()
    code = CLIENT.format(port=port, tls=MODE == "tls", n=N)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    await child.stdout.readline()
    await asyncio.sleep(1)
    gc.collect()
    print(f"{MODE}: {N} idle connections, {(rss_kib() - before) / N:.1f} KiB each")
    child.kill()
    await child.wait()


with tempfile.TemporaryDirectory() as tmp:
    uvloop.run(main(Path(tmp)))
