"""Tests for aiowstunnel.notify: exact sd_notify datagrams on a real AF_UNIX socket."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiowstunnel import notify
from aiowstunnel.notify import Notifier, watchdog_loop, watchdog_period

pytestmark = pytest.mark.timeout(10)

BACKENDS = [
    pytest.param(False, id="datagram"),
    pytest.param(
        True,
        id="libsystemd",
        marks=pytest.mark.skipif(notify.libsystemd() is None, reason="systemd-python missing"),
    ),
]


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path and named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.fixture
def abstract_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace, named as ``@name`` in $NOTIFY_SOCKET."""
    name = f"aiowstunnel-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


@pytest.mark.parametrize("use_libsystemd", BACKENDS)
def test_sends_exact_datagrams(receiver: socket.socket, use_libsystemd: bool) -> None:
    notifier = Notifier(use_libsystemd=use_libsystemd)
    assert notifier.notify(READY=1, STATUS="3/4 tunnels up")
    assert notifier.notify("STOPPING=1")
    assert notifier.notify("STATUS=a\nb", WATCHDOG=1)
    assert receiver.recv(4096) == b"READY=1\nSTATUS=3/4 tunnels up"
    assert receiver.recv(4096) == b"STOPPING=1"
    # A newline inside a value would become a second assignment: it is flattened.
    assert receiver.recv(4096) == b"STATUS=a b\nWATCHDOG=1"
    notifier.close()


@pytest.mark.parametrize("use_libsystemd", BACKENDS)
def test_reloading_carries_clock_monotonic(receiver: socket.socket, use_libsystemd: bool) -> None:
    notifier = Notifier(use_libsystemd=use_libsystemd)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = receiver.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.close()


@pytest.mark.parametrize("use_libsystemd", BACKENDS)
def test_abstract_socket(abstract_receiver: socket.socket, use_libsystemd: bool) -> None:
    notifier = Notifier(use_libsystemd=use_libsystemd)
    assert notifier.notify(READY=1)
    assert abstract_receiver.recv(4096) == b"READY=1"
    notifier.close()


def test_explicit_socket_path_uses_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        notifier = Notifier(str(path))
        assert not notifier.use_libsystemd  # libsystemd only reads $NOTIFY_SOCKET
        assert notifier.notify(STATUS="hi")
        assert sock.recv(4096) == b"STATUS=hi"
        notifier.close()


def test_unset_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.notify(READY=1) is False
    assert notifier.reloading() is False


@pytest.mark.parametrize("use_libsystemd", BACKENDS)
def test_unreachable_socket_warns_once_and_never_raises(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    use_libsystemd: bool,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    notifier = Notifier(use_libsystemd=use_libsystemd)
    with caplog.at_level(logging.DEBUG, logger="aiowstunnel.notify"):
        assert notifier.notify(READY=1) is False
        assert notifier.notify(WATCHDOG=1) is False
        assert notifier.notify(STOPPING=1) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens.sock" in warnings[0].getMessage()
    notifier.close()


def test_unsupported_address_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert Notifier(use_libsystemd=False).notify(READY=1) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "{pid}"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_PID": "{pid}"}, None),
    ],
)
def test_watchdog_period(env: dict[str, str], expected: float | None) -> None:
    pid = os.getpid()
    env = {k: v.format(pid=pid, other=pid + 1) for k, v in env.items()}
    assert watchdog_period(env) == expected


def test_watchdog_period_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_period() == 1.5


async def test_watchdog_loop_pings_at_the_period(receiver: socket.socket) -> None:
    period = 0.05
    receiver.setblocking(False)
    loop = asyncio.get_running_loop()
    notifier = Notifier(use_libsystemd=False)
    task = asyncio.create_task(watchdog_loop(notifier, period))
    try:
        arrivals = []
        for _ in range(4):
            data = await asyncio.wait_for(loop.sock_recv(receiver, 4096), timeout=5)
            assert data == b"WATCHDOG=1"
            arrivals.append(time.monotonic())
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    # Three gaps of one period each: the pings are paced, not a burst.
    assert arrivals[-1] - arrivals[0] >= 3 * period * 0.8


async def test_watchdog_loop_rejects_bad_period() -> None:
    with pytest.raises(ValueError):
        await watchdog_loop(Notifier(), 0)
