"""Nothing is logged per message: at level debug, round trips through a tunnel make no log
record and not even a level check, however many there are. (A log call per message would
cost every user rtt, at any level: the call and its arguments are paid before the check.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

import aiowstunnel

from .conftest import start_backend

MODES = [aiowstunnel.CONNECT, aiowstunnel.LISTEN]


class Counting(logging.Handler):
    """Every record that reaches the root logger, by logger name and message."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Counting, list[str]]]:
    """Root at DEBUG with a counting handler, and every ``Logger.isEnabledFor`` call noted."""
    root = logging.getLogger()
    handler, level = Counting(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    checks: list[str] = []
    original = logging.Logger.isEnabledFor

    def noting(self: logging.Logger, level: int) -> bool:
        checks.append(f"{self.name}: level {logging.getLevelName(level)}")
        return original(self, level)

    monkeypatch.setattr(logging.Logger, "isEnabledFor", noting)
    yield handler, checks
    root.removeHandler(handler)
    root.setLevel(level)


async def round_trips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    for i in range(n):
        message = b"%08d" % i * 8  # 64 bytes, like benchmarks/run.py's rtt
        writer.write(message)
        assert await reader.readexactly(len(message)) == message


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_round_trips_log_nothing(make_tunnel, counting, mode):
    handler, checks = counting
    backend = await start_backend()
    tunnel = await make_tunnel(mode, backend.port)
    reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
    await round_trips(reader, writer, 20)  # the stream is open end to end: its logs are done
    counts = []
    for n in (50, 500):
        handler.records.clear()
        checks.clear()
        await round_trips(reader, writer, n)
        counts.append((n, len(handler.records), len(checks)))
        assert not handler.records, f"{n} round trips logged {handler.records[:5]}"
        assert not checks, f"{n} round trips checked log levels {len(checks)} times: {checks[:5]}"
    assert counts == [(50, 0, 0), (500, 0, 0)]
    writer.close()
    backend.server.close()
