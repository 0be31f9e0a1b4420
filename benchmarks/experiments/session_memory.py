# ruff: noqa: E501  (experiment script: benchmarks/README.md, docs/performance.md)
"""Where an idle ws:// session's memory goes on the server: a library Server on uvloop in
this process under tracemalloc, N library CONNECT Clients (no streams) in a child process.
Prints the RSS per session and the Python allocations per session, by the line that made
them (the top ones), once all N are up and idle.
usage: session_memory.py [N] [depth]    (depth > 1: grouped by traceback, default by line)
"""

import asyncio
import gc
import os
import sys
import tracemalloc

import uvloop

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import run as R

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
DEPTH = int(sys.argv[2]) if len(sys.argv) > 2 else 1

CLIENTS = """
import asyncio, uvloop, aiowstunnel
async def main():
    clients = []
    for _ in range({n}):
        c = aiowstunnel.Client(aiowstunnel.CONNECT, "127.0.0.1", {port}, "127.0.0.1", 0,
                               "127.0.0.1", 9, resume_timeout={resume})
        c.start(); clients.append(c)
    for c in clients:
        await c.wait_up(60)
    print("up", flush=True); await asyncio.sleep(3600)
uvloop.run(main())
"""


def place(filename: str) -> str:
    """aiowstunnel/x.py for our modules, the bare file name for the rest."""
    parent, name = os.path.split(filename)
    return f"aiowstunnel/{name}" if os.path.basename(parent) == "aiowstunnel" else name


async def main() -> None:
    import aiowstunnel

    resume = float(os.environ.get("RESUME_TIMEOUT", "60"))
    server = aiowstunnel.Server("127.0.0.1", 0, resume_timeout=resume)
    await server.listen()
    tracemalloc.start(DEPTH)
    gc.collect()
    before_rss = R.mem_kb(os.getpid())["VmRSS"]
    before = tracemalloc.take_snapshot()
    code = CLIENTS.format(n=N, port=server.port, resume=resume)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    await asyncio.wait_for(child.stdout.readline(), 120)
    await asyncio.sleep(2)  # the last handshakes' leftovers collected
    gc.collect()
    after = tracemalloc.take_snapshot()
    rss = R.mem_kb(os.getpid())["VmRSS"]
    assert len(server.sessions) == N, len(server.sessions)
    stats = after.compare_to(before, "traceback" if DEPTH > 1 else "lineno")
    total = sum(s.size_diff for s in stats)
    print(
        f"{N} sessions: RSS {(rss - before_rss) / N:.1f} KiB/session, Python {total / N / 1024:.1f} KiB/session"
    )
    for s in stats[:40]:
        if s.size_diff / N < 24:
            break
        where = " <- ".join(f"{place(f.filename)}:{f.lineno}" for f in s.traceback)
        print(f"{s.size_diff / N:8.0f} B  {s.count_diff / N:5.1f} blocks  {where}")
    child.kill()
    await child.wait()
    await server.close(1)


uvloop.run(main())
