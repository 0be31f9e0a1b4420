"""Issue 11: floods against the real daemon (`python -m aiowstunnel run`), measured from
outside, while a legitimate client on the same server moves 4 MiB intact (by digest).

Each flood prints the legitimate transfer's time without and during it (`pytest -s`);
docs/reliability.md has the figures. Attackers come from 127.0.0.2-11, the legitimate
client from 127.0.0.1. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

import aiowstunnel
from aiowstunnel import wire

from ..attackers import RawSession, binary_frame, ping_frame
from ..helpers import FAST_BACKOFF, echo_roundtrip, proc_memory, start_backend
from .daemon_process import LOCAL, Daemon, free_port, scrape

MiB = 1024 * 1024
LEGIT, ABUSER = "legit-token-0123456789", "abuser-token-0123456789"
SOURCES = [f"127.0.0.{i}" for i in range(2, 12)]


def config(server: int, metrics: int, echo: int, extra: str = "") -> str:
    return f"""
[metrics]
listen = "{LOCAL}:{metrics}"

[daemon]
shutdown_timeout = 2.0

[server]
listen = "{LOCAL}:{server}"
handshake_timeout = 3.0
ping_interval = 2.0
ping_timeout = 2.0
{extra}
[[server.client]]
name = "legit"
token_file = "legit.token"
allow_connect = ["{LOCAL}:{echo}"]

