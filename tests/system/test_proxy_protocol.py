"""PROXY protocol to a real nginx (`listen ... proxy_protocol`): the address nginx logs as
`$proxy_protocol_addr` is the original client's, in CONNECT and in LISTEN mode, v1 and v2.

The original client (curl) connects from 127.0.0.5, another loopback address, so that its
address differs from the tunnel's own (127.0.0.1), which nginx sees as `$remote_addr`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest

import aiowstunnel
from aiowstunnel.client import Client
from aiowstunnel.server import Server

from ..helpers import FAST_BACKOFF, run_tool
from .daemon_process import LOCAL, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ORIGINAL = "127.0.0.5"

CONFIG = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format pp '$proxy_protocol_addr $proxy_protocol_port $remote_addr $request_uri';
    access_log {dir}/access.log pp;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp; uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "hello $proxy_protocol_addr\\n"; }}
    }}
}}
"""


@pytest.fixture
async def nginx(tmp_path):
    if not shutil.which(NGINX):
        pytest.skip("nginx is not installed (scripts/apt-packages.txt installs nginx-light)")
    (tmp_path / "tmp").mkdir(mode=0o777)
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONFIG.format(dir=tmp_path, port=port))
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:  # nginx has no readiness signal: its port accepting is the event
        try:
            _, writer = await asyncio.open_connection(LOCAL, port)
            writer.close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "nginx did not start"
            await asyncio.sleep(0.05)
    yield port, tmp_path / "access.log"
    proc.terminate()
    proc.wait(10)


async def logged(log, uri: str, timeout: float = 10.0) -> list[str]:
    """The access log line of ``uri`` (nginx writes it once the request is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                if line.endswith(" " + uri):
                    return line.split()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no access log line for {uri}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
async def test_nginx_logs_the_original_client(nginx, mode, version) -> None:
    port, log = nginx
    server = Server(LOCAL, 0)
    await server.listen()
    client = Client(
        mode, LOCAL, server.port, "127.0.0.1", 0, LOCAL, port,
        backoff=FAST_BACKOFF, proxy_protocol=version,
    )  # fmt: skip
    client.start()
    try:
        await client.wait_up(10)
        entry = client.listen_address
        uri = f"/{mode}-{version}"
        code, out, err = await run_tool(
            "curl", "-sS", "--max-time", "10", "--interface", ORIGINAL,
            f"http://{entry}{uri}",
        )  # fmt: skip
        assert code == 0, err
        assert out == f"hello {ORIGINAL}\n".encode()
        addr, _, remote, _ = await logged(log, uri)
        assert (addr, remote) == (ORIGINAL, LOCAL)  # the original client's, not the tunnel's
    finally:
        await client.close(1)
        await server.close(1)
