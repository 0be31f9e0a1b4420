#!/usr/bin/env python3
"""The project's own benchmark: aiowstunnel (CONNECT and LISTEN) against direct TCP and peers.

    .venv/bin/python benchmarks/run.py            # full run, several minutes
    .venv/bin/python benchmarks/run.py --quick    # ~1 minute smoke version
    .venv/bin/python benchmarks/run.py --setups direct,connect --scenarios up,rtt
    .venv/bin/python benchmarks/run.py --asyncio  # adds connect-asyncio (daemons forced to asyncio)
    .venv/bin/python benchmarks/run.py --setups connect --profile /tmp/prof   # py-spy per scenario

Setups (each one started, measured, stopped in turn; one table at the end):

    direct          client -> backend, no tunnel (the upper bound)
    socat           socat TCP-LISTEN fork relay                          (if installed)
    socat2          two chained socat relays: the floor of any two-ended tunnel; the
                    report's ratios are to this one when it ran, else to direct
    socat-tls       socat TCP-LISTEN -> OPENSSL, OPENSSL-LISTEN -> TCP (a TLS pair)
    ssh-L           ssh -L against a private throwaway sshd on loopback  (if installed)
    websocat        websocat ws-l server + tcp-l client, binary          (if found)
    connect         two aiowstunnel daemons: [server] + a CONNECT [[tunnel]]
    listen          two aiowstunnel daemons: [server] + a LISTEN [[tunnel]]
    connect-wss     as connect, wss://: TLS terminated by the server daemon (openssl CLI
                    makes a throwaway certificate for 127.0.0.1)
    connect-asyncio as connect, both daemons on asyncio (AIOWSTUNNEL_EVENT_LOOP=asyncio, only
                    with --asyncio): what a Python without uvloop gets
    connect-python  as connect, both daemons on the pure-Python data path
                    (AIOWSTUNNEL_DATA_PATH=python, only when named in --setups)

Scenarios, each in its own client process, against a backend in its own process:

    idle        N concurrent idle streams (default 10,000) through one tunnel: each sends
                one byte and gets its echo, then all stay open; peak RSS (sum of VmHWM)
                of the tunnel processes, and KiB per stream. Runs on freshly started
                tunnel processes (the setup is restarted afterwards).
    up          1 GiB client -> backend (sink, timed until its ACK), MB/s, median of runs
    down        1 GiB backend -> client (source), MB/s
    rtt         64-byte ping-pong on one connection (TCP_NODELAY), p50/p99 in µs
    concurrent  200 connections at once, each echoes 1 MiB of its own data (checked)
    connect     sequential connect, 1-byte echo, close: connections/s

CPU s/GiB is utime+stime (from /proc/PID/stat, children reaped included) of the tunnel's
processes during the up / down runs, per GiB moved.

Only 127.0.0.1 and ports 20000-29999 are used; every loop is bounded in count and time;
only the processes this script started are signalled, by PID. Stdlib only (plus the
project, which it runs as ``python -m aiowstunnel``).

The daemons are the package as the README installs it: the Python that runs this script (the
venv of scripts/bootstrap, whose ``pip install`` brings uvloop as users get it), with no extra
added by hand. Which event loop each daemon ran on is printed when it starts (from its
``--version`` line and from the uvloop library mapped into the process) and written into the
report; a daemon on asyncio where uvloop should be is warned about.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import getpass
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
PORT_MIN, PORT_MAX = 20000, 29999
MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- backend protocol ------------------------------------------------------------------
# First byte of a connection: 0x01 + u64 N = sink N bytes then send ACK; 0x02 + u64 N =
# send N bytes; anything else = echo everything (that byte included). No scenario relies
# on half-close.
MODE_SINK, MODE_SOURCE = 0x01, 0x02
HDR = struct.Struct(">BQ")
ACK = struct.Struct(">8sQ")
ACK_MAGIC = b"SINKDONE"
CHUNK = MiB
PAYLOAD = b"C" + os.urandom(CHUNK - 1)  # random: nothing compresses it


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (10,000 idle streams need the fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Backend(asyncio.Protocol):
    def connection_made(self, transport):
        self.tr = transport
        self.mode = None
        self.head = b""
        self.remaining = 0
        self.count = 0
        self.paused = False
        transport.set_write_buffer_limits(high=4 * MiB)

    def data_received(self, data):
        if self.mode == "echo":
            self.tr.write(data)
            return
        if self.mode == "sink":
            self._sink(len(data))
            return
        if self.mode is not None:
            return
        buf = self.head + data
        if buf[0] not in (MODE_SINK, MODE_SOURCE):
            self.mode = "echo"
            self.tr.write(buf)
            return
        if len(buf) < HDR.size:
            self.head = bytes(buf)
            return
        mode, n = HDR.unpack_from(buf)
        self.head = b""
        self.remaining = n
        if mode == MODE_SINK:
            self.mode = "sink"
            self._sink(len(buf) - HDR.size)
        else:
            self.mode = "source"
            self._pump()

    def _sink(self, n):
        self.remaining -= n
        self.count += n
        if self.remaining <= 0:
            self.mode = "done"
            self.tr.write(ACK.pack(ACK_MAGIC, self.count))

    def _pump(self):
        view = memoryview(PAYLOAD)
        while self.remaining > 0 and not self.paused:
            k = min(CHUNK, self.remaining)
            self.tr.write(view[:k])
            self.remaining -= k

    def pause_writing(self):
        self.paused = True
        if self.mode == "echo":
            self.tr.pause_reading()

    def resume_writing(self):
        self.paused = False
        if self.mode == "echo":
            self.tr.resume_reading()
        elif self.mode == "source":
            self._pump()

    def eof_received(self):
        return False


def cmd_backend(port: int) -> None:
    raise_nofile()

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Backend, HOST, port, backlog=4096, reuse_address=True)
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        print(f"backend on {HOST}:{port}", flush=True)
        await stop
        server.close()

    asyncio.run(main())


# -- clients (each scenario runs in its own process: `run.py client ...`) --------------


def _recv_exact(sock, view):
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError(f"EOF after {got} of {len(view)} bytes")
        got += k


def client_up(port, nbytes, limit):
    s = socket.create_connection((HOST, port), timeout=15)
    s.settimeout(30)
    view = memoryview(PAYLOAD)
    t0 = time.perf_counter()
    s.sendall(HDR.pack(MODE_SINK, nbytes))
    sent, capped = 0, False
    while sent < nbytes:
        k = min(CHUNK, nbytes - sent)
        s.sendall(view[:k])
        sent += k
        if time.perf_counter() - t0 > limit and sent < nbytes:
            capped = True
            break
    if not capped:
        ack = bytearray(ACK.size)
        _recv_exact(s, memoryview(ack))
        magic, count = ACK.unpack(ack)
        if magic != ACK_MAGIC or count != nbytes:
            raise RuntimeError(f"bad ACK {magic!r} {count}")
    dt = time.perf_counter() - t0
    s.close()
    return {"bytes": sent, "seconds": dt, "MBps": sent / dt / 1e6, "capped": capped}


def client_down(port, nbytes, limit):
    s = socket.create_connection((HOST, port), timeout=15)
    s.settimeout(30)
    buf = memoryview(bytearray(CHUNK))
    t0 = time.perf_counter()
    s.sendall(HDR.pack(MODE_SOURCE, nbytes))
    got, capped = 0, False
    while got < nbytes:
        k = s.recv_into(buf, min(CHUNK, nbytes - got))
        if not k:
            raise ConnectionError(f"EOF after {got} of {nbytes} bytes")
        got += k
        if time.perf_counter() - t0 > limit and got < nbytes:
            capped = True
            break
    dt = time.perf_counter() - t0
    s.close()
    return {"bytes": got, "seconds": dt, "MBps": got / dt / 1e6, "capped": capped}


def client_rtt(port, count, size=64, warmup=100, limit=60.0):
    s = socket.create_connection((HOST, port), timeout=15)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(10)
    msg = (b"r" + bytes(range(256)) * (size // 256 + 1))[:size]
    buf = bytearray(size)
    view = memoryview(buf)
    samples, errors = [], 0
    deadline = time.perf_counter() + limit
    clock = time.perf_counter_ns
    for i in range(warmup + count):
        t = clock()
        s.sendall(msg)
        _recv_exact(s, view)
        dt = clock() - t
        if buf != msg:
            errors += 1
        if i >= warmup:
            samples.append(dt)
        if time.perf_counter() > deadline:
            break
    s.close()
    samples.sort()
    n = len(samples)
    return {
        "count": n,
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[min(n - 1, int(n * 0.99))] / 1000,
        "errors": errors,
        "capped": n < count,
    }


def client_connect(port, count, limit):
    ok = errors = 0
    first = None
    t0 = time.perf_counter()
    for _ in range(count):
        if time.perf_counter() - t0 > limit:
            break
        s = socket.socket()
        try:
            s.settimeout(5)
            s.connect((HOST, port))
            s.sendall(b"c")
            if s.recv(1) == b"c":
                ok += 1
            else:
                errors += 1
                first = first or "no echo"
        except OSError as exc:
            errors += 1
            first = first or repr(exc)
        finally:
            s.close()
    dt = time.perf_counter() - t0
    return {"ok": ok, "errors": errors, "seconds": dt, "per_s": ok / dt, "first_error": first}


class _Echo(asyncio.Protocol):
    """Writes its slice of `big` under flow control; checks every echoed byte."""

    def __init__(self, big, off, size, done):
        self.big, self.off, self.size, self.done = big, off, size, done
        self.view = memoryview(big)
        self.sent = self.got = 0
        self.paused = self.bad = False

    def connection_made(self, tr):
        self.tr = tr
        self._pump()

    def _pump(self):
        while self.sent < self.size and not self.paused:
            k = min(256 * 1024, self.size - self.sent)
            a = self.off + self.sent
            self.tr.write(self.view[a : a + k])
            self.sent += k

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._pump()

    def data_received(self, data):
        a = self.off + self.got
        if self.big[a : a + len(data)] != data:
            self.bad = True
        self.got += len(data)
        if self.got >= self.size and not self.done.done():
            if self.bad or self.got != self.size:
                self.done.set_exception(RuntimeError("echoed data differs"))
            else:
                self.done.set_result(time.perf_counter())

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(
                ConnectionError(f"closed after {self.got} of {self.size} bytes ({exc!r})")
            )


def client_concurrent(port, conns, size, limit):
    stride = 4099  # each connection echoes different bytes: mixed-up streams are caught
    big = os.urandom(size + conns * stride).translate(
        bytes.maketrans(bytes([MODE_SINK, MODE_SOURCE]), b"AB")
    )

    async def main():
        loop = asyncio.get_running_loop()

        async def one(i):
            done = loop.create_future()
            tr, _ = await loop.create_connection(
                lambda: _Echo(big, i * stride, size, done), HOST, port
            )
            try:
                return await done
            finally:
                tr.close()

        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(one(i)) for i in range(conns)]
        finished, pending = await asyncio.wait(tasks, timeout=limit)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        errs = [repr(t.exception()) for t in finished if t.exception() is not None]
        ends = [t.result() for t in finished if t.exception() is None]
        end = max(ends) if ends and not pending else time.perf_counter()
        return {
            "ok": len(ends),
            "errors": len(errs) + len(pending),
            "seconds": end - t0,
            "first_error": errs[0] if errs else (f"{len(pending)} timed out" if pending else None),
        }

    return asyncio.run(main())


def client_idle(port, count, hold, limit, parallel=256):
    """Open `count` streams (each: 1 byte + its echo), hold them all `hold` s, close."""
    raise_nofile()

    async def main():
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(parallel)
        socks, errs = [], []

        async def one():
            async with gate:
                s = socket.socket()
                s.setblocking(False)
                try:
                    await asyncio.wait_for(loop.sock_connect(s, (HOST, port)), 15)
                    await loop.sock_sendall(s, b"i")
                    if await asyncio.wait_for(loop.sock_recv(s, 1), 15) != b"i":
                        raise ConnectionError("no echo")
                    socks.append(s)
                except (OSError, asyncio.TimeoutError) as exc:
                    errs.append(repr(exc))
                    s.close()

        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(one()) for _ in range(count)]
        _, pending = await asyncio.wait(tasks, timeout=limit)
        for task in pending:
            task.cancel()
        opened = time.perf_counter() - t0
        print(f"OPEN {len(socks)}", flush=True)  # the parent samples memory now
        await asyncio.sleep(hold)
        # all still alive? one more echo on a sample of them
        alive = 0
        for s in socks[:: max(1, len(socks) // 100)]:
            try:
                await loop.sock_sendall(s, b"j")
                if await asyncio.wait_for(loop.sock_recv(s, 1), 5) == b"j":
                    alive += 1
            except (OSError, asyncio.TimeoutError):
                pass
        for s in socks:
            s.close()
        return {
            "ok": len(socks),
            "errors": len(errs) + len(pending),
            "open_seconds": opened,
            "alive_sampled": alive,
            "first_error": errs[0] if errs else None,
        }

    return asyncio.run(main())


def cmd_client(args) -> None:
    p, sc = args.port, args.scenario
    if sc == "up":
        result = client_up(p, args.bytes, args.limit)
    elif sc == "down":
        result = client_down(p, args.bytes, args.limit)
    elif sc == "rtt":
        result = client_rtt(p, args.count, limit=args.limit)
    elif sc == "connect":
        result = client_connect(p, args.count, args.limit)
    elif sc == "concurrent":
        result = client_concurrent(p, args.count, args.bytes, args.limit)
    elif sc == "idle":
        result = client_idle(p, args.count, args.hold, args.limit)
    else:
        raise SystemExit(f"unknown scenario {sc}")
    print("RESULT " + json.dumps(result), flush=True)


# -- processes -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(b")") + 2 :].split()


def _ppids() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            fields = _stat_fields(int(d))
            if fields:
                out[int(d)] = int(fields[1])
    return out


def proc_tree(roots: list[int]) -> list[int]:
    parents = _ppids()
    kids: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        kids.setdefault(ppid, []).append(pid)
    out, stack, seen = [], list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in parents:
            continue
        seen.add(pid)
        out.append(pid)
        stack.extend(kids.get(pid, ()))
    return out


def cpu_seconds(pids) -> float:
    """utime + stime (+ cutime + cstime: forked children already reaped)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def mem_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    """Peak over samples of sum(VmHWM) and sum(VmRSS) of a process tree."""

    def __init__(self, roots, interval=0.2, max_seconds=900):
        super().__init__(daemon=True)
        self.roots, self.interval, self.max_seconds = roots, interval, max_seconds
        self.stop_event = threading.Event()
        self.peak_hwm = self.peak_rss = 0
        self.hwm: dict[int, int] = {}

    def sample(self):
        hwm = rss = 0
        for pid in proc_tree(self.roots):
            m = mem_kb(pid)
            if "VmHWM" in m:
                self.hwm[pid] = max(self.hwm.get(pid, 0), m["VmHWM"])
                hwm += self.hwm[pid]
                rss += m["VmRSS"]
        self.peak_hwm = max(self.peak_hwm, hwm)
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def run(self):
        end = time.monotonic() + self.max_seconds
        while not self.stop_event.is_set() and time.monotonic() < end:
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self):
        self.stop_event.set()
        self.join(5)
        self.sample()


