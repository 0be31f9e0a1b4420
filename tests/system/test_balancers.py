"""Three server daemons behind a real HAProxy (and nginx), client daemons in front (issue 17).

Each server daemon runs in a network namespace of its own (netns.py), so all three bind a
LISTEN tunnel's port 2222, as three machines would. HAProxy runs the shipped
etc/haproxy/aiowstunnel.cfg, with only its addresses and check timings replaced. Two client
daemons on this host hold 30 CONNECT tunnels through HAProxy's one address, a CONNECT
tunnel that lists the three servers, and a LISTEN tunnel that lists them (HAProxy's TCP
frontend is in front of its three listeners). A bounded load of short sha256-checked
echoes runs through all of them while servers are stopped, restarted and killed.

The figures printed here are those in docs/operations.md (Several servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import random
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiowstunnel.addresses import Address

from ..helpers import FaultProxy, pattern_block
from .daemon_process import LOCAL, Daemon, wait_healthy
from .netns import Namespace, Namespaces, can_create

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "etc" / "haproxy" / "aiowstunnel.cfg"
SHIPPED_NGINX = ROOT / "etc" / "nginx" / "aiowstunnel.conf"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TUNNELS = 30
TOKEN = "token-c-" + "x" * 24
FAST = (
    "backoff = { initial = 0.05, max = 0.3, factor = 2.0 }\nping_interval = 1.0\nping_timeout = 1.0"
)
#: The checks of the shipped file run every 2 s; here every 200 ms (fall 2, rise 2), and
#: stop_grace is inter x fall with a margin, as the file says.
CHECK_INTER_MS = 200
STOP_GRACE = 2.0


def quiet_port() -> int:
    """A free port below the ephemeral range: quiet_port()'s (from port 0) are in it, where
    the many outgoing connections of this test (and of other processes) take ports too, so
    one of ~35 picked there is sometimes taken before its daemon binds it."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:  # free now, but one of ours until its daemon binds it
            continue
        with socket.socket() as probe:
            try:
                probe.bind((LOCAL, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port


_HANDED_OUT: set[int] = set()


def require() -> None:
    ok, why = can_create()
    if not ok:
        pytest.skip(why)
    if not os.path.exists(HAPROXY):
        pytest.skip("haproxy is not installed (scripts/apt-packages.txt installs it)")


# -- the pieces ---------------------------------------------------------------------------


def server_config(ns: Namespace, index: int, backend: Address) -> str:
    return f"""
[metrics]
listen = "{ns.address}:9100"

[log]
level = "debug"

[daemon]
shutdown_timeout = 3
stop_grace = {STOP_GRACE}

[server]
listen = "{ns.address}:9000"
name = "s{index + 1}"
ping_interval = 1.0
ping_timeout = 1.0

[[server.client]]
name = "c"
token_file = "tokens/c"
allow_connect = ["{backend}"]
allow_listen = ["0.0.0.0:2222"]
max_sessions = 100
"""


def client_config(metrics: int, tunnels: list[str]) -> str:
    return (
        f'[metrics]\nlisten = "{LOCAL}:{metrics}"\n\n[log]\nlevel = "debug"\n\n'
        "[daemon]\nshutdown_timeout = 2\n\n" + "".join(tunnels)
    )


def tunnel(name: str, mode: str, server: str, listen: str, connect: Address) -> str:
    return (
        f'\n[[tunnel]]\nname = "{name}"\nmode = "{mode}"\nserver = {server}\n'
        f'token_file = "tokens/c"\nlisten = "{listen}"\nconnect = "{connect}"\n{FAST}\n'
    )


def haproxy_config(folder: Path, spaces: list[Namespace], http: int, tcp: int) -> str:
    """The shipped file, on this test's addresses and check timings."""
    text = SHIPPED.read_text()
    text = text.replace("log /dev/log local0", "log stderr local0 warning")
    text = text.replace("/run/haproxy/aiowstunnel.sock", str(folder / "haproxy.sock"))
    text = re.sub(r"bind :443 .*", f"bind {LOCAL}:{http}", text)
    text = text.replace("bind :2222", f"bind {LOCAL}:{tcp}")
    text = text.replace("inter 2s", f"inter {CHECK_INTER_MS}ms")
    for i, ns in enumerate(spaces):
        text = text.replace(f"10.0.0.{i + 1}:", f"{ns.address}:")
    assert "10.0.0." not in text
    return text


class HAProxy:
    def __init__(self, folder: Path, config: str) -> None:
        self.folder = folder
        self.path = folder / "haproxy.cfg"
        self.path.write_text(config)
        self.socket = folder / "haproxy.sock"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log = open(self.folder / "haproxy.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = await asyncio.create_subprocess_exec(
            HAPROXY, "-db", "-f", str(self.path), stdout=self.log, stderr=self.log
        )

    def command(self, line: str) -> str:
        """One command on the stats socket (level admin), its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(line.encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode()

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """`show stat` on the stats socket: (proxy, server) -> its CSV row."""
        text = self.command("show stat").lstrip("# ")
        return {(r["pxname"], r["svname"]): r for r in csv.DictReader(io.StringIO(text))}

    async def wait_state(self, backend: str, server: str, state: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                row = (await asyncio.to_thread(self.stats)).get((backend, server))
                if row is not None and row["status"] == state:
                    return row
            assert time.monotonic() < deadline, f"{backend}/{server} never {state}"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)
        if hasattr(self, "log"):
            self.log.close()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, body = http_get(url)
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@dataclass
class Cluster:
    spaces: list[Namespace]
    servers: list[Daemon]
    clients: list[Daemon]
    haproxy: HAProxy
    http_port: int  # HAProxy's tunnel frontend
    tcp_port: int  # HAProxy's frontend for the LISTEN tunnel's three listeners
    entries: list[Address]  # the 30 tunnels' local ports
    spread_entry: Address  # the CONNECT tunnel that lists the three servers
    client_metrics: list[int]
    server_urls: list[str] = field(default_factory=list)
    far_port: int = 0  # the echo backend the servers dial

    def server_metrics(self, i: int) -> str:
        return f"http://{self.spaces[i].address}:9100"

    async def tunnel_server_up(self, tunnel: str, i: int) -> float | None:
        daemon = 0 if tunnel == "spread" else 1
        got = await asyncio.to_thread(
            samples, f"http://{LOCAL}:{self.client_metrics[daemon]}/metrics"
        )
        labels = (("server", self.server_urls[i]), ("tunnel", tunnel))
        return got.get(("aiowstunnel_tunnel_server_up", labels))

    async def back_in_full(self, i: int) -> None:
        """Server i serves again: both HAProxy backends see it UP, both listed tunnels
        have their session to it (the LISTEN one has bound its port there again)."""
        await self.haproxy.wait_state("aiowstunnel", f"s{i + 1}", "UP")
        await self.haproxy.wait_state("ssh_listeners", f"s{i + 1}", "UP")
        deadline = time.monotonic() + 15
        for name in ("spread", "ssh"):
            while await self.tunnel_server_up(name, i) != 1:
                assert time.monotonic() < deadline, f"{name} did not rejoin s{i + 1}"
                await asyncio.sleep(0.05)


async def echo_server(host: str) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(echo, host, 0, backlog=1024)


@dataclass
class Behind:
    """Three server daemons, each in its namespace, behind HAProxy on the shipped file."""

    spaces: list[Namespace]
    servers: list[Daemon]
    haproxy: HAProxy
    http_port: int  # HAProxy's tunnel frontend
    tcp_port: int  # HAProxy's frontend for a LISTEN tunnel's three listeners
    far: Address  # the echo backend the servers dial

    def server_metrics(self, i: int) -> str:
        return f"http://{self.spaces[i].address}:9100"


@contextlib.asynccontextmanager
async def behind_haproxy(tmp_path: Path):
    require()
    with Namespaces(3) as spaces:
        backend_far = await echo_server(spaces[0].host)  # what the servers dial
        far = Address(spaces[0].host, backend_far.sockets[0].getsockname()[1])
        servers, haproxy = [], None
        try:
            for i, ns in enumerate(spaces):
                folder = tmp_path / f"s{i + 1}"
                (folder / "tokens").mkdir(parents=True)
                (folder / "tokens" / "c").write_text(TOKEN)
                (folder / "tokens" / "c").chmod(0o600)
                daemon = Daemon(folder, server_config(ns, i, far), prefix=ns.exec())
                servers.append(daemon)
            await asyncio.gather(*(d.start() for d in servers))
            http, tcp = quiet_port(), quiet_port()
            haproxy = HAProxy(tmp_path, haproxy_config(tmp_path, spaces, http, tcp))
            await haproxy.start()
            for i in range(3):
                await haproxy.wait_state("aiowstunnel", f"s{i + 1}", "UP")
            yield Behind(spaces, servers, haproxy, http, tcp, far)
        finally:
            for d in servers:
                with contextlib.suppress(Exception):
                    await d.stop(10)
            if haproxy is not None:
                await haproxy.stop()
            backend_far.close()


def client_daemon(folder: Path, metrics: int, tunnels: list[str]) -> Daemon:
    (folder / "tokens").mkdir(parents=True)
    (folder / "tokens" / "c").write_text(TOKEN)
    (folder / "tokens" / "c").chmod(0o600)
    return Daemon(folder, client_config(metrics, tunnels))


@pytest.fixture
async def cluster(tmp_path):
    async with behind_haproxy(tmp_path) as behind:
        spaces, far = behind.spaces, behind.far
        backend_near = await echo_server(LOCAL)  # what the LISTEN tunnel's client dials
        near = Address(LOCAL, backend_near.sockets[0].getsockname()[1])
        clients = []
        try:
            urls = [f"ws://{ns.address}:9000/aiowstunnel" for ns in spaces]
            listed = "[" + ", ".join(f'"{u}"' for u in urls) + "]"
            one = f'"ws://{LOCAL}:{behind.http_port}/aiowstunnel"'
            ports = [quiet_port() for _ in range(TUNNELS + 1)]
            metrics = [quiet_port(), quiet_port()]
            halves = [range(0, TUNNELS // 2), range(TUNNELS // 2, TUNNELS)]
            extra = [
                tunnel("spread", "connect", listed, f"{LOCAL}:{ports[TUNNELS]}", far),
                tunnel("ssh", "listen", listed, "0.0.0.0:2222", near),
            ]
            for n, half in enumerate(halves):
                text = [tunnel(f"t{k}", "connect", one, f"{LOCAL}:{ports[k]}", far) for k in half]
                folder = tmp_path / f"client{n}"
                clients.append(client_daemon(folder, metrics[n], [*text, extra[n]]))
            await asyncio.gather(*(d.start() for d in clients))
            for port in metrics:
                await wait_up(f"http://{LOCAL}:{port}/healthz")
            c = Cluster(
                spaces,
                behind.servers,
                clients,
                behind.haproxy,
                behind.http_port,
                behind.tcp_port,
                [Address(LOCAL, p) for p in ports[:TUNNELS]],
                Address(LOCAL, ports[TUNNELS]),
                metrics,
                urls,
                far.port,
            )
            for i in range(3):
                await c.back_in_full(i)
            yield c
        finally:
            for d in clients:
                with contextlib.suppress(Exception):
                    await d.stop(10)
            backend_near.close()


async def wait_up(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (await asyncio.to_thread(http_get, url))[0] != 200:
        assert time.monotonic() < deadline, f"{url} never 200"
        await asyncio.sleep(0.05)


# -- the load -----------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    started: float
    ended: float
    ok: bool
    error: str = ""


class Load:
    """New connections at ``rate`` per second, each a short sha256-checked echo, spread
    over the kinds of entry; bounded in count (and each connection in time)."""

    def __init__(self, targets: dict[str, list[Address]], rate: float = 50.0) -> None:
        self.targets = targets
        self.rate = rate
        self.results: list[Result] = []
        self.stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def one(self, kind: str, address: Address) -> None:
        started = time.monotonic()
        payload = os.urandom(random.randint(1024, 16 * 1024))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port), 10
            )
            try:
                writer.write(payload)
                writer.write_eof()
                echoed = await asyncio.wait_for(reader.read(-1), 10)
            finally:
                writer.close()
            if hashlib.sha256(echoed).digest() != hashlib.sha256(payload).digest():
                raise AssertionError(f"corrupted: {len(echoed)} of {len(payload)} bytes back")
            self.results.append(Result(kind, started, time.monotonic(), True))
        except Exception as exc:  # every failure is a result to count, never a crash
            self.results.append(Result(kind, started, time.monotonic(), False, repr(exc)))

    async def run(self, limit: float = 90.0) -> None:
        kinds = list(self.targets)
        started = time.monotonic()
        n = 0
        while not self.stop.is_set() and time.monotonic() - started < limit:
            kind = kinds[n % len(kinds)]
            task = asyncio.create_task(self.one(kind, random.choice(self.targets[kind])))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
            # Paced against the clock: a slow moment does not lower the rate after it.
            await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))
        await asyncio.gather(*self._tasks)

    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def worst_gap(self, kinds: tuple[str, ...] | None = None) -> float:
        """The longest time between two successful connections' starts (of ``kinds``)."""
        starts = sorted(
            r.started for r in self.results if r.ok and (kinds is None or r.kind in kinds)
        )
        return max((b - a for a, b in itertools.pairwise(starts)), default=0.0)

    def worst_latency(self) -> float:
        return max((r.ended - r.started for r in self.results if r.ok), default=0.0)


def load_for(c: Cluster) -> Load:
    return Load(
        {
            "connect via haproxy": c.entries,
            "connect, 3 servers listed": [c.spread_entry],
            "listen via haproxy": [Address(LOCAL, c.tcp_port)],
        }
    )


async def upgrade(port: int, far: str, cookie: str | None = None) -> tuple[str, str]:
    """One tunnel upgrade through HAProxy: (the server's name, HAProxy's Set-Cookie)."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    head = (
        f"GET /aiowstunnel HTTP/1.1\r\nHost: tunnels\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: aiowstunnel.v1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nX-Aiowstunnel-Mode: connect\r\n"
        f"X-Aiowstunnel-Address: {far}\r\n" + (f"Cookie: {cookie}\r\n" if cookie else "") + "\r\n"
    )
    writer.write(head.encode())
    answer = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode().lower()
    writer.close()
    assert answer.startswith("http/1.1 101"), answer
    name = re.search(r"x-aiowstunnel-server: (\S+)", answer)
    set_cookie = re.search(r"set-cookie: ([^;\r]+)", answer)
    return (name.group(1) if name else ""), (set_cookie.group(1) if set_cookie else "")


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_thirty_tunnels_spread_evenly_and_haproxy_agrees(cluster: Cluster):
    stats = await asyncio.to_thread(cluster.haproxy.stats)
    haproxy_says = [int(stats[("aiowstunnel", f"s{i + 1}")]["scur"]) for i in range(3)]
    servers_say = []
    for i in range(3):
        got = await asyncio.to_thread(samples, f"{cluster.server_metrics(i)}/metrics")
        servers_say.append(
            sum(
                v
                for (name, labels), v in got.items()
                if name == "aiowstunnel_server_sessions_active"
                and dict(labels)["tunnel"].startswith("t")
            )
        )
    print(f"\n30 tunnels through HAProxy: servers {servers_say}, HAProxy scur {haproxy_says}")
    assert sum(servers_say) == TUNNELS
    assert servers_say == haproxy_says
    assert all(7 <= n <= 13 for n in servers_say)  # within 30 % of 10
    # Each session's 101 named its server and carried HAProxy's cookie for it.
    status, body = await asyncio.to_thread(
        http_get, f"http://{LOCAL}:{cluster.client_metrics[0]}/healthz"
    )
    health = json.loads(body)
    names = {s["name"] for t in health["servers"].values() for s in t.values()}
    assert status == 200 and names <= {"s1", "s2", "s3"} and len(names) == 3
    # What a resume needs: a fresh upgrade gets HAProxy's cookie naming the server that took
    # it, and an upgrade that sends that cookie back lands on that server, every time.
    far = f"{cluster.spaces[0].host}:{cluster.far_port}"
    for _ in range(3):
        name, cookie = await upgrade(cluster.http_port, far)
        assert cookie == f"srv={name}", (name, cookie)  # (the answer is read lower-cased)
        for _ in range(3):
            again, _ = await upgrade(cluster.http_port, far, f"SRV={name}")
            assert again == name
    # and the spread tunnel's streams go to each listed server
    for _ in range(9):
        reader, writer = await asyncio.open_connection(
            cluster.spread_entry.host, cluster.spread_entry.port
        )
        writer.write(b"ping")
        writer.write_eof()
        assert await reader.read() == b"ping"
        writer.close()


@pytest.mark.timeout(180)
async def test_rolling_restart_under_load_fails_no_connection(cluster: Cluster):
    load = load_for(cluster)
    running = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(1.0)
        timings = []
        for i, server in enumerate(cluster.servers):
            t0 = time.monotonic()
            assert server.proc is not None
            server.proc.send_signal(15)
            # First the health check fails (HAProxy stops sending), while it still serves.
            deadline = time.monotonic() + STOP_GRACE
            while True:
                status, body = await asyncio.to_thread(
                    http_get, f"{cluster.server_metrics(i)}/healthz"
                )
                if status == 503:
                    break
                assert time.monotonic() < deadline, "healthz did not fail at SIGTERM"
            assert json.loads(body)["stopping"] is True
            await cluster.haproxy.wait_state(
                "aiowstunnel", f"s{i + 1}", "DOWN", timeout=STOP_GRACE + 1
            )
            # The listeners' backend too, before stop_grace ends and the listener closes: it
            # checks /healthz beside the port, so no connection is left in the listener's
            # accept queue to be reset at the close (a TCP check alone sees it only then).
            left = t0 + STOP_GRACE - time.monotonic()
            await cluster.haproxy.wait_state("ssh_listeners", f"s{i + 1}", "DOWN", timeout=left)
            assert await server.stop(15) == 0
            exited = time.monotonic() - t0
            await server.restart()
            await cluster.back_in_full(i)
            timings.append((exited, time.monotonic() - t0))
            assert (
                "0 reset at the drain timeout" in server.log_text()
                or "no stream was open" in server.log_text()
            )
        await asyncio.sleep(0.5)
    finally:
        load.stop.set()
        await running
    failed = load.failed()
    total = len(load.results)
    print(
        f"\nrolling restart of 3 servers: {total} connections, {len(failed)} failed, "
        f"each server exited {', '.join(f'{e:.2f}' for e, _ in timings)} s after SIGTERM and "
        f"served again {', '.join(f'{b:.2f}' for _, b in timings)} s after it; worst gap "
        f"{load.worst_gap() * 1000:.0f} ms, worst echo {load.worst_latency() * 1000:.0f} ms"
    )
    if failed:  # what the daemons said about resets and refusals, for whoever reads the run
        for daemon in cluster.clients + cluster.servers:
            for line in daemon.log_text().splitlines():
                if any(word in line for word in ("reset", "refused", "moved", "held")):
                    print(f"{daemon.log_path.parent.name}: {line[:300]}")
    assert not failed, failed[:5]
    assert total > 200


@pytest.mark.timeout(180)
async def test_one_server_killed_only_its_streams_fail_and_it_rejoins(cluster: Cluster):
    # The LISTEN tunnel is bound on all three servers.
    for ns in cluster.spaces:
        reader, writer = await asyncio.open_connection(ns.address, 2222)
        writer.write(b"bound")
        writer.write_eof()
        assert await reader.read() == b"bound"
        writer.close()
    load = load_for(cluster)
    running = asyncio.create_task(load.run())
    victim = cluster.servers[1]
    try:
        await asyncio.sleep(1.5)
        killed_at = time.monotonic()
        assert victim.proc is not None
        victim.proc.kill()
        await victim.proc.wait()
        await asyncio.sleep(2.0)  # the others serve meanwhile
        await victim.restart()
        await cluster.back_in_full(1)
        back_at = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        load.stop.set()
        await running
    failed = load.failed()
    after = [r for r in load.results if r.started > killed_at]
    late = [r for r in failed if r.started > killed_at + 0.2]
    gap = load.worst_gap()
    last = max((r.started - killed_at for r in failed), default=0.0)
    print(
        f"\none server SIGKILLed: {len(load.results)} connections, {len(failed)} failed "
        f"(streams it carried, started <= {last * 1000:.0f} ms "
        f"after the kill), {len(after)} after it; worst gap {gap * 1000:.0f} ms "
        f"(connect via HAProxy {load.worst_gap(('connect via haproxy',)) * 1000:.0f} ms, "
        f"3 servers listed {load.worst_gap(('connect, 3 servers listed',)) * 1000:.0f} ms, "
        f"listen via HAProxy {load.worst_gap(('listen via haproxy',)) * 1000:.0f} ms); "
        f"back in {back_at - killed_at - 2.0:.2f} s after its restart"
    )
    assert not late, late[:5]
    assert len(failed) <= 10  # at most what was in flight on it: ~50/s x a few ms each
    assert all(r.ok for r in after if r.started > killed_at + 0.2)
    # It binds the LISTEN tunnel's port again, and HAProxy serves it there.
    reader, writer = await asyncio.open_connection(cluster.spaces[1].address, 2222)
    writer.write(b"again")
    writer.write_eof()
    assert await reader.read() == b"again"
    writer.close()


NGINX_MAIN = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp; uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    include {dir}/aiowstunnel.conf;
}}
"""


@pytest.mark.timeout(120)
async def test_nginx_spreads_routes_the_cookie_back_and_skips_a_stopping_server(
    cluster: Cluster, tmp_path: Path
):
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (scripts/apt-packages.txt installs nginx-light)")
    folder = tmp_path / "nginx"
    (folder / "tmp").mkdir(parents=True, mode=0o777)
    port = quiet_port()
    text = SHIPPED_NGINX.read_text()
    text = text.replace("listen 443 ssl;", f"listen {LOCAL}:{port};")
    text = re.sub(r"\n\s*ssl_certificate(_key)? .*;", "", text)
    for i, ns in enumerate(cluster.spaces):
        text = text.replace(f"10.0.0.{i + 1}:", f"{ns.address}:")
    assert "10.0.0." not in text and "ssl" not in text.split("server {", 1)[1]
    (folder / "aiowstunnel.conf").write_text(text)
    (folder / "nginx.conf").write_text(NGINX_MAIN.format(dir=folder))
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-c", str(folder / "nginx.conf"), "-p", str(folder), stderr=asyncio.subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # nginx has no readiness signal: its port accepting is the event
            try:
                _, writer = await asyncio.open_connection(LOCAL, port)
                writer.close()
                break
            except OSError:
                assert proc.returncode is None, "nginx exited"
                assert time.monotonic() < deadline, "nginx did not start"
                await asyncio.sleep(0.05)
        far = f"{cluster.spaces[0].host}:{cluster.far_port}"
        fresh = [await upgrade(port, far) for _ in range(6)]
        assert {name for name, _ in fresh} == {"s1", "s2", "s3"}  # least_conn, in turn
        assert all(cookie == f"srv={name}" for name, cookie in fresh), fresh
        for name in ("s1", "s2", "s3"):  # the cookie routes back to its server
            assert [(await upgrade(port, far, f"SRV={name}"))[0] for _ in range(3)] == [name] * 3

        # s1 stops: every upgrade through nginx meanwhile succeeds (never a refusal seen).
        stopping = cluster.servers[0]
        assert stopping.proc is not None
        stopping.proc.send_signal(15)
        tried = 0
        while stopping.proc.returncode is None:
            await upgrade(port, far)  # asserts the 101
            tried += 1
            await asyncio.sleep(0.05)
        assert tried >= 10
        assert await stopping.stop(5) == 0
        await stopping.restart()
        await cluster.back_in_full(0)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


# -- resumption through HAProxy -----------------------------------------------------------


def value(got: dict, name: str, **labels: str) -> float:
    return got.get((name, tuple(sorted(labels.items()))), 0.0)


async def cut_client(tmp_path: Path, behind: Behind) -> tuple[FaultProxy, Daemon, int, Address]:
    """A client daemon whose one CONNECT tunnel ("cut", resumption on by default) reaches
    HAProxy through a fault proxy that cuts with RST: its metrics port and local entry."""
    proxy = await FaultProxy(behind.http_port).start()
    entry, metrics = quiet_port(), quiet_port()
    url = f'"ws://{LOCAL}:{proxy.port}/aiowstunnel"'
    cut = tunnel("cut", "connect", url, f"{LOCAL}:{entry}", behind.far)
    client = client_daemon(tmp_path / "client", metrics, [cut])
    await client.start()
    return proxy, client, metrics, Address(LOCAL, entry)


async def holder(metrics: int) -> str:
    """The server the tunnel's session is on, as its 101 named it."""
    health = await wait_healthy(metrics, timeout=20)
    (session,) = health["servers"]["cut"].values()
    assert session["state"] == "up"
    return session["name"]


async def server_samples(behind: Behind) -> list[dict]:
    return [
        await asyncio.to_thread(samples, f"{behind.server_metrics(i)}/metrics") for i in range(3)
    ]


def resumes(got: dict) -> float:
    """Resume requests a server answered, whatever the answer."""
    return sum(v for (name, _), v in got.items() if name == "aiowstunnel_server_resumes_total")


def haproxy_set(behind: Behind, server: str, state: str) -> str:
    return behind.haproxy.command(f"set server aiowstunnel/{server} state {state}")


async def until_resumed(metrics: int, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{LOCAL}:{metrics}/metrics"
    while value(await asyncio.to_thread(samples, url), "aiowstunnel_resumes_total",
                tunnel="cut", result="ok") < count:  # fmt: skip
        assert time.monotonic() < deadline, f"resume {count} not seen"
        await asyncio.sleep(0.02)


async def echoes_across_cuts(
    entry: Address, proxy: FaultProxy, metrics: int, streams: int, each: int, cuts: int
) -> tuple[list[tuple[str, str]], list[float]]:
    """``streams`` echo streams of ``each`` bytes at once; each time another 1/(cuts + 1)
    of all the bytes came back, the path is cut with RST and the next cut waits for the
    resume. Returns (sent, received) sha256 per stream, and each cut's time to resumed."""
    total = streams * each
    marks = [total * (k + 1) // (cuts + 1) for k in range(cuts)]
    received = 0
    progressed = asyncio.Event()
    resumed_in: list[float] = []

    async def one() -> tuple[str, str]:
        nonlocal received
        reader, writer = await asyncio.open_connection(entry.host, entry.port, limit=1 << 20)
        seed = os.urandom(64 * 1024)
        sent, got = hashlib.sha256(), hashlib.sha256()

        async def send() -> None:
            for index in range(each // len(seed)):
                chunk = pattern_block(index, len(seed), seed)
                sent.update(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        while data := await reader.read(1 << 20):
            got.update(data)
            received += len(data)
            progressed.set()
        await sender
        writer.close()
        return sent.hexdigest(), got.hexdigest()

    async def cutter() -> None:
        for n, mark in enumerate(marks, 1):
            while received < mark:
                progressed.clear()
                await progressed.wait()
            cut_at = time.monotonic()
            assert proxy.cut() == 1  # the tunnel's one connection, both sides
            await until_resumed(metrics, n)
            resumed_in.append(time.monotonic() - cut_at)

    echoes = asyncio.gather(*(one() for _ in range(streams)))
    await asyncio.gather(cutter(), echoes)
    return echoes.result(), resumed_in


@pytest.mark.timeout(120)
async def test_a_cut_before_haproxy_resumes_on_the_sessions_own_server(tmp_path: Path):
    """The client -> HAProxy connection is cut (RST both ways) three times while four
    streams echo 8 MiB each: each resume carries HAProxy's cookie and lands on the server
    that holds the session; every stream is intact; no fresh session was needed."""
    async with behind_haproxy(tmp_path) as behind:
        proxy, client, metrics, entry = await cut_client(tmp_path, behind)
        try:
            name = await holder(metrics)
            own = int(name[1:]) - 1
            before = await server_samples(behind)
            digests, resumed_in = await echoes_across_cuts(
                entry, proxy, metrics, streams=4, each=8 << 20, cuts=3
            )
            assert all(sent == got for sent, got in digests)
            assert await holder(metrics) == name  # the same session, on the same server
            got = await asyncio.to_thread(samples, f"http://{LOCAL}:{metrics}/metrics")
            assert value(got, "aiowstunnel_tunnel_connects_total", tunnel="cut") == 1
            assert value(got, "aiowstunnel_resumes_total", tunnel="cut", result="ok") == 3
            resets = [k for k, v in got.items() if k[0] == "aiowstunnel_streams_reset_total" and v]
            assert resets == []
            after = await server_samples(behind)
            asked = [resumes(after[i]) - resumes(before[i]) for i in range(3)]
            assert asked == [3 if i == own else 0 for i in range(3)]  # all ok, all on its own
            assert value(after[own], "aiowstunnel_server_resumes_total", result="ok") == 3
            print(
                f"\nresumed through HAProxy on {name}: 4 x 8 MiB echoed intact across 3 RST "
                f"cuts; cut to resumed {', '.join(f'{t * 1000:.0f}' for t in resumed_in)} ms"
            )
        finally:
            await client.stop(10)
            proxy.close()


@pytest.mark.timeout(120)
async def test_a_resume_that_reaches_another_server_is_refused_and_a_fresh_session_serves(
    tmp_path: Path,
):
    """The session's server is in maintenance on HAProxy when the cut comes: the resume,
    its cookie ignored, reaches another server, which refuses it (unknown_session); the
    client resets the session's stream with that reason and opens a fresh session at once,
    and a new connection works."""
    async with behind_haproxy(tmp_path) as behind:
        proxy, client, metrics, entry = await cut_client(tmp_path, behind)
        try:
            name = await holder(metrics)
            own = int(name[1:]) - 1
            reader, writer = await asyncio.open_connection(entry.host, entry.port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"  # a stream open across the cut
            before = await server_samples(behind)
            await asyncio.to_thread(haproxy_set, behind, name, "maint")
            await behind.haproxy.wait_state("aiowstunnel", name, "MAINT")
            cut_at = time.monotonic()
            assert proxy.cut() == 1
            with pytest.raises(ConnectionResetError):  # reset (RST), never a clean EOF
                await asyncio.wait_for(reader.read(), 20)
            reset_in = time.monotonic() - cut_at
            writer.close()
            payload = os.urandom(64 * 1024)  # held for the fresh session, not refused
            r2, w2 = await asyncio.open_connection(entry.host, entry.port)
            w2.write(payload)
            w2.write_eof()
            echoed = await asyncio.wait_for(r2.read(), 20)
            served_in = time.monotonic() - cut_at
            w2.close()
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            fresh = await holder(metrics)
            assert fresh != name
            got = await asyncio.to_thread(samples, f"http://{LOCAL}:{metrics}/metrics")
            assert value(got, "aiowstunnel_resumes_total", tunnel="cut",
                         result="unknown_session") == 1  # fmt: skip
            assert value(got, "aiowstunnel_streams_reset_total", tunnel="cut",
                         reason="resume_refused") == 1  # fmt: skip
            assert value(got, "aiowstunnel_tunnel_connects_total", tunnel="cut") == 2
            after = await server_samples(behind)
            refused = [
                value(after[i], "aiowstunnel_server_resumes_total", result="unknown_session")
                - value(before[i], "aiowstunnel_server_resumes_total", result="unknown_session")
                for i in range(3)
            ]
            assert refused[own] == 0 and sum(refused) == 1  # another server said it
            assert "refused to resume the session (unknown_session" in client.log_text()
            print(
                f"\nresume sent to another server than {name}: refused (unknown_session); the "
                f"stream reset {reset_in * 1000:.0f} ms after the cut, a new connection "
                f"served by {fresh} {served_in * 1000:.0f} ms after it"
            )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    behind.haproxy.command, f"set server aiowstunnel/{name} state ready"
                )
            await client.stop(10)
            proxy.close()
