"""Runs the real daemon (`python -m aiowstunnel run`) as a subprocess for whole-daemon tests.

The test owns the NOTIFY_SOCKET: a datagram socket in the test's folder, read with the
event loop, so READY/RELOADING/STOPPING/WATCHDOG are awaited as events, never slept for.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

LOCAL = "127.0.0.1"


def free_port() -> int:
    """A port free right now (for config files, which cannot say "port 0 of that other")."""
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


class Notifications:
    """The systemd side of sd_notify: a datagram socket that collects what the daemon says."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.path.unlink(missing_ok=True)  # left by an earlier daemon in the same folder
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    async def next(self, timeout: float = 10.0) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((time.monotonic(), fields))
        return fields

    async def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0):
        """The next message that has ``key`` (with ``value``); earlier ones are kept."""
        deadline = time.monotonic() + timeout
        while True:
            fields = await self.next(max(0.01, deadline - time.monotonic()))
            if key in fields and (value is None or fields[key] == value):
                return fields

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """One daemon process on a config file in ``folder``."""

    def __init__(
        self,
        folder: Path,
        config: str,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
        prefix: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.open_files = open_files  # RLIMIT_NOFILE (soft and hard) of the daemon, if set
        #: run under this command (``("ip", "netns", "exec", "ns1")``: in a namespace)
        self.prefix = tuple(prefix)  # (a Namespace's exec() gives a list)
        self.folder = folder
        self.config_path = folder / "aiowstunnel.toml"
        self.config_path.write_text(config)
        self.log_path = folder / "daemon.log"
        self.env = env or {}
        self.notify = Notifications(folder)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, wait_ready: bool = True) -> dict[str, str] | None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **self.env}
        env.pop("JOURNAL_STREAM", None)
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop; a restart appends)
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            sys.executable,
            "-m",
            "aiowstunnel",
            "run",
            "-c",
            str(self.config_path),
            stdout=self.log,
            stderr=self.log,
            env=env,
            preexec_fn=self._limit_open_files if self.open_files else None,
        )
        if wait_ready:
            return await self.notify.wait_for("READY", "1", timeout=15)
        return None

    def _limit_open_files(self) -> None:
        import resource

        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def write_config(self, text: str) -> None:
        tmp = self.config_path.with_suffix(".new")
        tmp.write_text(text)
        tmp.replace(self.config_path)  # atomically, as an editor or config tool would

    async def reload(self) -> tuple[dict[str, str], dict[str, str]]:
        """SIGHUP; returns the RELOADING message and the READY after it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        reloading = await self.notify.wait_for("RELOADING", "1")
        ready = await self.notify.wait_for("READY", "1")
        return reloading, ready

    async def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            self.kill()

    async def restart(self) -> None:
        """Start again after an exit, on the same config (a fresh notify socket)."""
        self.kill()
        self.notify = Notifications(self.folder)
        await self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        if hasattr(self, "log"):
            self.log.close()
        self.notify.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed with prometheus_client's own parser: {(name, labels): value}."""
    with urllib.request.urlopen(f"http://{LOCAL}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def healthz(port: int) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{LOCAL}:{port}/healthz", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def wait_healthy(metrics_port: int, want: int = 200, timeout: float = 10.0) -> dict:
    """Until /healthz answers ``want`` (200: every tunnel up); returns its JSON body."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await asyncio.to_thread(healthz, metrics_port)
        if status == want:
            return json.loads(body)
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz stayed {status}: {body!r}")
        await asyncio.sleep(0.05)