class Proc:
    def __init__(self, argv, log: Path, cwd: Path, env=None):
        self.argv = argv
        self.log = log
        self.logf = open(log, "wb")  # noqa: SIM115 - closed in stop_all
        self.p = subprocess.Popen(
            argv,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=raise_nofile,
        )
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n=400) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace").strip()
        except OSError:
            return ""


def stop_all(procs: list[Proc], grace=5.0) -> None:
    """SIGTERM our processes and their descendants (by PID), then SIGKILL."""
    pids = proc_tree([p.pid for p in procs if p.alive()])
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.p.wait(max(0.1, end - time.monotonic()))
    for pid in pids:
        fields = _stat_fields(pid)
        if fields and fields[0] != b"Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.p.wait(2)
        p.logf.close()


class Ports:
    def __init__(self, start: int):
        self.next = start
        self.used: set[int] = set()

    def get(self) -> int:
        for _ in range(PORT_MAX - PORT_MIN):
            port = self.next
            self.next = port + 1 if port < PORT_MAX else PORT_MIN
            if port in self.used:
                continue
            s = socket.socket()
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, port))
            except OSError:
                continue
            finally:
                s.close()
            self.used.add(port)
            return port
        raise RuntimeError("no free port in 20000-29999")


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def echo_probe(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"p")
            return s.recv(1) == b"p"
    except OSError:
        return False


