# ruff: noqa: B007, E501, SIM115  (experiment script: benchmarks/README.md, docs/performance.md)
"""A/B helper: start a backend and a daemon pair from one copy of the package (VARIANT_PATH first on PYTHONPATH, - for the checkout), run scenarios, print MB/s, CPU/GiB, rtt. Run from the checkout root with the venv's python.
usage: pair.py VARIANT_PATH|- [--uvloop] [--mode connect|listen] [--runs N] [--mib M] [--strace] [--perf DIR] [--scen up,down,rtt,conc,connect] [--resume-timeout S]
The last line is the peak RSS (VmHWM) of each daemon over all scenarios.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pathlib import Path

import run as R


def minflt(pid: int) -> int:
    """Minor page faults of a process so far (/proc/PID/stat field 10)."""
    fields = R._stat_fields(pid)
    return int(fields[7]) if fields else 0


def user_sys(pid: int) -> tuple[float, float]:
    """utime and stime of a process so far, in seconds."""
    fields = R._stat_fields(pid)
    return (int(fields[11]) / R.CLK_TCK, int(fields[12]) / R.CLK_TCK) if fields else (0.0, 0.0)


ap = argparse.ArgumentParser()
ap.add_argument("variant")
ap.add_argument("--uvloop", action="store_true")
ap.add_argument("--mode", default="connect")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--mib", type=int, default=1024)
ap.add_argument("--scen", default="up,down")
ap.add_argument("--strace", action="store_true")
ap.add_argument("--perf")
ap.add_argument("--window", type=int, default=0)
ap.add_argument("--port-base", type=int, default=25000)
ap.add_argument("--resume-timeout", type=float, help="resume_timeout of both daemons (0: off)")
a = ap.parse_args()
env = dict(os.environ)
if a.variant != "-":
    env["PYTHONPATH"] = a.variant
R.raise_nofile()
ports = R.Ports(a.port_base)
bport = ports.get()
out = {}
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    be = R.Proc([sys.executable, R.__file__, "backend", "--port", str(bport)], tmp / "be.log", tmp)
    procs = []
    try:
        while not R.echo_probe(bport):
            time.sleep(0.05)
        target = ports.get()
        cmds = R.aiowstunnel_setup(a.mode, a.uvloop)(tmp, ports, bport, target)
        if os.environ.get("DAEMON_PY"):
            cmds = [([os.environ["DAEMON_PY"], *argv[1:]], wp) for argv, wp in cmds]
        if a.window:
            for f in ("server.toml", "client.toml"):
                t = (tmp / f).read_text()
                if f == "server.toml":
                    t = (
                        t.replace(
                            'listen = "127.0.0.1:', f'window = {a.window}\nlisten = "127.0.0.1:', 1
                        )
                        if False
                        else t.replace(
                            "[[server.client]]", f"window = {a.window}\n\n[[server.client]]"
                        )
                    )
                else:
                    t = t + f"window = {a.window}\n"
                (tmp / f).write_text(t)
        if a.resume_timeout is not None:  # both daemons: [server] and the [[tunnel]]
            line = f"resume_timeout = {a.resume_timeout:g}\n"
            t = (tmp / "server.toml").read_text()
            (tmp / "server.toml").write_text(
                t.replace("[[server.client]]", line + "\n[[server.client]]")
            )
            (tmp / "client.toml").write_text((tmp / "client.toml").read_text() + line)
        for i, (argv, wp) in enumerate(cmds):
            p = subprocess.Popen(
                argv,
                stdout=open(tmp / f"p{i}.log", "wb"),
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp,
                start_new_session=True,
                preexec_fn=R.raise_nofile,
            )
            procs.append(p)
            if wp:
                while not R.port_open(wp):
                    time.sleep(0.05)
        t_end = time.monotonic() + 20
        while not R.echo_probe(target):
            assert time.monotonic() < t_end, (tmp / "p0.log").read_text() + (
                tmp / "p1.log"
            ).read_text()
            time.sleep(0.1)
        pids = [p.pid for p in procs]
        for sc in a.scen.split(","):
            res = []
            for i in range(a.runs):
                tracers = []
                if a.strace:
                    for role, pid in zip(("server", "client"), pids, strict=False):
                        tracers.append(
                            subprocess.Popen(
                                [
                                    "strace",
                                    "-c",
                                    "-f",
                                    "-p",
                                    str(pid),
                                    "-o",
                                    os.environ.get("AB_DIR", "/tmp") + f"/strace.{sc}.{role}.txt",
                                ],
                                stderr=subprocess.DEVNULL,
                            )
                        )
                    time.sleep(0.5)
                if a.perf:
                    os.makedirs(a.perf, exist_ok=True)
                    for role, pid in zip(("server", "client"), pids, strict=False):
                        tracers.append(
                            subprocess.Popen(
                                [
                                    "perf",
                                    "record",
                                    "-F",
                                    os.environ.get("PERF_FREQ", "499"),
                                    "-g",
                                    "-p",
                                    str(pid),
                                    "-o",
                                    f"{a.perf}/perf.{sc}.{role}.data",
                                ],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                            )
                        )
                    time.sleep(0.5)
                c0 = [R.cpu_seconds([p]) for p in pids]
                us0 = [user_sys(p) for p in pids]
                f0 = [minflt(p) for p in pids]
                if sc in ("up", "down"):
                    r = R.run_client(sc, target, ["--bytes", a.mib * R.MiB, "--limit", 60], 120)
                elif sc == "rtt":
                    r = R.run_client("rtt", target, ["--count", 5000, "--limit", 60], 90)
                elif sc == "conc":
                    r = R.run_client(
                        "concurrent",
                        target,
                        ["--count", 200, "--bytes", R.MiB, "--limit", 120],
                        180,
                    )
                elif sc == "connect":
                    r = R.run_client("connect", target, ["--count", 2000, "--limit", 60], 90)
                c1 = [R.cpu_seconds([p]) for p in pids]
                us1 = [user_sys(p) for p in pids]
                f1 = [minflt(p) for p in pids]
                for t in tracers:
                    t.send_signal(signal.SIGINT)
                for t in tracers:
                    t.wait(30)
                r["cpu"] = [round(y - x, 3) for x, y in zip(c0, c1, strict=False)]
                r["user_sys"] = [
                    (round(b[0] - a[0], 2), round(b[1] - a[1], 2))
                    for a, b in zip(us0, us1, strict=False)
                ]
                r["faults"] = [y - x for x, y in zip(f0, f1, strict=False)]
                res.append(r)
            if sc in ("up", "down"):
                mbps = [r.get("MBps", 0) for r in res]
                cpg = [sum(r["cpu"]) * R.GiB / r["bytes"] for r in res if "bytes" in r]
                srv = [r["cpu"][0] * R.GiB / r["bytes"] for r in res if "bytes" in r]
                cli = [r["cpu"][1] * R.GiB / r["bytes"] for r in res if "bytes" in r]
                flt = [[f * R.GiB // r["bytes"] for f in r["faults"]] for r in res if "bytes" in r]
                print(
                    f"{sc}: MB/s {[round(x) for x in mbps]} med {statistics.median(mbps):.0f} | CPU s/GiB med {statistics.median(cpg):.3f} (server {statistics.median(srv):.3f} client {statistics.median(cli):.3f}) | page faults/GiB {flt} {res[0].get('error', '')}",
                    flush=True,
                )
            elif sc == "rtt":
                print(
                    f"rtt: p50 {[round(r.get('p50_us', 0)) for r in res]} p99 {[round(r.get('p99_us', 0)) for r in res]} cpu {[r['cpu'] for r in res]} (user, sys) {[r['user_sys'] for r in res]}",
                    flush=True,
                )
            elif sc == "conc":
                print(
                    f"conc: s {[round(r.get('seconds', 0), 2) for r in res]} err {[r.get('errors') for r in res]} cpu {[sum(r['cpu']) for r in res]} {res[0].get('first_error') or ''}",
                    flush=True,
                )
            elif sc == "connect":
                print(
                    f"connect: /s {[round(r.get('per_s', 0)) for r in res]} err {[r.get('errors') for r in res]} CPU µs/conn (server, client) {[tuple(round(c * 1e6 / max(r.get('ok', 0), 1)) for c in r['cpu']) for r in res]}",
                    flush=True,
                )
        hwm = [R.mem_kb(pid).get("VmHWM", 0) / 1024 for pid in pids]  # as run.py
        print(
            f"rss: peak MB server {hwm[0]:.1f} client {hwm[1]:.1f} sum {sum(hwm):.1f}", flush=True
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        R.stop_all([be])
        for i in range(len(procs)):
            txt = (tmp / f"p{i}.log").read_text(errors="replace")
            if os.environ.get("AB_KEEP_LOGS"):
                open(f"/tmp/p{i}.log", "w").write(txt)
            n = txt.count("Traceback") + txt.count(" ERROR ")
            if n:
                print(f"  proc{i}: {n} error lines; first: {txt.strip().splitlines()[0][:200]}")
                open(os.environ.get("AB_DIR", "/tmp") + f"/last-proc{i}.log", "w").write(txt)
