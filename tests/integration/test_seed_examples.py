"""The two example programs of the original README run against each other, carry data,
and stop cleanly on SIGINT.

The programs in examples/ are the README's; only host names differ. The test swaps the
README's fixed ports (9000, 5678, 6789) for free ones and '0.0.0.0' for 127.0.0.1, so that
it never binds a fixed port or a public interface.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest

from aiowstunnel.addresses import Address

from .conftest import echo_roundtrip

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def program(name: str, ports: dict[str, int]) -> str:
    text = (EXAMPLES / name).read_text()
    text = text.replace("'0.0.0.0'", "'127.0.0.1'")
    for old, new in ports.items():
        text = text.replace(old, str(new))
    return text


async def start(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stderr=asyncio.subprocess.PIPE
    )


async def wait_for_line(proc: asyncio.subprocess.Process, needle: str, lines: list[str]) -> None:
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 15)
        if not line:
            raise AssertionError(f"exited before {needle!r}: {''.join(lines)}")
        lines.append(line.decode())
        if needle in lines[-1]:
            return


async def stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGINT)
    return await asyncio.wait_for(proc.wait(), 15)


@pytest.mark.timeout(60)
async def test_seed_server_and_client_examples(echo_backend):
    ports = {"9000": free_port(), "5678": free_port(), "6789": echo_backend.port}
    server_log: list[str] = []
    client_log: list[str] = []
    server = await start(program("seed_server.py", ports))
    client = None
    try:
        await wait_for_line(server, "tunnel server listening", server_log)
        client = await start(program("seed_client.py", ports))
        await wait_for_line(client, "tunnel up", client_log)
        sent, received = await echo_roundtrip(Address("127.0.0.1", ports["5678"]), 4 << 20)
        assert sent == received
        assert await stop(client) == 0
        assert await stop(server) == 0
    finally:
        for proc in (server, client):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