# -- setups ----------------------------------------------------------------------------


@dataclass
class Setup:
    name: str
    description: str
    available: str | None  # None = can run; else why not
    idle_ok: bool = True  # False: the idle scenario is skipped (e.g. a process per stream)
    profile: bool = False  # Python processes py-spy can sample
    roles: list[str] = field(default_factory=list)
    start: object = None  # (workdir, ports, backend_port, target_port) -> [(argv, wait_port)]
    env: dict[str, str] = field(default_factory=dict)  # added to this script's environment
    daemon: bool = False  # aiowstunnel daemons: their event loop is reported


def _which(name: str, *extra: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for path in extra:
        if path and os.access(path, os.X_OK):
            return path
    return None


def _daemon_cmd(uvloop: bool = False) -> list[str]:
    # uvloop=True (benchmarks/uvloop_run.py) is for experiments/pair.py and old checkouts:
    # the daemon itself runs on uvloop where it is installed.
    if uvloop:
        return [sys.executable, str(HERE / "uvloop_run.py")]
    return [sys.executable, "-m", "aiowstunnel"]


#: both daemons: no exporter, quiet logs, a quick stop between setups
_DAEMON_TOML = """\
[metrics]
enabled = false

[log]
level = "warning"

[daemon]
shutdown_timeout = 1.0
"""

SERVER_TOML = (
    _DAEMON_TOML
    + """
[server]
listen = "127.0.0.1:{ws}"
# the idle scenario's 10,000 streams come from one client entry: above the default per-entry
# share of the fd-derived stream budget (docs/configuration.md, max_client_streams)
max_client_streams = 12000

[[server.client]]
name = "bench"
token_file = "{workdir}/token"
allow_connect = ["127.0.0.1:{backend}"]
allow_listen = ["127.0.0.1:{target}"]
"""
)

CLIENT_TOML = (
    _DAEMON_TOML
    + """
[[tunnel]]
name = "bench"
mode = "{mode}"
server = "ws://127.0.0.1:{ws}/aiowstunnel"
token_file = "{workdir}/token"
listen = "127.0.0.1:{target}"
connect = "127.0.0.1:{backend}"
"""
)


#: ``--window``: the flow-control window of both sides (None: the daemon's default)
WINDOW: int | None = None


def aiowstunnel_setup(mode: str, uvloop: bool = False, tls: bool = False):
    def start(workdir: Path, ports: Ports, backend: int, target: int):
        ws = ports.get()
        values = {"ws": ws, "backend": backend, "target": target, "workdir": workdir, "mode": mode}
        (workdir / "token").write_text("bench-token-not-secret\n")
        (workdir / "token").chmod(0o600)
        server, client = SERVER_TOML.format(**values), CLIENT_TOML.format(**values)
        if tls:
            cert, key = self_signed(workdir)
            server = server.replace(
                "\n[[server", f'tls_cert = "{cert}"\ntls_key = "{key}"\n\n[[server', 1
            )
            client = client.replace("ws://", "wss://") + f'ca_file = "{cert}"\n'
        if WINDOW:
            server = server.replace("\n[[server", f"window = {WINDOW}\n\n[[server", 1)
            client += f"window = {WINDOW}\n"
        (workdir / "server.toml").write_text(server)
        (workdir / "client.toml").write_text(client)
        cmd = _daemon_cmd(uvloop)
        return [
            ([*cmd, "run", "-c", str(workdir / "server.toml")], ws),
            ([*cmd, "run", "-c", str(workdir / "client.toml")], None),
        ]

    return start


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {workdir}/host_key
PidFile {workdir}/sshd.pid
AuthorizedKeysFile {workdir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding local
PermitOpen 127.0.0.1:{backend}
X11Forwarding no
AllowAgentForwarding no
PrintMotd no
UseDNS no
LogLevel ERROR
"""


def ssh_start(workdir: Path, ports: Ports, backend: int, target: int):
    port = ports.get()
    os.makedirs("/run/sshd", exist_ok=True)  # Debian's sshd insists on it
    for name in ("host_key", "id_key"):
        for old in (workdir / name, workdir / f"{name}.pub"):
            old.unlink(missing_ok=True)  # a restarted setup makes new keys
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)],
            check=True,
            timeout=30,
        )
    shutil.copy(workdir / "id_key.pub", workdir / "authorized_keys")
    (workdir / "sshd_config").write_text(
        SSHD_CONFIG.format(port=port, workdir=workdir, backend=backend)
    )
    ssh = [
        "ssh", "-F", "/dev/null", "-N", "-T", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes", "-o", "IdentitiesOnly=yes",
        "-o", f"IdentityFile={workdir}/id_key", "-o", "ControlMaster=no", "-p", str(port),
        "-L", f"127.0.0.1:{target}:127.0.0.1:{backend}", f"{getpass.getuser()}@127.0.0.1",
    ]  # fmt: skip
    return [
        (["/usr/sbin/sshd", "-D", "-e", "-f", str(workdir / "sshd_config")], port),
        (ssh, None),
    ]


def websocat_path() -> str | None:
    home = os.environ.get("TUNNELBENCH_HOME", "/var/tmp/tunnelbench")
    return _which(
        "websocat",
        os.environ.get("WEBSOCAT", ""),
        str(ROOT / ".bench-tools" / "bin" / "websocat"),  # benchmarks/setup puts it there
        f"{home}/venv-tools/bin/websocat",
    )


def websocat_start(workdir: Path, ports: Ports, backend: int, target: int):
    ws = ports.get()
    exe = websocat_path()
    return [
        ([exe, "-b", "-q", f"ws-l:127.0.0.1:{ws}", f"tcp:127.0.0.1:{backend}"], ws),
        ([exe, "-b", "-q", f"tcp-l:127.0.0.1:{target}", f"ws://127.0.0.1:{ws}/"], None),
    ]


def socat_start(workdir: Path, ports: Ports, backend: int, target: int):
    listen = f"TCP-LISTEN:{target},bind=127.0.0.1,fork,reuseaddr,backlog=1024"
    return [(["socat", listen, f"TCP:127.0.0.1:{backend}"], None)]


def socat2_start(workdir: Path, ports: Ports, backend: int, target: int):
    """Two chained relays: the plain-TCP shape of a two-ended tunnel (the floor)."""
    mid = ports.get()
    opts = "fork,reuseaddr,backlog=1024"
    return [
        (["socat", f"TCP-LISTEN:{mid},bind=127.0.0.1,{opts}", f"TCP:127.0.0.1:{backend}"], mid),
        (["socat", f"TCP-LISTEN:{target},bind=127.0.0.1,{opts}", f"TCP:127.0.0.1:{mid}"], None),
    ]


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (and localhost), made by the openssl CLI."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    return cert, key


def socat_tls_start(workdir: Path, ports: Ports, backend: int, target: int):
    """A TLS socat pair: the plain-TCP shape of a two-ended tunnel with TLS between the ends."""
    mid = ports.get()
    cert, key = self_signed(workdir)
    opts = "fork,reuseaddr,backlog=1024"
    return [
        (["socat", f"OPENSSL-LISTEN:{mid},bind=127.0.0.1,{opts},cert={cert},key={key},verify=0",
          f"TCP:127.0.0.1:{backend}"], mid),
        (["socat", f"TCP-LISTEN:{target},bind=127.0.0.1,{opts}",
          f"OPENSSL:127.0.0.1:{mid},cafile={cert},commonname=127.0.0.1"], None),
    ]  # fmt: skip


def all_setups() -> list[Setup]:
    def missing(*names):
        gone = [n for n in names if not _which(n)]
        return ("missing " + ", ".join(gone)) if gone else None

    ssh_missing = missing("ssh", "ssh-keygen") or (
        None if os.access("/usr/sbin/sshd", os.X_OK) else "missing /usr/sbin/sshd"
    )
    return [
        Setup("direct", "no tunnel", None, start=None),
        Setup("socat", "socat TCP-LISTEN fork relay", missing("socat"), idle_ok=False,
              start=socat_start),
        Setup("socat2", "two chained socat relays (the floor: a two-ended tunnel's shape)",
              missing("socat"), idle_ok=False, roles=["far", "near"], start=socat2_start),
        Setup("socat-tls", "socat TCP-LISTEN -> OPENSSL ... OPENSSL-LISTEN -> TCP",
              missing("socat", "openssl"), idle_ok=False, roles=["far", "near"],
              start=socat_tls_start),
        Setup("ssh-L", "ssh -L against a private sshd", ssh_missing, roles=["sshd", "ssh"],
              start=ssh_start),
        Setup("websocat", "websocat ws-l + tcp-l, binary",
              None if websocat_path() else "websocat not found (PATH, $WEBSOCAT)",
              roles=["server", "client"], start=websocat_start),
        Setup("connect", "aiowstunnel daemons: server + CONNECT tunnel", None, profile=True,
              roles=["server", "client"], start=aiowstunnel_setup("connect"), daemon=True),
        Setup("listen", "aiowstunnel daemons: server + LISTEN tunnel", None, profile=True,
              roles=["server", "client"], start=aiowstunnel_setup("listen"), daemon=True),
        Setup("connect-wss", "as connect, wss:// (TLS in the server daemon)",
              missing("openssl"), profile=True, roles=["server", "client"],
              start=aiowstunnel_setup("connect", tls=True), daemon=True),
        Setup("connect-asyncio", "as connect, both daemons on asyncio", None, profile=True,
              roles=["server", "client"], start=aiowstunnel_setup("connect"), daemon=True,
              env={"AIOWSTUNNEL_EVENT_LOOP": "asyncio"}),
        Setup("connect-python", "as connect, both daemons on the python data path", None,
              profile=True, roles=["server", "client"], start=aiowstunnel_setup("connect"),
              daemon=True, env={"AIOWSTUNNEL_DATA_PATH": "python"}),
    ]  # fmt: skip


def daemon_runtime(setup: Setup) -> str:
    """The daemons' ``--version`` line, run as the setup runs them (same Python, same
    environment): ``aiowstunnel 1.0.0 (event loop: uvloop 0.23.0; data path: python)``."""
    proc = subprocess.run([*_daemon_cmd(), "--version"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **setup.env}, check=False)  # fmt: skip
    return (proc.stdout or proc.stderr).strip()


def loaded_event_loop(pid: int) -> str:
    """``uvloop`` if uvloop's compiled loop is mapped into the process, else ``asyncio``: the
    daemon imports uvloop only when it runs on it (aiowstunnel/runtime.py)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return "uvloop" if any("/uvloop/loop." in line for line in maps) else "asyncio"
    except OSError:
        return "?"


# -- running ---------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_client(scenario: str, port: int, extra: list, timeout: float, on_line=None) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "client", scenario, "--port", str(port)]
    argv += [str(x) for x in extra]
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile
    )
    result = None
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
            elif on_line:
                on_line(line.strip())
        p.wait()
        err = p.stderr.read() if p.stderr else ""
    finally:
        timer.cancel()
    if result is None:
        last = (err.strip().splitlines() or [f"exit {p.returncode} (timeout {timeout}s?)"])[-1]
        return {"error": last[:300]}
    return result


