#!/usr/bin/env python3
"""A thousand tunnels on one server: memory per idle session, handshakes per second, and how
long all sessions take to come back after the server restarts.

    .venv/bin/python benchmarks/many_tunnels.py                 # 1000 tunnels, ws:// and wss://
    .venv/bin/python benchmarks/many_tunnels.py --tunnels 200 --transports ws   # smaller

For each transport it starts, all on 127.0.0.1 (ports 20000-29999):

- an echo backend (its own process);
- one server daemon (``[server]`` with one ``[[server.client]]`` entry allowed the tunnels);
- one client daemon with ``--tunnels`` CONNECT ``[[tunnel]]`` entries to it, each with its
  own listen port, started at once (no stagger: every tunnel dials at start);

and measures:

1. the server's RSS before any session, then with every session up and idle:
   KiB per idle session;
2. the time from the client daemon's start until the server reports every session (its
   ``/healthz``), and from the first session to the last: handshakes per second;
3. ``--streams`` idle streams per tunnel (1 byte echoed each, then held open), and the
   server's RSS with them: KiB per stream;
4. a server restart (SIGTERM, wait for the exit, start it again): the time from the new
   server listening until every session is back, with the arrival curve (when 10/50/90/99/100 %
   were back: the backoff's jitter should spread the reconnects, not bunch them), and the
   new server's refusals (limit hits, rejected handshakes, refused resumes: its counters).

Sessions are counted from the server's ``/metrics`` (``aiowstunnel_server_sessions_active``,
summed), polled every 50 ms. The machine's 2 cores are shared by both daemons, the backend and the
stream opener; the figures are for this machine, measured with the peers' absence in mind
(this scenario has no peer to compare with). Every wait is bounded (``--limit``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (the process helpers of benchmarks/run.py)

HOST = run.HOST

SERVER_TOML = """\
[metrics]
listen = "127.0.0.1:{server_metrics}"

[log]
level = "warning"

[daemon]
shutdown_timeout = 1.0

[server]
listen = "127.0.0.1:{ws}"
max_client_streams = {max_streams}
{tls}
[[server.client]]
name = "bench"
token_file = "{workdir}/token"
allow_connect = ["127.0.0.1:{backend}"]
max_sessions = {tunnels}
"""

CLIENT_HEAD = """\
[metrics]
listen = "127.0.0.1:{client_metrics}"

[log]
level = "warning"

[daemon]
shutdown_timeout = 1.0
"""

TUNNEL = """
[[tunnel]]
name = "t{i:04d}"
mode = "connect"
server = "{scheme}://127.0.0.1:{ws}/aiowstunnel"
token_file = "{workdir}/token"
listen = "127.0.0.1:{port}"
connect = "127.0.0.1:{backend}"
{ca}"""


# -- the helper processes (this script, run as a subcommand) ---------------------------------


def cmd_backend(port: int) -> None:
    """An echo server: every byte back."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, HOST, port, backlog=4096)
        async with server:
            await server.serve_forever()

    run.raise_nofile()
    asyncio.run(main())


def cmd_opener(ports: list[int], per: int, limit: float) -> None:
    """Open ``per`` streams to each port, echo one byte on each, print OPEN n, then hold them
    until stdin closes (or ``limit`` seconds pass)."""

    async def one(port, sem):
        async with sem:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"x")
            if await asyncio.wait_for(reader.readexactly(1), 20) != b"x":
                raise RuntimeError("wrong echo")
            return writer

    async def main():
        sem = asyncio.Semaphore(200)
        tasks = [one(p, sem) for p in ports for _ in range(per)]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), limit)
        ok = [w for w in results if not isinstance(w, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        first = repr(errors[0])[:200] if errors else ""
        print(f"OPEN {len(ok)} {len(errors)} {first}", flush=True)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), limit)
        for w in ok:
            w.close()

    run.raise_nofile()
    asyncio.run(main())


# -- measuring --------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    return run.mem_kb(pid).get("VmRSS", 0)


def sessions_up(metrics_port: int) -> int:
    """Sessions the server holds: the sum of its ``aiowstunnel_server_sessions_active`` (0
    while it does not answer). Not /healthz's per-tunnel map: the server keeps at most 32
    tunnel names per client entry apart and adds up the rest under ``(other)``."""
    families = _metrics(metrics_port)
    return int(
        sum(
            s.value
            for f in families
            if f.name == "aiowstunnel_server_sessions_active"
            for s in f.samples
        )
    )


def _metrics(metrics_port: int) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return []
    return list(text_string_to_metric_families(text))


def refusals(metrics_port: int) -> dict[str, float]:
    """What a server process refused since it started: limit hits, rejected handshakes and
    resume requests answered with a refusal, by name."""
    out = {}
    labels = {
        "aiowstunnel_limit_hits": "limit",
        "aiowstunnel_server_rejected": "reason",
        "aiowstunnel_server_resumes": "result",
    }
    for family in _metrics(metrics_port):
        label = labels.get(family.name)
        if label is None:
            continue
        for s in family.samples:
            if s.name.endswith("_total") and s.value and s.labels[label] != "ok":
                out[f"{family.name.removeprefix('aiowstunnel_')} {s.labels[label]}"] = s.value
    return out


