# ruff: noqa: E501, E741, SIM115  (throwaway experiment script, see docs/performance.md)
"""Interleaved A/B of the hot-path prototype switches (docs/performance.md).

    PROTO=/tmp/proto/fast .venv/bin/python benchmarks/experiments/ab.py ROUNDS [NAME_PREFIX...]

PROTO is a copy of the package with benchmarks/results/prototype-hotpath.diff applied.
"""

import json
import os
import re
import statistics
import subprocess
import sys

PY = sys.executable
PAIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pair.py")
W = "1048576"
FAST = os.environ.get("PROTO", "/tmp/proto/fast")
TUN = "glibc.malloc.trim_threshold=67108864:glibc.malloc.mmap_threshold=4194304"
# Each step adds one switch to the one before it (docs/performance.md, section 5).
B = {"AWT_COALESCE": "1"}
C = {**B, "AWT_FASTSEND": "1"}
D = {**C, "AWT_FASTRECV": "1"}
E = {**D, "AWT_READSIZE": W}
F = {**E, "AWT_MAXDATA": "262144"}
configs = {
    "base (current hot path)": (FAST, {}, []),
    "A window 1 MiB": (FAST, {}, ["--window", W]),
    "B A + coalesce writes": (FAST, B, ["--window", W]),
    "C B + DATA built by us": (FAST, C, ["--window", W]),
    "D C + BINARY parsed by us": (FAST, D, ["--window", W]),
    "E D + 1 MiB reads": (FAST, E, ["--window", W]),
    "F E + 256 KiB DATA": (FAST, F, ["--window", W]),
    "G F + uvloop": (FAST, F, ["--window", W, "--uvloop"]),
    "U base + uvloop": (FAST, {}, ["--uvloop"]),
    "F+T F + malloc tunables": (FAST, {**F, "GLIBC_TUNABLES": TUN}, ["--window", W]),
    "G+T F + uvloop + malloc tunables": (
        FAST,
        {**F, "GLIBC_TUNABLES": TUN},
        ["--window", W, "--uvloop"],
    ),
    "base + malloc tunables": (FAST, {"GLIBC_TUNABLES": TUN}, []),
}
only = [c for c in sys.argv[2:]] if len(sys.argv) > 2 else None
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
res = {k: {"up": [], "down": [], "upc": [], "downc": []} for k in configs}
for r in range(rounds):
    for name, (path, env, args) in configs.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        e = dict(os.environ)
        e.update(env)
        out = subprocess.run(
            [PY, PAIR, path, "--runs", "2", "--scen", "up,down", *args],
            env=e,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
        for line in out.splitlines():
            m = re.match(r"(up|down): MB/s \[([^\]]*)\].*CPU s/GiB med ([\d.]+)", line)
            if m:
                d = m.group(1)
                res[name][d] += [float(x) for x in m.group(2).split(",")]
                res[name][d + "c"].append(float(m.group(3)))
        print(
            f"round {r} {name}: "
            + " | ".join(l for l in out.splitlines() if l.startswith(("up", "down", " "))),
            flush=True,
        )
print()
print("| variant | up MB/s (median) | down MB/s | CPU s/GiB up | CPU s/GiB down |")
print("|---|---|---|---|---|")
for name, v in res.items():
    if not v["up"]:
        continue
    print(
        f"| {name} | {statistics.median(v['up']):.0f} | {statistics.median(v['down']):.0f} | {statistics.median(v['upc']):.2f} | {statistics.median(v['downc']):.2f} |"
    )
json.dump(
    res, open(os.environ.get("AB_OUT", os.environ.get("AB_DIR", "/tmp") + "/ab-result.json"), "w")
)
