# ruff: noqa: E402  (experiment script: benchmarks/README.md, docs/performance.md)
"""The floor: two chained minimal asyncio relays (relay.py), same scenarios. floor.py [uv]"""

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from pathlib import Path

import run as R

uv = sys.argv[1:] == ["uv"]
ports = R.Ports(26000)
b = ports.get()
mid = ports.get()
t = ports.get()
tmp = Path(tempfile.mkdtemp())
be = R.Proc([sys.executable, R.__file__, "backend", "--port", str(b)], tmp / "be", tmp)
extra = ["uv"] if uv else []
p2 = R.Proc(
    [sys.executable, os.path.join(HERE, "relay.py"), str(mid), str(b), *extra], tmp / "p2", tmp
)
p1 = R.Proc(
    [sys.executable, os.path.join(HERE, "relay.py"), str(t), str(mid), *extra], tmp / "p1", tmp
)
try:
    while not R.echo_probe(t):
        time.sleep(0.1)
    for sc in ("up", "down"):
        res = []
        for _i in range(3):
            c0 = R.cpu_seconds([p1.pid, p2.pid])
            r = R.run_client(sc, t, ["--bytes", R.GiB, "--limit", 60], 120)
            r["cpu"] = R.cpu_seconds([p1.pid, p2.pid]) - c0
            res.append(r)
        print(
            sc,
            "MB/s",
            [round(r.get("MBps", 0)) for r in res],
            res[0].get("error"),
            "CPU s/GiB",
            statistics.median(r["cpu"] for r in res if "MBps" in r)
            if any("MBps" in r for r in res)
            else None,
        )
    rs, cpu = [], []
    for _i in range(3):
        c0 = R.cpu_seconds([p1.pid, p2.pid])
        rs.append(R.run_client("rtt", t, ["--count", 5000, "--limit", 60], 90))
        cpu.append(round(R.cpu_seconds([p1.pid, p2.pid]) - c0, 2))
    print(
        "rtt p50",
        [round(r["p50_us"]) for r in rs],
        "p99",
        [round(r["p99_us"]) for r in rs],
        "CPU s of both relays",
        cpu,
    )
    r = R.run_client("concurrent", t, ["--count", 200, "--bytes", R.MiB, "--limit", 60], 90)
    print("conc", round(r["seconds"], 2), r["errors"])
    r = R.run_client("connect", t, ["--count", 2000, "--limit", 60], 90)
    print("connect", round(r["per_s"]), r["errors"])
finally:
    R.stop_all([p1, p2, be])