class Profiler:
    """py-spy record on each Python tunnel process for the length of one scenario."""

    def __init__(self, outdir: Path | None, rate: int, native: bool = False):
        self.outdir = outdir
        self.rate = rate
        self.native = native
        self.exe = _which(
            "py-spy",
            str(Path(sys.executable).parent / "py-spy"),
            str(ROOT / ".bench-tools" / "bin" / "py-spy"),
        )
        self.running: list[subprocess.Popen] = []

    def start(self, setup: Setup, procs: list[Proc], scenario: str) -> None:
        if self.outdir is None or not setup.profile or not self.exe:
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        for role, proc in zip(setup.roles, procs, strict=False):
            out = self.outdir / f"{setup.name}.{scenario}.{role}.txt"
            argv = [self.exe, "record", "--pid", str(proc.pid), "--rate", str(self.rate),
                    "--format", "raw", "-o", str(out)]  # fmt: skip
            # --native (C frames: memcpy, send, apply_mask) has to pause the process
            argv += ["--native"] if self.native else ["--nonblocking"]
            self.running.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        time.sleep(0.5)  # let py-spy attach

    def stop(self) -> None:
        for p in self.running:
            p.send_signal(signal.SIGINT)
        for p in self.running:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.running = []


def start_setup(setup: Setup, workdir: Path, ports: Ports, backend: int):
    target = backend if setup.start is None else ports.get()
    procs: list[Proc] = []
    if setup.start is None:
        return procs, target
    try:
        commands = setup.start(workdir, ports, backend, target)
        env = {**os.environ, **setup.env} if setup.env else None
        for i, (argv, wait_port) in enumerate(commands):
            proc = Proc(argv, workdir / f"proc{i}.log", workdir, env)
            procs.append(proc)
            if wait_port:
                end = time.monotonic() + 15
                while not port_open(wait_port):
                    if not proc.alive() or time.monotonic() > end:
                        raise RuntimeError(f"{argv[0]} not listening: {proc.tail()}")
                    time.sleep(0.1)
        end = time.monotonic() + 20
        while not echo_probe(target):
            dead = [p for p in procs if not p.alive()]
            if dead or time.monotonic() > end:
                why = dead[0].tail() if dead else "no echo after 20 s"
                raise RuntimeError(why)
            time.sleep(0.2)
    except BaseException:
        stop_all(procs)
        raise
    return procs, target


