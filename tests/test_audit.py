"""audit.py and `aiowstunnel check`: warnings for what a valid config exposes."""

from __future__ import annotations

import os
from pathlib import Path

from aiowstunnel.audit import config_warnings, is_loopback
from aiowstunnel.cli import main
from aiowstunnel.config import read_config


def write(
    folder: Path, metrics: str = "127.0.0.1:9100", server: str = "ws://127.0.0.1:9000"
) -> Path:
    token = folder / "token"
    if not token.exists():
        token.write_text("a-token-0123456789\n")
        token.chmod(0o600)
    path = folder / "aiowstunnel.toml"
    path.write_text(
        f'[metrics]\nlisten = "{metrics}"\n\n[[tunnel]]\nname = "t"\nmode = "connect"\n'
        f'server = "{server}/aiowstunnel"\ntoken_file = "token"\n'
        'listen = "127.0.0.1:5678"\nconnect = "127.0.0.1:22"\n'
    )
    path.chmod(0o644)
    return path


def test_a_tidy_config_has_no_warnings(tmp_path: Path, capsys):
    path = write(tmp_path)
    assert config_warnings(read_config(path), path) == []
    assert main(["check", "-c", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_every_exposure_is_named(tmp_path: Path, capsys):
    path = write(tmp_path, metrics=":9100", server="ws://tunnel.example.org")
    (tmp_path / "token").chmod(0o640)
    path.chmod(0o666)
    warnings = config_warnings(read_config(path), path)
    assert len(warnings) == 4, warnings
    assert any("config file" in w and "writable by every user" in w for w in warnings)
    assert any("token file" in w and "readable by other users (mode 0640)" in w for w in warnings)
    assert any(w.startswith("metrics.listen: :9100 is not loopback") for w in warnings)
    assert any(w.startswith("tunnel[0].server: ws://tunnel.example.org") for w in warnings)
    assert main(["check", "-c", str(path)]) == 0  # warnings, not errors
    captured = capsys.readouterr()
    assert captured.err.count(": warning: ") == 4
    assert "4 warning(s)" in captured.out


def test_a_symlinked_token_file_is_named(tmp_path: Path):
    real = tmp_path / "real-token"
    real.write_text("a-token-0123456789\n")
    real.chmod(0o600)
    os.symlink(real, tmp_path / "token")
    path = write(tmp_path)
    warnings = config_warnings(read_config(path), path)
    assert len(warnings) == 1 and "is a symbolic link" in warnings[0]


def test_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["", "0.0.0.0", "10.0.0.1", "example.org", "::"]))


def test_an_open_socks_proxy_off_loopback_is_named(tmp_path: Path):
    path = write(tmp_path)
    text = path.read_text().replace('mode = "connect"', 'mode = "socks5"')
    text = text.replace(
        'listen = "127.0.0.1:5678"\nconnect = "127.0.0.1:22"\n', 'listen = ":1080"\n'
    )
    path.write_text(text)
    warnings = config_warnings(read_config(path), path)
    assert any(
        w.startswith("tunnel[0].listen: a SOCKS5 proxy on :1080 without socks_username")
        for w in warnings
    ), warnings
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "pw").chmod(0o600)
    path.write_text(text + 'socks_username = "u"\nsocks_password_file = "pw"\n')
    assert not any("SOCKS5" in w for w in config_warnings(read_config(path), path))