[[server.client]]
name = "abuser"
token_file = "abuser.token"
allow_connect = ["{LOCAL}:{echo}", "{LOCAL}:1"]
max_sessions = 64
"""


class Setup:
    """A server daemon, an echo backend, and a legitimate tunnel client into it."""

    def __init__(self, tmp: Path, extra: str = "", open_files: int | None = None) -> None:
        self.tmp = tmp
        self.extra = extra
        self.open_files = open_files
        self.clients: list[aiowstunnel.Client] = []

    async def __aenter__(self) -> Setup:
        self.backend = await start_backend()
        self.port, self.metrics = free_port(), free_port()
        for name, token in (("legit", LEGIT), ("abuser", ABUSER)):
            path = self.tmp / f"{name}.token"
            path.write_text(token + "\n")
            path.chmod(0o600)
        text = config(self.port, self.metrics, self.backend.port, self.extra)
        self.daemon = Daemon(self.tmp, text, open_files=self.open_files)
        await self.daemon.start()
        # Read what the daemon notifies, as systemd does: STATUS= changes every second
        # under abuse, and an unread socket would fill and block the daemon's sd_notify.
        self._notified = asyncio.create_task(self._read_notifications())
        self.legit = await self.client(LEGIT)
        return self

    async def _read_notifications(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await self.daemon.notify.next(timeout=3600)

    async def client(self, token: str) -> aiowstunnel.Client:
        client = aiowstunnel.Client(
            aiowstunnel.CONNECT, LOCAL, self.port, LOCAL, 0, LOCAL, self.backend.port,
            token=token, backoff=FAST_BACKOFF,
        )  # fmt: skip
        client.start()
        self.clients.append(client)
        await client.wait_up(10)
        return client

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.close(1)
        self._notified.cancel()
        await self.daemon.stop()
        self.backend.server.close()

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def rss(self) -> int:
        return proc_memory(self.pid)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def warnings(self) -> int:
        return sum(" WARNING " in line for line in self.daemon.log_text().splitlines())

    async def transfer(self, client: aiowstunnel.Client | None = None) -> float:
        """4 MiB echoed through the legitimate tunnel, digest checked; returns seconds."""
        entry = (client or self.legit).listen_address
        assert entry is not None
        started = time.monotonic()
        sent, received = await echo_roundtrip(entry, 4 * MiB)
        assert sent == received
        return time.monotonic() - started

    async def limit_hits(self) -> dict[str, float]:
        samples = await asyncio.to_thread(scrape, self.metrics)
        return {
            dict(labels)["limit"]: value
            for (name, labels), value in samples.items()
            if name == "aiowstunnel_limit_hits_total"
        }


async def during(flood, setup: Setup, started: asyncio.Event) -> tuple[float, object]:
    """Run ``flood`` (given ``started`` to set); once it is going, time a transfer."""
    task = asyncio.ensure_future(flood)
    await asyncio.wait_for(started.wait(), 20)
    took = await setup.transfer()
    return took, await task


def report(what: str, quiet: float, loud: float, **figures: object) -> None:
    extra = ", ".join(f"{k} {v}" for k, v in figures.items())
    print(f"\n{what}: 4 MiB in {quiet:.3f} s alone, {loud:.3f} s during the flood; {extra}")


@pytest.mark.timeout(120)
async def test_pre_auth_header_flood_is_bounded(tmp_path: Path):
    # Finding 1: 1,000 connections sending ~1 MiB of headers each and never finishing
    # took the server from 29 to 1,153 MiB. Now each is cut at 16 KiB (431) or refused.
    async with Setup(tmp_path) as s:
        quiet = await s.transfer()
        before = proc_memory(s.pid, "VmHWM")
        header = b"X-Pad: " + b"a" * 8100 + b"\r\n"  # ~8 KiB lines (websockets: 8,192 max)
        started = asyncio.Event()
        opened = 0

        async def one(source: str) -> None:
            nonlocal opened
            try:
                _, writer = await asyncio.open_connection(LOCAL, s.port, local_addr=(source, 0))
            except OSError:
                return
            opened += 1
            if opened >= 300:
                started.set()
            try:
                writer.write(b"GET /aiowstunnel HTTP/1.1\r\nHost: x\r\n")
                for _ in range(126):
                    writer.write(header)
                    await asyncio.wait_for(writer.drain(), 2)
                await asyncio.sleep(1)  # never finished: held until the server cuts it
            except (OSError, asyncio.TimeoutError):
                pass
            finally:
                writer.transport.abort()

        flood = asyncio.gather(*(one(SOURCES[i % 10]) for i in range(1000)))
        loud, _ = await during(flood, s, started)
        peak = proc_memory(s.pid, "VmHWM") - before
        hits = await s.limit_hits()
        report(
            "pre-auth header flood (1,000 connections)", quiet, loud,
            peak_growth=f"{peak / MiB:.1f} MiB", hits=hits,
        )  # fmt: skip
        assert peak < 48 * MiB  # was +1,124 MiB
        assert hits["handshake_bytes"] + hits["handshakes_per_address"] > 0
        assert s.legit.up


@pytest.mark.timeout(120)
async def test_client_that_never_reads_cannot_make_the_server_queue(tmp_path: Path):
    # Finding 3: a client flooding pings and never reading: +382 MiB for 400 MiB sent.
    async with Setup(tmp_path) as s:
        quiet = await s.transfer()
        before = s.rss()
        attackers = [
            await RawSession.open(s.port, ABUSER, address=f"{LOCAL}:{s.backend.port}", source=src)
            for src in SOURCES[:4]
        ]
        started = asyncio.Event()

        async def flood() -> list[int]:
            chunk = ping_frame() * 1024  # 131 KiB of pings per write
            pushes = [a.push(chunk, 100 * MiB, stall=1.0) for a in attackers]
            started.set()
            return await asyncio.gather(*pushes)

        loud, pushed = await during(flood(), s, started)
        growth = s.rss() - before
        report(
            "4 clients pinging, never reading", quiet, loud,
            pushed_MiB=[round(p / MiB, 1) for p in pushed], rss_growth=f"{growth / MiB:.1f} MiB",
        )  # fmt: skip
        assert all(p < 40 * MiB for p in pushed), pushed  # reading stopped: the socket filled
        assert growth < 24 * MiB
        for attacker in attackers:
            attacker.close()
        assert s.legit.up


@pytest.mark.timeout(120)
async def test_log_flood_of_violations_costs_a_few_lines(tmp_path: Path):
    # Finding 4: 20,000 WINDOW frames for unknown streams wrote 20,003 WARNING lines, and
    # another client's 1 MiB took 7 s. Now: 3 lines per session, 1002 after 100.
    async with Setup(tmp_path) as s:
        quiet = await s.transfer()
        lines_before = s.warnings()
        window = b"".join(
            binary_frame(wire.WindowUpdate(2 * i + 1001, 1).serialize()) for i in range(20_000)
        )
        started = asyncio.Event()
        sessions = 0

        async def flood() -> None:
            nonlocal sessions
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and sessions < 200:  # bounded: count and time
                src = SOURCES[sessions % 10]
                attacker = await RawSession.open(s.port, ABUSER, address=f"{LOCAL}:1", source=src)
                sessions += 1
                started.set()
                await attacker.push(window, len(window), stall=0.5)
                await attacker.frames(0.2)
                attacker.close()

        loud, _ = await during(flood(), s, started)
        await asyncio.sleep(0.3)
        lines = s.warnings() - lines_before
        hits = await s.limit_hits() if lines <= 30 else {"violations": 0}
        report(
            f"violation flood ({sessions} sessions x 20,000 WINDOW frames)", quiet, loud,
            warning_lines=lines, violation_closes=hits["violations"],
        )  # fmt: skip
        assert lines <= 30, lines  # was 20,003 for one session
        assert hits["violations"] >= sessions - 1
        assert loud < 5.0  # was 7 s for 1 MiB; a bound on stalls, not a speed test
        assert s.legit.up


@pytest.mark.timeout(180)
async def test_at_the_fd_limit_an_abuser_fills_its_quota_and_others_are_unaffected(
    tmp_path: Path,
):
    # Finding 2, at RLIMIT_NOFILE 1024 (the kernel default the daemon once ran with; the
    # unit now sets 16384, and the derived limits scale with it): 1,005 streams from one
    # client, 1,100 idle upgrades and 1,500 idle connections to the metrics port at once.
    # Before, another client's tunnel got "Too many open files" and /healthz was reset.
    async with Setup(tmp_path, open_files=1024) as s:
        quiet = await s.transfer()
        abuser = await s.client(ABUSER)
        assert abuser.listen_address is not None
        held: list[asyncio.StreamWriter] = []

        async def hold(host: str, port: int, source: str, data: bytes = b"") -> None:
            try:
                _, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
            except OSError:
                return
            writer.write(data)
            held.append(writer)

        entry = abuser.listen_address
        try:
            # streams first (the abuser's quota), then the pre-auth floods
            for batch in range(0, 1005, 100):
                await asyncio.gather(
                    *(
                        hold(entry.host, entry.port, LOCAL, b"x")
                        for _ in range(min(100, 1005 - batch))
                    )
                )
            upgrade = b"GET /aiowstunnel HTTP/1.1\r\nHost: x\r\n"
            await asyncio.gather(
                *(hold(LOCAL, s.port, SOURCES[i % 10], upgrade) for i in range(1100))
            )
            await asyncio.gather(*(hold(LOCAL, s.metrics, SOURCES[i % 10]) for i in range(1500)))
            await asyncio.sleep(0.5)
            fds = s.fds()
            loud = await s.transfer()
            second = await s.client(LEGIT)  # a new session of the other client
            await s.transfer(second)
            await asyncio.sleep(5.5)  # the exporter's request timeout frees its slots
            hits = await s.limit_hits()
            samples = await asyncio.to_thread(scrape, s.metrics)
            streams: dict[str, float] = {}  # server side, by client entry (label `client`)
            for (name, labels), value in samples.items():
                entry = dict(labels).get("client")
                if name == "aiowstunnel_streams_active" and entry is not None:
                    streams[entry] = streams.get(entry, 0) + value
        finally:
            for writer in held:
                writer.transport.abort()
        report(
            "fd limit 1024: 1,005 streams + 1,100 upgrades + 1,500 metrics connections",
            quiet, loud, daemon_fds=fds, abuser_streams=streams.get("abuser"), hits=hits,
        )  # fmt: skip
        assert fds < 1024 - 32  # never at the kernel's limit
        assert streams.get("abuser") == 360  # its quota: half of the 720 streams of 1024 fds
        assert hits["client_streams"] > 0 and hits["handshakes"] > 0
        assert hits["metrics_connections"] > 0
        assert "Too many open files" not in s.daemon.log_text()


SOAK_SECONDS = float(os.environ.get("AIOWSTUNNEL_SOAK_SECONDS", "120"))


@pytest.mark.timeout(SOAK_SECONDS + 120)
async def test_soak_mixed_abuse_next_to_five_tunnels(tmp_path: Path):
    # Mixed abuse from 10 attackers (each bounded: one connection or session at a time,
    # each step bounded in bytes and seconds) next to 5 legitimate tunnels moving data.
    # SOAK_SECONDS=1800 is the hand-run version (docs/reliability.md).
    async with Setup(tmp_path) as s:
        legit = [s.legit] + [await s.client(LEGIT) for _ in range(4)]
        for client in legit:
            await s.transfer(client)  # warm-up
        await asyncio.sleep(0.5)
        rss0, fds0 = s.rss(), s.fds()
        deadline = time.monotonic() + SOAK_SECONDS
        window = b"".join(
            binary_frame(wire.WindowUpdate(2 * i + 1001, 1).serialize()) for i in range(2_000)
        )
        counts = {"attacks": 0, "transfers": 0}

        async def attacker(index: int) -> None:
            source, kind = SOURCES[index], index % 5
            while time.monotonic() < deadline:
                counts["attacks"] += 1
                try:
                    if kind == 0:  # headers that never end
                        _, w = await asyncio.open_connection(LOCAL, s.port, local_addr=(source, 0))
                        w.write(b"GET /aiowstunnel HTTP/1.1\r\n" + b"X-Pad: aaaaaaaa\r\n" * 2000)
                        await asyncio.sleep(0.5)
                        w.transport.abort()
                    elif kind == 1:  # pings, never reading
                        a = await RawSession.open(
                            s.port, ABUSER, address=f"{LOCAL}:1", source=source
                        )
                        await a.push(ping_frame() * 256, 8 * MiB, stall=0.5)
                        a.close()
                    elif kind == 2:  # frames that earn an RST
                        a = await RawSession.open(
                            s.port, ABUSER, address=f"{LOCAL}:1", source=source
                        )
                        await a.push(window, len(window), stall=0.5)
                        await a.frames(0.2)
                        a.close()
                    elif kind == 3:  # wrong token, a ping pipelined before the answer
                        _, w = await asyncio.open_connection(LOCAL, s.port, local_addr=(source, 0))
                        from ..attackers import upgrade_request

                        w.write(upgrade_request(s.port, "wrong-token") + ping_frame())
                        await asyncio.sleep(0.05)
                        w.transport.abort()
                    else:  # idle connections to the metrics port
                        held = []
                        for _ in range(20):
                            _, w = await asyncio.open_connection(
                                LOCAL, s.metrics, local_addr=(source, 0)
                            )
                            held.append(w)
                        await asyncio.sleep(0.5)
                        for w in held:
                            w.transport.abort()
                except (OSError, AssertionError, asyncio.TimeoutError):
                    await asyncio.sleep(0.05)  # refused or cut: that is the server's answer

        async def tunnel(client: aiowstunnel.Client) -> list[float]:
            times = []
            while time.monotonic() < deadline:
                times.append(await s.transfer(client))
                counts["transfers"] += 1
                await asyncio.sleep(0.05)
            return times

        results = await asyncio.gather(
            *(attacker(i) for i in range(10)), *(tunnel(c) for c in legit)
        )
        times = sorted(t for r in results[10:] for t in r)
        settle = time.monotonic() + 15
        while (s.fds() > fds0 or s.rss() > rss0 + 8 * MiB) and time.monotonic() < settle:
            await asyncio.sleep(0.2)
        rss1, fds1 = s.rss(), s.fds()
        hits = await s.limit_hits()
        print(
            f"\nsoak {SOAK_SECONDS:g} s: {counts['attacks']} attacks, {counts['transfers']} x 4 MiB"
            f" transfers (median {times[len(times) // 2]:.3f} s, max {times[-1]:.3f} s); daemon RSS"
            f" {rss0 / MiB:.1f} -> {rss1 / MiB:.1f} MiB, fds {fds0} -> {fds1}; hits {hits}"
        )
        assert counts["transfers"] >= 5 and all(c.up for c in legit)
        assert fds1 <= fds0 + 2
        assert rss1 - rss0 < 24 * MiB