def measure(setup: Setup, cfg, ports: Ports, backend: int, workroot: Path, prof: Profiler):
    res: dict = {"name": setup.name, "description": setup.description, "scenarios": {}}
    if setup.available:
        res["status"] = "skipped: " + setup.available
        log(f"{setup.name}: {res['status']}")
        return res
    workdir = workroot / setup.name
    workdir.mkdir(parents=True, exist_ok=True)
    sc = res["scenarios"]
    res["status"] = "ok"
    procs: list[Proc] = []
    try:
        # idle streams first, on fresh processes: their peak RSS is the idle test's alone
        if "idle" in cfg.scenarios and setup.idle_ok and setup.start is not None:
            procs, target = start_setup(setup, workdir, ports, backend)
            roots = [p.pid for p in procs]
            sampler = Sampler(roots)
            base = sampler.sample()
            sampler.start()
            at_open = {}

            def on_line(line):
                if line.startswith("OPEN"):
                    time.sleep(0.5)
                    at_open["rss"] = sampler.sample()

            r = run_client("idle", target, ["--count", cfg.idle, "--hold", cfg.hold,
                                            "--limit", 120], 200, on_line)  # fmt: skip
            sampler.stop()
            r["base_rss_MB"] = base / 1024
            r["peak_hwm_MB"] = sampler.peak_hwm / 1024
            r["rss_open_MB"] = at_open.get("rss", sampler.peak_rss) / 1024
            if r.get("ok"):
                r["KiB_per_stream"] = (r["rss_open_MB"] - r["base_rss_MB"]) * 1024 / r["ok"]
            sc["idle"] = r
            why = r.get("first_error") or r.get("error") or ""
            log(
                f"{setup.name}: idle {r.get('ok')} streams, errors {r.get('errors')}, "
                f"peak RSS {r['peak_hwm_MB']:.1f} MB {why}"
            )
            stop_all(procs)
            procs = []
        procs, target = start_setup(setup, workdir, ports, backend)
        roots = [p.pid for p in procs]
        log(f"{setup.name}: ready on port {target}, pids {roots}")
        if setup.daemon:
            res["runtime"] = daemon_runtime(setup)
            res["event_loops"] = {
                role: loaded_event_loop(p.pid) for role, p in zip(setup.roles, procs, strict=True)
            }
            loops = ", ".join(f"{role} on {loop}" for role, loop in res["event_loops"].items())
            log(f"{setup.name}: {res['runtime']}; {loops}")
            forced = "AIOWSTUNNEL_EVENT_LOOP" in setup.env
            if not forced and "asyncio" in res["event_loops"].values():
                log(f"{setup.name}: WARNING: not the package as installed, which runs on uvloop "
                    f"(is uvloop missing from {sys.executable}'s environment, or "
                    "AIOWSTUNNEL_EVENT_LOOP set?)")  # fmt: skip
        load_sampler = Sampler(roots, interval=0.25)
        if roots:
            load_sampler.start()

        def timed(scenario, extra, timeout, tag=None):
            tree0 = proc_tree(roots)
            c0 = cpu_seconds(tree0)
            prof.start(setup, procs, tag or scenario)
            try:
                r = run_client(scenario, target, extra, timeout)
            finally:
                prof.stop()
            r["tunnel_cpu_s"] = cpu_seconds(set(tree0) | set(proc_tree(roots))) - c0
            return r

        for direction in ("up", "down"):
            if direction not in cfg.scenarios:
                continue
            runs = [
                timed(direction, ["--bytes", cfg.bulk, "--limit", 60], 120, f"{direction}{i}")
                for i in range(cfg.runs)
            ]
            ok = [r for r in runs if "MBps" in r]
            sc[direction] = {
                "runs": runs,
                "MBps": statistics.median(r["MBps"] for r in ok) if ok else None,
                "cpu_s_per_GiB": statistics.median(r["tunnel_cpu_s"] * GiB / r["bytes"] for r in ok)
                if ok
                else None,
                "capped": any(r.get("capped") for r in ok),
                "error": None if ok else runs[0].get("error"),
            }
            log(
                f"{setup.name}: {direction} {[round(r.get('MBps', 0)) for r in runs]} MB/s "
                f"{runs[0].get('error') or ''}"
            )
        if "rtt" in cfg.scenarios:
            runs = [timed("rtt", ["--count", cfg.rtt, "--limit", 60], 90) for _ in range(cfg.runs)]
            ok = [r for r in runs if "p50_us" in r]
            sc["rtt"] = {
                "p50_us": statistics.median(r["p50_us"] for r in ok) if ok else None,
                "p99_us": statistics.median(r["p99_us"] for r in ok) if ok else None,
                "runs_p50_us": [round(r["p50_us"], 1) for r in ok],
                "errors": sum(r["errors"] for r in ok),
                "error": None if ok else runs[0].get("error"),
            }
            log(f"{setup.name}: rtt p50 {_f(sc['rtt']['p50_us'])} p99 {_f(sc['rtt']['p99_us'])} us")
        if "concurrent" in cfg.scenarios:
            r = timed("concurrent", ["--count", cfg.conc, "--bytes", cfg.conc_bytes,
                                     "--limit", 120], 180)  # fmt: skip
            sc["concurrent"] = r
            log(
                f"{setup.name}: concurrent {_f(r.get('seconds'))} s, errors {r.get('errors')} "
                f"{r.get('first_error') or r.get('error') or ''}"
            )
        if "connect" in cfg.scenarios:
            r = timed("connect", ["--count", cfg.connects, "--limit", 60], 90)
            sc["connect"] = r
            log(f"{setup.name}: connect {_f(r.get('per_s'))}/s, errors {r.get('errors')}")
        if roots:
            load_sampler.stop()
            res["load_peak_hwm_MB"] = load_sampler.peak_hwm / 1024
        dead = [p for p in procs if not p.alive()]
        if dead:
            res["status"] = f"ok, but pid {dead[0].pid} exited: {dead[0].tail(200)}"
    except Exception as exc:
        res["status"] = f"failed: {exc}"[:400]
        log(f"{setup.name}: {res['status']}")
    finally:
        prof.stop()
        stop_all(procs)
    errors = 0
    for logfile in workdir.glob("proc*.log"):
        errors += sum(
            1
            for line in logfile.read_text(errors="replace").splitlines()
            if " ERROR " in line or line.startswith("Traceback")
        )
    res["log_error_lines"] = errors
    return res


