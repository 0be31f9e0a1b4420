"""Behind a real nginx: TLS terminated at nginx, the WebSocket proxied on a path prefix.

nginx (Debian's nginx-light) runs in the foreground with a config in the test's folder;
the tunnel server behind it speaks plain ws:// on loopback.
"""

from __future__ import annotations

import asyncio
import shutil
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
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield port, server, context
    proc.terminate()
    proc.wait(10)
    await server.close(1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
async def test_both_modes_through_nginx_with_tls_on_a_path_prefix(nginx, mode):
    port, server, context = nginx
    backend = await start_backend()
    client = Client(
        mode,
        LOCAL,
        port,
        LOCAL,
        0,
        LOCAL,
        backend.port,
        ssl=context,
        server_hostname="localhost",
        path="/tunnels/aiowstunnel",
        backoff=FAST_BACKOFF,
    )
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
