"""Tests for aiowstunnel/tls.py: the contexts built from a config, and read_and_check, the
one check that ``aiowstunnel check``, the daemon's start and its reload all run."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from aiowstunnel.errors import ConfigError
from aiowstunnel.tls import read_and_check, server_ssl, tunnel_ssl

TOKEN_HASH = "0" * 64


def write_config(folder: Path, server_tls: str = "", tunnel_tls: str = "") -> Path:
    path = folder / "aiowstunnel.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
{server_tls}
[[server.client]]
name = "c"
token_sha256 = "{TOKEN_HASH}"
allow_connect = ["127.0.0.1:22"]

[[tunnel]]
name = "t"
mode = "connect"
server = "wss://localhost:9000"
token = "secret"
listen = "127.0.0.1:0"
connect = "127.0.0.1:22"
{tunnel_tls}
"""
    )
    path.chmod(0o600)
    return path


def test_contexts_load_the_files_the_config_names(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    path = write_config(
        tmp_path,
        'tls_cert = "server.pem"\ntls_key = "server.pem"\ntls_client_ca = "ca.pem"',
        'ca_file = "ca.pem"\nclient_cert = "server.pem"\nclient_key = "server.pem"',
    )
    config, warnings = read_and_check(path)
    assert warnings == []
    assert config.server is not None
    server = server_ssl(config.server)
    assert server is not None and server.verify_mode is ssl.CERT_REQUIRED
    client = tunnel_ssl(config.tunnels[0], 0)
    assert client is not None and client.verify_mode is ssl.CERT_REQUIRED


def test_every_unloadable_file_is_named_by_its_key(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    path = write_config(
        tmp_path,
        'tls_cert = "junk.pem"\ntls_key = "junk.pem"',
        'ca_file = "missing.pem"',
    )
    with pytest.raises(ConfigError) as info:
        read_and_check(path)
    errors = info.value.errors
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"server.tls_cert/tls_key: {tmp_path}/junk.pem")
    assert errors[1].startswith(f"tunnel[0].ca_file: {tmp_path}/missing.pem")
    assert info.value.source == str(path)


def test_warnings_come_with_the_config(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("wss://localhost:9000", "ws://10.0.0.1:9000"))
    path.chmod(0o666)
    config, warnings = read_and_check(path)
    assert config.tunnels[0].server.host == "10.0.0.1"
    assert any("is writable by every user" in w for w in warnings), warnings
    assert any("tunnel[0].server: ws://10.0.0.1:9000/aiowstunnel is ws://" in w for w in warnings)