# -- report ----------------------------------------------------------------------------


def _f(x, digits=None):
    if x is None:
        return "-"
    if digits is None:
        digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2
    return f"{x:.{digits}f}"


def _ratio(x, d, digits=2):
    if x is None or not d:
        return "-"
    return f"{x / d:.{digits}f}"


def report(results, cfg, argv, elapsed) -> str:
    # Ratios are to the two-relay floor when it ran (what any two-process tunnel costs at
    # least on this machine), else to direct TCP.
    floor = next((r["scenarios"] for r in results if r["name"] == "socat2" and r["scenarios"]), {})
    d = floor or next((r["scenarios"] for r in results if r["name"] == "direct"), {})
    base = "floor" if floor else "direct"

    def g(sc, *keys):
        for k in keys:
            sc = sc.get(k) if isinstance(sc, dict) else None
        return sc

    dup, ddown = g(d, "up", "MBps"), g(d, "down", "MBps")
    drtt, dconc = g(d, "rtt", "p50_us"), g(d, "concurrent", "seconds")
    dconn = g(d, "connect", "per_s")
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    which = subprocess.run(
        [sys.executable, "-c", "import aiowstunnel as a, websockets as w; "
         "print(a.__version__, a.__file__.rsplit('/', 2)[0], 'websockets', w.__version__)"],
        capture_output=True, text=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    daemons = [
        f"{r['name']}: "
        + ", ".join(f"{role} on {loop}" for role, loop in r["event_loops"].items())
        + f" (`{r.get('runtime')}`)"
        for r in results
        if r.get("event_loops")
    ]
    lines = [
        f"# aiowstunnel benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"aiowstunnel {which}.",
        "",
        *([f"Event loops: {'; '.join(daemons)}.", ""] if daemons else []),
        f"`{' '.join(argv)}` -- {platform.platform()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}; client, backend and tunnels share the cores. "
        f"bulk {cfg.bulk // MiB} MiB x {cfg.runs} runs per direction (median), rtt {cfg.rtt} "
        f"x 64 B, {cfg.conc} x {cfg.conc_bytes // 1024} KiB echo, {cfg.connects} connects, "
        f"{cfg.idle} idle streams. Took {elapsed / 60:.1f} min.",
        "",
        f"| setup | up MB/s | x {base} | down MB/s | x {base} | rtt p50 us | rtt p99 us "
        f"| p50 x {base} | {cfg.conc}x{cfg.conc_bytes // 1024}KiB s | errors | x {base} "
        f"| conn/s | x {base} | {cfg.idle} idle: peak RSS MB | KiB/stream | idle errors "
        "| CPU s/GiB up | CPU s/GiB down | peak RSS MB under load |",
        "|---" * 19 + "|",
    ]
    for r in results:
        sc = r["scenarios"]
        if not sc:
            lines.append(f"| {r['name']} | {r['status']} |" + " |" * 17)
            continue
        up, down = g(sc, "up", "MBps"), g(sc, "down", "MBps")
        rtt, conc, conn = sc.get("rtt", {}), sc.get("concurrent", {}), sc.get("connect", {})
        idle = sc.get("idle", {})
        tunnel = r["name"] != "direct"

        def capped(k, sc=sc):
            return " capped" if g(sc, k, "capped") else ""

        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"],
                    (_f(up) + capped("up")) if up else ("err" if "up" in sc else "-"),
                    _ratio(up, dup),
                    (_f(down) + capped("down")) if down else ("err" if "down" in sc else "-"),
                    _ratio(down, ddown),
                    _f(rtt.get("p50_us")),
                    _f(rtt.get("p99_us")),
                    _ratio(rtt.get("p50_us"), drtt, 1),
                    _f(conc.get("seconds")) if "seconds" in conc else ("err" if conc else "-"),
                    str(conc.get("errors", "-")),
                    _ratio(conc.get("seconds"), dconc, 1),
                    _f(conn.get("per_s")) if "per_s" in conn else ("err" if conn else "-"),
                    _ratio(conn.get("per_s"), dconn),
                    _f(idle.get("peak_hwm_MB"), 1) if tunnel and idle else "-",
                    _f(idle.get("KiB_per_stream"), 1) if tunnel and idle else "-",
                    str(idle.get("errors", "-")) if idle else "-",
                    _f(g(sc, "up", "cpu_s_per_GiB")) if tunnel else "-",
                    _f(g(sc, "down", "cpu_s_per_GiB")) if tunnel else "-",
                    _f(r.get("load_peak_hwm_MB"), 1) if tunnel else "-",
                ]
            )
            + " |"
        )
    lines += ["", "Status:", ""]
    for r in results:
        extra = []
        for k, v in r["scenarios"].items():
            err = v.get("error") or v.get("first_error")
            if err:
                extra.append(f"{k}: {err}")
        if r.get("log_error_lines"):
            extra.append(f"{r['log_error_lines']} ERROR/Traceback lines in its logs")
        rtt = r["scenarios"].get("rtt", {})
        if rtt.get("runs_p50_us"):
            extra.append(f"rtt p50 per run {rtt['runs_p50_us']}")
        idle = r["scenarios"].get("idle", {})
        if idle.get("ok") is not None:
            extra.append(
                f"idle: {idle['ok']} open in {idle['open_seconds']:.1f} s, base RSS "
                f"{idle['base_rss_MB']:.1f} MB, RSS with all open {idle['rss_open_MB']:.1f} MB, "
                f"{idle.get('alive_sampled')} of a 1% sample still echo after the hold"
            )
        tail = ("; " + "; ".join(extra)) if extra else ""
        lines.append(f"- **{r['name']}** ({r['description']}): {r['status']}{tail}")
    lines += [
        "",
        f"MB = 10^6 bytes. x {base}: throughput and conn/s as a fraction of {base}"
        + (
            " (socat2, two chained socat relays: the plain-TCP shape of a two-ended tunnel)"
            if floor
            else ""
        )
        + f", rtt and 200x1MiB time as a multiple of {base}. "
        "peak RSS = sum of VmHWM of the tunnel's processes (fresh processes, idle test "
        "only); KiB/stream = (sum VmRSS with all "
        "streams open - before) / streams. CPU s/GiB = utime+stime of the tunnel's processes "
        "per GiB of bulk. peak RSS under load = the same sum of VmHWM over the up, down, rtt, "
        "concurrent and connect scenarios (restarted processes). socat forks a process per "
        "connection, so it is not given the idle test.",
    ]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------

