"""Tests for aiowstunnel/settings.py: one set of session defaults, from the config file or
the library's keyword arguments, passed down whole to the server and the client."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiowstunnel.client import Client
from aiowstunnel.config import load_config
from aiowstunnel.handshake import Mode
from aiowstunnel.server import Server
from aiowstunnel.settings import MIN_MAX_FRAME, SessionSettings
from aiowstunnel.stats import TunnelStats
from aiowstunnel.supervisor import build_client, build_server
from aiowstunnel.wire import DEFAULT_MAX_STREAMS, DEFAULT_WINDOW

CONFIG = """
[server]
listen = "127.0.0.1:0"
window = 65536
max_frame = 200000
handshake_timeout = 3.5
[[server.client]]
name = "c"
token_sha256 = "%s"
allow_connect = ["127.0.0.1:22"]

[[tunnel]]
name = "t"
mode = "connect"
server = "ws://127.0.0.1:9000"
token = "secret"
listen = "127.0.0.1:0"
connect = "127.0.0.1:22"
ping_interval = 2.5
resume_timeout = 0
""" % ("0" * 64)


def test_defaults_are_the_same_everywhere() -> None:
    defaults = SessionSettings()
    assert (defaults.window, defaults.max_streams) == (DEFAULT_WINDOW, DEFAULT_MAX_STREAMS)
    assert defaults.max_frame == 1024 * 1024 + 64 >= MIN_MAX_FRAME
    config = load_config(
        CONFIG.replace("window = 65536\nmax_frame = 200000\nhandshake_timeout = 3.5\n", "").replace(
            "ping_interval = 2.5\nresume_timeout = 0\n", ""
        ),
        Path("/etc"),
    )
    assert config.server is not None
    assert config.server.settings == defaults
    assert config.tunnels[0].settings == defaults
    assert Server("127.0.0.1", 0).settings == defaults
    assert Client(Mode.CONNECT, "127.0.0.1", 1, "127.0.0.1", 0, "127.0.0.1", 2).settings == defaults


def test_the_config_file_reaches_the_server_and_the_client_whole() -> None:
    config = load_config(CONFIG, Path("/etc"))
    assert config.server is not None
    server = build_server(config.server)
    assert server.settings is config.server.settings
    assert (server.settings.window, server.settings.max_frame) == (65536, 200000)
    assert server.settings.handshake_timeout == 3.5
    client = build_client(config.tunnels[0], 0, TunnelStats("t"))
    assert client.settings is config.tunnels[0].settings
    assert client.settings.ping_interval == 2.5
    assert client.settings.resume_timeout == 0  # resumption off for this tunnel only
    assert server.settings.resume_timeout == SessionSettings.resume_timeout
    assert client.settings.window == DEFAULT_WINDOW
    # The server URL, parsed once by the config, is the one the client asks for.
    assert client.endpoint == config.tunnels[0].server
    assert client.url == "ws://127.0.0.1:9000/aiowstunnel"


def test_keyword_arguments_build_the_settings() -> None:
    client = Client(
        Mode.LISTEN, "127.0.0.1", 1, "127.0.0.1", 0, "127.0.0.1", 2, window=4096, ping_interval=None
    )
    assert client.settings == SessionSettings(window=4096, ping_interval=None)
    server = Server("127.0.0.1", 0, max_streams=7, connect_timeout=1.5)
    assert server.settings == SessionSettings(max_streams=7, connect_timeout=1.5)


def test_settings_or_keywords_not_both() -> None:
    settings = SessionSettings(window=4096)
    assert Server("127.0.0.1", 0, settings=settings).settings is settings
    with pytest.raises(TypeError, match="give settings= or max_frame, window, not both"):
        Server("127.0.0.1", 0, settings=settings, window=1024, max_frame=MIN_MAX_FRAME + 1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"window": 0}, "window 0 out of range"),
        ({"max_streams": 0}, "max_streams must be >= 1"),
        ({"max_frame": 0}, "max_frame must be >= 1"),
        ({"ping_timeout": 0.0}, "ping_timeout must be a finite number > 0"),
        ({"connect_timeout": float("inf")}, "connect_timeout must be a finite number > 0"),
        ({"resume_timeout": -1.0}, "resume_timeout must be a finite number >= 0"),
    ],
)
def test_values_out_of_range_are_refused(values: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SessionSettings(**values)  # type: ignore[arg-type]