def wait_sessions(metrics_port: int, want: int, limit: float, t0: float) -> dict:
    """Poll until ``want`` sessions are up; the arrival times (since t0) of each step."""
    marks = {10: None, 50: None, 90: None, 99: None, 100: None}
    first = None
    end = time.monotonic() + limit
    n = 0
    while time.monotonic() < end:
        n = sessions_up(metrics_port)
        now = time.monotonic() - t0
        if n and first is None:
            first = now
        for pct in marks:
            if marks[pct] is None and n >= want * pct / 100:
                marks[pct] = now
        if n >= want:
            break
        time.sleep(0.05)
    return {"up": n, "first_s": first, "marks_s": marks}


def start_server(workdir: Path, log_name: str) -> run.Proc:
    cmd = [sys.executable, "-m", "aiowstunnel", "run", "-c", str(workdir / "server.toml")]
    return run.Proc(cmd, workdir / log_name, workdir)


def wait_port(port: int, proc: run.Proc, limit: float) -> float:
    end = time.monotonic() + limit
    while not run.port_open(port):
        if not proc.alive() or time.monotonic() > end:
            raise RuntimeError(f"not listening on {port}: {proc.tail()}")
        time.sleep(0.02)
    return time.monotonic()


def measure(transport: str, args, ports: run.Ports, workroot: Path) -> dict:
    workdir = workroot / transport
    workdir.mkdir()
    (workdir / "token").write_text("many-tunnels-bench-token\n")
    (workdir / "token").chmod(0o600)
    v = {
        "ws": ports.get(),
        "backend": ports.get(),
        "server_metrics": ports.get(),
        "client_metrics": ports.get(),
        "workdir": workdir,
        "tunnels": args.tunnels,
        "max_streams": args.tunnels * args.streams + 1000,
        "tls": "",
    }
    ca = ""
    if transport == "wss":
        cert, key = run.self_signed(workdir)
        v["tls"] = f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        ca = f'ca_file = "{cert}"\n'
    (workdir / "server.toml").write_text(SERVER_TOML.format(**v))
    listen_ports = [ports.get() for _ in range(args.tunnels)]
    client = CLIENT_HEAD.format(**v) + "".join(
        TUNNEL.format(i=i, port=p, scheme=transport, ca=ca, **v) for i, p in enumerate(listen_ports)
    )
    (workdir / "client.toml").write_text(client)
    res: dict = {"transport": transport, "tunnels": args.tunnels, "streams": args.streams}
    procs: list[run.Proc] = []
    me = str(Path(__file__).resolve())
    try:
        backend = run.Proc([sys.executable, me, "backend", str(v["backend"])], workdir / "b.log",
                           workdir)  # fmt: skip
        procs.append(backend)
        wait_port(v["backend"], backend, 15)
        server = start_server(workdir, "server.log")
        procs.append(server)
        wait_port(v["ws"], server, 15)
        time.sleep(1.0)  # let the server settle (imports done, loop idle) before the baseline
        base = rss_kib(server.pid)
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "aiowstunnel", "run", "-c", str(workdir / "client.toml")]
        client_proc = run.Proc(cmd, workdir / "client.log", workdir)
        procs.append(client_proc)
        up = wait_sessions(v["server_metrics"], args.tunnels, args.limit, t0)
        res["start"] = up
        if up["up"] < args.tunnels:
            raise RuntimeError(f"only {up['up']} of {args.tunnels} sessions up: "
                               f"{client_proc.tail()}")  # fmt: skip
        spread = up["marks_s"][100] - up["first_s"]
        res["handshakes_per_s"] = args.tunnels / spread if spread > 0 else None
        time.sleep(2.0)
        idle = rss_kib(server.pid)
        res["server_rss_base_MiB"] = base / 1024
        res["server_rss_idle_MiB"] = idle / 1024
        res["KiB_per_idle_session"] = (idle - base) / args.tunnels
        res["client_rss_MiB"] = rss_kib(client_proc.pid) / 1024
        run.log(f"{transport}: {args.tunnels} sessions in {up['marks_s'][100]:.2f} s "
                f"(first {up['first_s']:.2f} s); server {base / 1024:.1f} -> "
                f"{idle / 1024:.1f} MiB, "
                f"{res['KiB_per_idle_session']:.1f} KiB/session")  # fmt: skip
        if args.streams:
            opener = subprocess.Popen(
                [sys.executable, me, "opener", str(args.streams), str(args.limit),
                 *map(str, listen_ports)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                preexec_fn=run.raise_nofile,
            )  # fmt: skip
            try:
                assert opener.stdout is not None
                line = opener.stdout.readline().split(maxsplit=3)
                res["streams_open"] = int(line[1]) if len(line) > 1 else 0
                res["stream_errors"] = int(line[2]) if len(line) > 2 else None
                res["first_stream_error"] = line[3].strip() if len(line) > 3 else ""
                time.sleep(1.0)
                with_streams = rss_kib(server.pid)
                res["server_rss_streams_MiB"] = with_streams / 1024
                if res["streams_open"]:
                    res["KiB_per_stream"] = (with_streams - idle) / res["streams_open"]
                run.log(
                    f"{transport}: {res['streams_open']} streams open "
                    f"({res['stream_errors']} errors), server {with_streams / 1024:.1f} MiB"
                )
            finally:
                if opener.stdin:
                    opener.stdin.close()
                opener.wait(30)
            time.sleep(1.0)
        # the restart: SIGTERM, the exit, a new server process (its counters start at 0)
        server.p.send_signal(signal.SIGTERM)
        server.p.wait(30)
        server.logf.close()
        procs.remove(server)
        down_at = time.monotonic()
        server = start_server(workdir, "server2.log")
        procs.append(server)
        listening = wait_port(v["ws"], server, 15)
        back = wait_sessions(v["server_metrics"], args.tunnels, args.limit, listening)
        res["restart"] = back
        res["restart_down_s"] = listening - down_at
        res["restart_refusals"] = refusals(v["server_metrics"])
        m = back["marks_s"]
        run.log(f"{transport}: restart: listening after {res['restart_down_s']:.2f} s; back: "
                + ", ".join(f"{p}% {m[p]:.2f} s" if m[p] is not None else f"{p}% -"
                            for p in m)
                + f"; refused {res['restart_refusals']}")  # fmt: skip
    except Exception as exc:
        res["error"] = str(exc)[:400]
        run.log(f"{transport}: failed: {res['error']}")
    finally:
        run.stop_all(procs)
    return res


def _s(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def report(results: list[dict], argv: list[str], elapsed: float) -> str:
    lines = [
        f"# aiowstunnel: {results[0]['tunnels']} tunnels on one server, "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"`{' '.join(argv)}` -- {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; both daemons, the backend and the stream opener share "
        f"the cores. Took {elapsed / 60:.1f} min.",
        "",
        "| transport | all up after start s | handshakes/s | server RSS base MiB | with idle "
        "sessions MiB | KiB per idle session | streams open (errors) | KiB per stream "
        "| restart: all back s | 50 % / 90 % / 99 % back s | refusals during restart |",
        "|---" * 11 + "|",
    ]
    for r in results:
        if "error" in r and "restart" not in r:
            lines.append(f"| {r['transport']} | failed: {r['error']} |" + " |" * 9)
            continue
        start = r.get("start", {}).get("marks_s", {})
        back = r.get("restart", {}).get("marks_s", {})
        lines.append(
            "| "
            + " | ".join(
                [
                    r["transport"],
                    _s(start.get(100)),
                    _s(r.get("handshakes_per_s"), 0),
                    _s(r.get("server_rss_base_MiB"), 1),
                    _s(r.get("server_rss_idle_MiB"), 1),
                    _s(r.get("KiB_per_idle_session"), 1),
                    f"{r.get('streams_open', '-')} ({r.get('stream_errors', '-')})",
                    _s(r.get("KiB_per_stream"), 1),
                    _s(back.get(100)),
                    " / ".join(_s(back.get(p)) for p in (50, 90, 99)),
                    ", ".join(f"{k} {int(n)}" for k, n in r.get("restart_refusals", {}).items())
                    or "0",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "All up after start: from the client daemon's start (every tunnel dialling at once) "
        "to the last session the server reports; handshakes/s: tunnels / (last - first "
        "session). KiB per idle session: (server RSS with every session up and idle - before "
        "any) / tunnels. Restart: SIGTERM to the server, then a new process; times from the "
        "new one listening.",
    ]
    lines += [f"- {r['transport']}: {r['error']}" for r in results if "error" in r]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["backend"]:
        cmd_backend(int(argv[1]))
        return 0
    if argv[:1] == ["opener"]:
        cmd_opener([int(p) for p in argv[3:]], int(argv[1]), float(argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tunnels", type=int, default=1000)
    p.add_argument("--streams", type=int, default=10, help="idle streams per tunnel")
    p.add_argument("--transports", default="ws,wss")
    p.add_argument("--limit", type=float, default=120, help="seconds any one wait may take")
    p.add_argument("--port-base", type=int, default=24000)
    p.add_argument("--out", type=Path, help="markdown report (default benchmarks/results/)")
    a = p.parse_args(argv)
    if not 1 <= a.tunnels <= 2000 or not 0 <= a.streams <= 20:
        raise SystemExit("--tunnels 1..2000, --streams 0..20")
    run.raise_nofile()
    ports = run.Ports(a.port_base)
    t0 = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="aiowstunnel-many-") as tmp:
        for transport in a.transports.split(","):
            if transport not in ("ws", "wss"):
                raise SystemExit(f"unknown transport {transport!r}: ws or wss")
            results.append(measure(transport, a, ports, Path(tmp)))
    text = report(results, ["benchmarks/many_tunnels.py", *argv], time.monotonic() - t0)
    print(text)
    out = a.out or HERE / "results" / f"many-tunnels-{datetime.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"argv": argv, "results": results}, indent=1))
    run.log(f"wrote {out} (+ .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