SCENARIOS = ["idle", "up", "down", "rtt", "concurrent", "connect"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["backend"]:
        cmd_backend(int(argv[argv.index("--port") + 1]))
        return 0
    if argv[:1] == ["client"]:
        p = argparse.ArgumentParser(prog="run.py client")
        p.add_argument("client")
        p.add_argument("scenario", choices=SCENARIOS)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--bytes", type=int, default=MiB)
        p.add_argument("--count", type=int, default=1000)
        p.add_argument("--limit", type=float, default=60)
        p.add_argument("--hold", type=float, default=3)
        args = p.parse_args(argv)
        if not PORT_MIN <= args.port <= PORT_MAX:
            raise SystemExit("port outside 20000-29999")
        cmd_client(args)
        return 0

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1 minute smoke version")
    p.add_argument("--setups", help="comma-separated (default: all available); direct is added")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--asyncio", action="store_true", help="add the connect-asyncio setup")
    p.add_argument("--bulk-mib", type=int)
    p.add_argument("--runs", type=int, help="bulk and rtt runs (median)")
    p.add_argument("--rtt-count", type=int)
    p.add_argument("--conc", type=int, default=200)
    p.add_argument("--conc-kib", type=int)
    p.add_argument("--connects", type=int)
    p.add_argument("--idle", type=int, help="idle streams (default 10000)")
    p.add_argument("--port-base", type=int, default=23000)
    p.add_argument("--out", type=Path, help="markdown report (default benchmarks/results/)")
    p.add_argument("--profile", type=Path, help="py-spy raw profiles per scenario into DIR")
    p.add_argument("--profile-rate", type=int, default=250)
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (slower)")
    p.add_argument("--label", default="", help="suffix for the aiowstunnel setups' names")
    p.add_argument("--window", type=int, help="flow-control window of the aiowstunnel daemons")
    a = p.parse_args(argv)
    q = a.quick
    cfg = argparse.Namespace(
        bulk=(a.bulk_mib or (128 if q else 1024)) * MiB,
        runs=a.runs or (1 if q else 3),
        rtt=a.rtt_count or (1000 if q else 5000),
        conc=a.conc,
        conc_bytes=(a.conc_kib or (256 if q else 1024)) * 1024,
        connects=a.connects or (300 if q else 2000),
        idle=a.idle or (2000 if q else 10000),
        hold=2 if q else 3,
        scenarios=[s for s in a.scenarios.split(",") if s],
    )
    bad = [s for s in cfg.scenarios if s not in SCENARIOS]
    if bad:
        raise SystemExit(f"unknown scenario(s) {bad}; known {SCENARIOS}")
    setups = all_setups()
    names = [s.name for s in setups]
    if a.setups:
        want = [w for w in a.setups.split(",") if w]
        unknown = [w for w in want if w not in names]
        if unknown:
            raise SystemExit(f"unknown setup(s) {unknown}; known {names}")
        if "direct" not in want:
            want.insert(0, "direct")
    else:
        optional = {"connect-python"} | (set() if a.asyncio else {"connect-asyncio"})
        want = [s.name for s in setups if s.name not in optional]
    if a.asyncio and "connect-asyncio" not in want:
        want.append("connect-asyncio")
    chosen = [next(s for s in setups if s.name == w) for w in want]
    if a.label:
        for s in chosen:
            if s.profile:
                s.name += f"[{a.label}]"

    global WINDOW
    WINDOW = a.window
    raise_nofile()
    ports = Ports(a.port_base)
    backend_port = ports.get()
    out = a.out or HERE / "results" / f"run-{datetime.date.today().isoformat()}.md"
    prof = Profiler(a.profile, a.profile_rate, a.profile_native)
    if a.profile and not prof.exe:
        log("--profile: py-spy not found (pip install py-spy); profiling off")
    t0 = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="aiowstunnel-bench-") as tmp:
        workroot = Path(tmp)
        backend = Proc(
            [sys.executable, str(Path(__file__).resolve()), "backend", "--port", str(backend_port)],
            workroot / "backend.log",
            workroot,
        )
        try:
            end = time.monotonic() + 15
            while not echo_probe(backend_port):
                if not backend.alive() or time.monotonic() > end:
                    raise SystemExit("backend did not start: " + backend.tail())
                time.sleep(0.1)
            log(f"backend pid {backend.pid} on port {backend_port}; setups {want}")
            for setup in chosen:
                results.append(measure(setup, cfg, ports, backend_port, workroot, prof))
        finally:
            stop_all([backend])
    text = report(results, cfg, ["benchmarks/run.py", *argv], time.monotonic() - t0)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps({"config": vars(cfg), "argv": argv, "results": results}, indent=1, default=str)
    )
    log(f"wrote {out} (+ .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
