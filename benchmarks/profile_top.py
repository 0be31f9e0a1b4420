#!/usr/bin/env python3
"""Summarise py-spy ``--format raw`` (collapsed stack) profiles: top functions by self and
by inclusive share of the samples.

    .venv/bin/python benchmarks/run.py --setups connect --profile DIR
    .venv/bin/python benchmarks/profile_top.py DIR/connect.up0.client.txt [-n 20]
    .venv/bin/python benchmarks/profile_top.py --group DIR/connect.up0.*.txt

py-spy records only non-idle samples by default, so the percentages are shares of the
time the process was running Python (or a C call made from Python), not of wall time.
``--group`` buckets frames by area (our session / wire code, websockets, asyncio
transports, logging ...) which is easier to compare between runs than single functions.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

#: the checkout this script lives in (its files appear in frames by absolute path)
_CHECKOUT = str(Path(__file__).resolve().parent.parent)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

GROUPS = [
    # --native leaves first: where the CPU actually goes
    ("send (libc", "syscall send"),
    ("recv (libc", "syscall recv"),
    ("epoll_wait (libc", "syscall epoll_wait"),
    ("epoll_ctl (libc", "syscall epoll_ctl"),
    ("getrandom (libc", "getrandom (websockets mask key)"),
    ("brk (libc", "malloc/free (brk)"),
    ("emmintrin.h", "apply_mask (websockets speedups)"),
    ("speedups.c", "apply_mask (websockets speedups)"),
    ("(libc.so", "libc other (memcpy, malloc)"),
    ("bytesobject.c", "CPython bytes (copies)"),
    ("bytearrayobject.c", "CPython bytearray (copies)"),
    (".c:", "CPython C (other)"),
    (".c)", "CPython C (other)"),
    (".h:", "CPython C (other)"),
    (".h)", "CPython C (other)"),
    ("aiowstunnel/session.py", "aiowstunnel session.py"),
    ("aiowstunnel/link.py", "aiowstunnel link.py"),
    ("aiowstunnel/linkframes.py", "aiowstunnel linkframes.py"),
    ("aiowstunnel/streams.py", "aiowstunnel streams.py"),
    ("aiowstunnel/mux.py", "aiowstunnel mux.py"),
    ("aiowstunnel/wire.py", "aiowstunnel wire.py"),
    ("aiowstunnel/", "aiowstunnel (other)"),
    ("websockets/frames.py", "websockets frames.py (serialize/parse)"),
    ("websockets/streams.py", "websockets streams.py (reader buffer)"),
    ("websockets/protocol.py", "websockets protocol.py"),
    ("websockets/", "websockets (other)"),
    ("asyncio/selector_events.py", "asyncio selector_events.py (socket I/O)"),
    ("asyncio/base_events.py", "asyncio base_events.py (loop)"),
    ("asyncio/events.py", "asyncio events.py (handles)"),
    ("selectors.py", "selectors.py (epoll)"),
    ("asyncio/", "asyncio (other)"),
    ("uvloop", "uvloop"),
    ("logging/", "logging"),
    ("enum.py", "enum"),
    ("dataclasses", "dataclasses"),
]


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        stacks.append((stack.split(";"), n))
    return stacks


def name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    # Frames name absolute files: keep what follows the install folder or this checkout.
    for marker in ("site-packages/", "lib/python3.11/", f"{_CHECKOUT}/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def group(frame: str) -> str:
    for marker, label in GROUPS:
        if marker in frame:
            return label
    return "other"


def summary(path: Path, top: int, by_group: bool) -> str:
    stacks = parse(path)
    total = sum(n for _, n in stacks)
    if not total:
        return f"{path}: no samples\n"
    key = group if by_group else name
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        # the leaf is the innermost frame; py-spy writes outermost first
        leaf = frames[-1]
        self_c[key(leaf)] += n
        for k in {key(f) for f in frames}:
            incl[k] += n
    out = [f"{path.name}: {total} samples (non-idle)"]
    out.append(f"  {'self %':>7} {'incl %':>7}  function")
    rows = sorted(self_c.items(), key=lambda kv: -kv[1])[:top]
    for k, n in rows:
        out.append(f"  {100 * n / total:7.1f} {100 * incl[k] / total:7.1f}  {k}")
    if not by_group:
        out.append("  -- top inclusive --")
        for k, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"  {100 * self_c[k] / total:7.1f} {100 * n / total:7.1f}  {k}")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("-n", type=int, default=15)
    p.add_argument("--group", action="store_true", help="bucket by area, not function")
    a = p.parse_args()
    for f in a.files:
        sys.stdout.write(summary(f, a.n, a.group) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
