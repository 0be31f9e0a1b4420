"""Behind a real nginx: TLS terminated at nginx, the WebSocket proxied on a path prefix.

nginx (Debian's nginx-light) runs in the foreground with a config in the test's folder;
the tunnel server behind it speaks plain ws:// on loopback.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import ssl
import subprocess
import time

import pytest
import trustme

import aiowstunnel
from aiowstunnel.client import Client
from aiowstunnel.server import Server

from ..helpers import FAST_BACKOFF, echo_roundtrip, start_backend
from .daemon_process import LOCAL, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """
worker_processes 1;
daemon off;
# A reload's old worker closes what it still carries after this (default: never).
worker_shutdown_timeout 1s;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp; uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        # The tunnel lives under a path prefix; nginx strips it on the way in.
        location /tunnels/ {{
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


@pytest.fixture
async def nginx(tmp_path):
    if not shutil.which(NGINX):
        pytest.skip("nginx is not installed (scripts/apt-packages.txt installs nginx-light)")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    (tmp_path / "tmp").mkdir(mode=0o777)
    server = Server(LOCAL, 0, path="/aiowstunnel")
    await server.listen()
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONFIG.format(dir=tmp_path, port=port, upstream=server.port))
    nginx = Nginx(conf, port)
    await nginx.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield port, server, context, nginx
    nginx.stop()
    await server.close(1)


class Nginx:
    """nginx in the foreground on ``conf``; started, reloaded and stopped by the test."""

    def __init__(self, conf, port: int) -> None:
        self.conf, self.port = conf, port
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = proc = subprocess.Popen(
            [NGINX, "-c", str(self.conf), "-p", str(self.conf.parent)], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while True:  # nginx has no readiness signal: its port accepting is the event
            try:
                _, writer = await asyncio.open_connection(LOCAL, self.port)
                writer.close()
                return
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "nginx did not start"
                await asyncio.sleep(0.05)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def through_nginx(mode, port: int, context, backend_port: int) -> Client:
    """A client to nginx's TLS port on its path prefix, the target the backend."""
    return Client(
        mode,
        LOCAL,
        port,
        LOCAL,
        0,
        LOCAL,
        backend_port,
        ssl=context,
        server_hostname="localhost",
        path="/tunnels/aiowstunnel",
        backoff=FAST_BACKOFF,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
async def test_both_modes_through_nginx_with_tls_on_a_path_prefix(nginx, mode):
    port, server, context, _ = nginx
    backend = await start_backend()
    client = through_nginx(mode, port, context, backend.port)
    client.start()
    try:
        await client.wait_up(10)
        assert client.url == f"wss://{LOCAL}:{port}/tunnels/aiowstunnel"
        results = await asyncio.gather(
            *(echo_roundtrip(client.listen_address, 8 << 20) for _ in range(4))
        )
        assert all(sent == received for sent, received in results)
        assert len(server.sessions) == 1
    finally:
        await client.close(1)
        backend.server.close()


@pytest.mark.timeout(90)
async def test_streams_survive_an_nginx_reload_and_restart(nginx):
    """nginx -s reload closes the old worker's connections after worker_shutdown_timeout
    (1 s here), a stop closes them all: with resumption the streams only pause."""
    port, server, context, proxy = nginx
    backend = await start_backend()
    client = through_nginx(aiowstunnel.CONNECT, port, context, backend.port)
    client.start()
    try:
        await client.wait_up(10)
        reader, writer = await asyncio.open_connection(
            client.listen_address.host, client.listen_address.port
        )

        async def echoes(text: bytes) -> None:
            writer.write(text)
            assert await asyncio.wait_for(reader.readexactly(len(text)), 20) == text

        await echoes(b"before")
        transfer = asyncio.ensure_future(echo_roundtrip(client.listen_address, 64 << 20))
        proxy.reload()  # the old worker drops the tunnel 1 s later
        await until(lambda: client.stats.resumes["ok"] >= 1, 20)
        await echoes(b"after the reload")
        proxy.stop()
        await until(lambda: client.detached, 10)
        await proxy.start()
        await until(lambda: client.stats.resumes["ok"] >= 2, 20)
        await echoes(b"after the restart")
        sent, received = await asyncio.wait_for(transfer, 60)
        assert sent == received
        assert sum(client.stats.stream_resets.values()) == 0
        assert len(server.sessions) == 1 and client.stats.connects == 1  # one session, resumed
        writer.close()
    finally:
        await client.close(1)
        backend.server.close()


async def until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
