"""``aiowstunnel stdio``: standard input and output joined to one stream, as ssh's
ProxyCommand runs it, with the real OpenSSH client and server."""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from aiowstunnel.addresses import AddressRule
from aiowstunnel.policy import ClientPolicy, token_digest
from aiowstunnel.server import Server

from ..helpers import run_tool
from .conftest import LOCAL, start_backend

AIOWSTUNNEL = str(Path(sys.executable).with_name("aiowstunnel"))
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
TOKEN = "stdio-test-token"


async def tunnel_server(tmp_path: Path, *allowed: int) -> tuple[Server, Path]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    rules = tuple(AddressRule.parse(f"{LOCAL}:{port}") for port in allowed)
    server = Server(LOCAL, 0, clients=[ClientPolicy("ssh", token_digest(TOKEN), rules)])
    await server.listen()
    return server, token_file


def stdio_argv(server: Server, target: str, token_file: Path) -> list[str]:
    url = f"ws://{LOCAL}:{server.port}/aiowstunnel"
    return [AIOWSTUNNEL, "stdio", url, target, "--token-file", str(token_file)]


@pytest.mark.timeout(30)
async def test_stdin_eof_is_a_fin_and_the_answer_still_flows(tmp_path, echo_backend) -> None:
    server, token_file = await tunnel_server(tmp_path, echo_backend.port)
    data = os.urandom(3 << 20)
    try:
        code, out, err = await run_tool(
            *stdio_argv(server, f"{LOCAL}:{echo_backend.port}", token_file), stdin=data
        )
    finally:
        await server.close(1)
    assert code == 0, err
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()  # echoed after EOF
    assert err == b""  # quiet by default: nothing but the stream on stdout, nothing on stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("source", ["file", "/dev/null"])
async def test_stdin_from_a_file_or_dev_null(tmp_path, echo_backend, source) -> None:
    """Files and /dev/null cannot be watched by the event loop: they are read in a thread."""
    server, token_file = await tunnel_server(tmp_path, echo_backend.port)
    path = tmp_path / "in.bin"
    data = os.urandom(1 << 20) if source == "file" else b""
    path.write_bytes(data)
    try:
        with open(path if source == "file" else source, "rb") as stdin:
            proc = await asyncio.create_subprocess_exec(
                *stdio_argv(server, f"{LOCAL}:{echo_backend.port}", token_file),
                stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await server.close(1)
    assert proc.returncode == 0, err
    assert out == data


@pytest.mark.timeout(30)
async def test_a_refused_target_exits_1_with_the_reason(tmp_path) -> None:
    never = await start_backend()
    server, token_file = await tunnel_server(tmp_path)  # allows nothing
    try:
        code, out, err = await run_tool(
            *stdio_argv(server, f"{LOCAL}:{never.port}", token_file), stdin=b"x"
        )
    finally:
        await server.close(1)
        never.server.close()
    assert code == 1 and out == b""
    assert b"403" in err and b"not in allow_connect" in err, err
    assert never.accepted == 0


@pytest.fixture
async def sshd(tmp_path):
    """A real sshd, one per connection in inetd mode (sshd -i) behind a port-0 listener:
    no fixed port, no race for one, and ready as soon as the listener is."""
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host", "user"):
        code, _, err = await run_tool(
            "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)
        )
        assert code == 0, err
    (keys / "authorized_keys").write_text((keys / "user.pub").read_text())
    config = keys / "sshd_config"
    config.write_text(
        f"HostKey {keys / 'host'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
    )
    (keys / "known_hosts").write_text("tunnel-sshd " + (keys / "host.pub").read_text())
    children: list[asyncio.subprocess.Process] = []
    # A plain listening socket, accepted by hand: no asyncio transport ever reads from an
    # accepted connection, so every byte the client sends is sshd's.
    listener = socket.socket()
    listener.bind((LOCAL, 0))
    listener.listen(8)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        with open(keys / "sshd.log", "ab") as log:
            while True:
                conn, _ = await loop.sock_accept(listener)
                with conn:
                    conn.setblocking(True)
                    children.append(
                        await asyncio.create_subprocess_exec(
                            SSHD, "-i", "-e", "-f", str(config), stdin=conn, stdout=conn,
                            stderr=log,
                        )
                    )  # fmt: skip

    acceptor = loop.create_task(serve())
    yield listener.getsockname()[1], keys
    acceptor.cancel()
    listener.close()
    for proc in children:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.timeout(90)
async def test_ssh_proxycommand_moves_64_mib_through_cat(tmp_path, sshd) -> None:
    port, keys = sshd
    server, token_file = await tunnel_server(tmp_path, port)
    source = tmp_path / "64MiB"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        for _ in range(64):
            block = os.urandom(1 << 20)
            digest.update(block)
            out.write(block)
    proxy = " ".join(stdio_argv(server, "%h:%p", token_file))
    argv = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(keys / "user"),
        "-p",
        str(port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={keys / 'known_hosts'}",
        "-o",
        "HostKeyAlias=tunnel-sshd",
        "-o",
        f"ProxyCommand={proxy}",
        f"{getpass.getuser()}@{LOCAL}",
        "cat",
    ]
    try:
        with source.open("rb") as stdin:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            received = hashlib.sha256()
            count = 0
            while chunk := await proc.stdout.read(1 << 20):
                received.update(chunk)
                count += len(chunk)
            err = await proc.stderr.read()
            code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        await server.close(1)
    assert code == 0, err + (keys / "sshd.log").read_bytes()
    assert count == 64 << 20
    assert received.hexdigest() == digest.hexdigest()
    assert server.client_stats["ssh", "stdio"].streams_opened == 1
