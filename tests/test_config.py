"""Tests for aiowstunnel/config.py: every broken config names its key, defaults, paths, diff."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aiowstunnel.addresses import Address
from aiowstunnel.backoff import BackoffPolicy
from aiowstunnel.config import (
    Config,
    ConfigDiff,
    Secret,
    diff,
    load_config,
    read_config,
)
from aiowstunnel.errors import ConfigError
from aiowstunnel.handshake import Mode
from aiowstunnel.policy import Policy, token_digest
from aiowstunnel.wire import DEFAULT_MAX_STREAMS, DEFAULT_WINDOW

HASH_A = hashlib.sha256(b"token-a").hexdigest()
HASH_B = hashlib.sha256(b"token-b").hexdigest()


def fake_secrets(files: dict[str, str]):
    """A read_secret that serves ``files`` by absolute path, as the real one would."""

    def read(path: Path) -> str:
        try:
            return files[str(path)]
        except KeyError:
            raise FileNotFoundError(path) from None

    return read


def load(text: str, files: dict[str, str] | None = None) -> Config:
    return load_config(text, Path("/etc"), "test.toml", fake_secrets(files or {}))


def errors_of(text: str, files: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, files)
    return info.value.errors


def toml_table(header: str, base: dict[str, str], changes: dict[str, str | None]) -> str:
    """One TOML table from raw ``key -> TOML value`` pairs; a change to None drops the key."""
    merged = {**base, **changes}
    body = "".join(f"{k} = {v}\n" for k, v in merged.items() if v is not None)
    return f"{header}\n{body}"


TUNNEL = {
    "name": '"app"',
    "mode": '"connect"',
    "server": '"wss://host2:9000/aiowstunnel"',
    "token": '"s3cret-token"',
    "listen": '"127.0.0.1:5678"',
    "connect": '"srv:6789"',
}
SERVER = {"listen": '"0.0.0.0:9000"'}
CLIENT = {"name": '"branch"', "token_sha256": f'"{HASH_A}"', "allow_connect": '["srv:6789"]'}


def tunnel(**changes: str | None) -> str:
    return toml_table("[[tunnel]]", TUNNEL, changes)


def server(clients: int = 1, client: dict[str, str | None] | None = None, **changes) -> str:
    text = toml_table("[server]", SERVER, changes)
    for _ in range(clients):
        text += toml_table("[[server.client]]", CLIENT, client or {})
    return text


BROKEN = [
    # --- tunnels
    ("misspelt key", tunnel(conect='"srv:1"'), "tunnel[0].conect: unknown key"),
    ("bad listen", tunnel(listen='"foo"'), "tunnel[0].listen: 'foo': expected 'host:port'"),
    ("listen port range", tunnel(listen='"h:70000"'), "tunnel[0].listen: 'h:70000': port"),
    ("missing name", tunnel(name=None), "tunnel[0].name: required key is missing"),
    ("name with space", tunnel(name='"my app"'), "tunnel[0].name: 'my app': use only"),
    (
        "bad mode",
        tunnel(mode='"both"'),
        "tunnel[0].mode: expected one of 'connect', 'listen', 'socks5', 'reverse-socks5'",
    ),
    ("mode not a string", tunnel(mode="1"), "tunnel[0].mode: expected a string, got 1"),
    ("http server", tunnel(server='"http://h:1"'), "tunnel[0].server: 'http://h:1': expected"),
    ("server no host", tunnel(server='"wss://:9000/x"'), "tunnel[0].server: 'wss://:9000/x'"),
    ("server bad port", tunnel(server='"ws://h:99999"'), "tunnel[0].server: 'ws://h:99999'"),
    ("server creds", tunnel(server='"wss://u:p@h/"'), "tunnel[0].server: 'wss://u:p@h/'"),
    ("both tokens", tunnel(token_file='"t"'), "tunnel[0].token: give either token_file"),
    ("no token", tunnel(token=None), "tunnel[0].token_file: required key is missing (or token)"),
    ("empty token", tunnel(token='""'), "tunnel[0].token: the token is empty"),
    ("token with space", tunnel(token='"a b"'), "tunnel[0].token: the token must be printable"),
    ("token not str", tunnel(token="1234"), "tunnel[0].token: expected a string, got an integer"),
    ("connect port 0", tunnel(connect='"srv:0"'), "tunnel[0].connect: 'srv:0': port 0"),
    ("connect no host", tunnel(connect='":80"'), "tunnel[0].connect: ':80': a host is required"),
    ("ping word", tunnel(ping_interval='"fast"'), "tunnel[0].ping_interval: expected a number"),
    ("ping bool", tunnel(ping_timeout="true"), "tunnel[0].ping_timeout: expected a number, got"),
    ("ping zero", tunnel(ping_interval="0"), "tunnel[0].ping_interval: must be > 0, got 0"),
    ("ping inf", tunnel(ping_interval="inf"), "tunnel[0].ping_interval: expected a finite"),
    ("resume < 0", tunnel(resume_timeout="-1"), "tunnel[0].resume_timeout: must be >= 0, got -1"),
    ("backoff initial", tunnel(backoff="{ initial = 0 }"), "tunnel[0].backoff.initial: must be"),
    ("backoff factor", tunnel(backoff="{ factor = 0.5 }"), "tunnel[0].backoff.factor: must be"),
    (
        "backoff max < initial",
        tunnel(backoff="{ initial = 5, max = 1 }"),
        "tunnel[0].backoff.max: must be >= initial (5)",
    ),
    ("backoff key", tunnel(backoff="{ jitter = 1 }"), "tunnel[0].backoff.jitter: unknown key"),
    ("backoff type", tunnel(backoff="5"), "tunnel[0].backoff: expected a table, got 5"),
    ("cert no key", tunnel(client_cert='"c.pem"'), "tunnel[0].client_cert: needs client_key"),
    (
        "ca_file on ws://",
        tunnel(server='"ws://h:1/"', ca_file='"ca.pem"'),
        "tunnel[0].ca_file: only used with a wss:// server",
    ),
    ("socks proxy", tunnel(proxy='"socks5://p:1080"'), "tunnel[0].proxy: 'socks5://p:1080'"),
    ("proxy path", tunnel(proxy='"http://p:3128/x"'), "tunnel[0].proxy: 'http://p:3128/x'"),
    ("window zero", tunnel(window="0"), "tunnel[0].window: must be between 1 and"),
    ("window float", tunnel(window="1.5"), "tunnel[0].window: expected an integer, got 1.5"),
    ("empty path", tunnel(ca_file='""'), "tunnel[0].ca_file: expected a file path"),
    (
        "duplicate tunnel",
        tunnel() + tunnel(listen='"127.0.0.1:5679"'),
        "tunnel[1].name: 'app' is already used by tunnel[0]",
    ),
    ("tunnel not array", '[tunnel]\nname = "x"\n', "tunnel: expected an array of tables"),
    (
        "two listeners one port",
        server() + tunnel(listen='"127.0.0.1:9000"'),
        "tunnel[0].listen: 127.0.0.1:9000 is also used by server.listen",
    ),
    # --- top level, metrics, log, daemon
    ("log level", '[log]\nlevel = "verbose"\n', "log.level: expected one of debug, info"),
    ("metrics listen", '[metrics]\nlisten = "9100"\n', "metrics.listen: '9100': expected"),
    ("metrics enabled", '[metrics]\nenabled = "no"\n', "metrics.enabled: expected true or false"),
    ("unknown section", "[daemons]\n", "daemons: unknown key (did you mean 'daemon'?)"),
    ("top-level key", "shutdown_timeout = 5\n", "shutdown_timeout: unknown key"),
    (
        "negative shutdown",
        "[daemon]\nshutdown_timeout = -1\n",
        "daemon.shutdown_timeout: must be >= 0",
    ),
    # --- server
    ("open relay", server(clients=0), "server.client: at least one [[server.client]]"),
    ("server no listen", server(listen=None), "server.listen: required key is missing"),
    ("server path", server(path='"tunnel"'), "server.path: 'tunnel': must start with '/'"),
    ("cert no key", server(tls_cert='"s.crt"'), "server.tls_cert: needs tls_key too"),
    ("mtls no tls", server(tls_client_ca='"ca.crt"'), "server.tls_client_ca: client certif"),
    ("tiny max_frame", server(max_frame="100"), "server.max_frame: must be between"),
    ("bad timeout", server(handshake_timeout="-1"), "server.handshake_timeout: must be > 0"),
    ("resume word", server(resume_timeout='"1m"'), "server.resume_timeout: expected a number"),
    (
        "no detached",
        server(max_detached_sessions="0"),
        "server.max_detached_sessions: must be between 1 and",
    ),
    (
        "detached per client",
        server(max_detached_per_client="-2"),
        "server.max_detached_per_client: must be between 1 and",
    ),
    (
        "detached bytes word",
        server(max_detached_bytes='"256M"'),
        "server.max_detached_bytes: expected an integer",
    ),
    (
        "detached bytes float",
        server(max_detached_bytes="1.5"),
        "server.max_detached_bytes: expected an integer",
    ),
    (
        "short hash",
        server(client={"token_sha256": '"abc"'}),
        "server.client[0].token_sha256: expected 64 hexadecimal",
    ),
    (
        "inline server token",
        server(client={"token": '"x"'}),
        "server.client[0].token: inline tokens are not accepted",
    ),
    (
        "bad rule",
        server(client={"allow_connect": '["srv:1", "nope"]'}),
        "server.client[0].allow_connect[1]: 'nope': expected 'host:port'",
    ),
    (
        "rule not string",
        server(client={"allow_listen": "[1]"}),
        "server.client[0].allow_listen[0]: expected a string, got 1",
    ),
    (
        "rules not array",
        server(client={"allow_listen": '"*:80"'}),
        "server.client[0].allow_listen: expected an array of strings",
    ),
    (
        "zero sessions",
        server(client={"max_sessions": "0"}),
        "server.client[0].max_sessions: must be between 1 and",
    ),
    (
        "missing token file",
        server(client={"token_sha256": None, "token_file": '"tokens/x"'}),
        "server.client[0].token_file: /etc/tokens/x: no such file",
    ),
    ("client not array", '[server]\nlisten = ":1"\n[server.client]\nname = "a"\n', "server.client"),
    (
        "duplicate token",
        server() + toml_table("[[server.client]]", CLIENT, {"name": '"other"'}),
        "server.client[1].token_sha256: same token as server.client[0]",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config_names_the_key(text: str, expected: str) -> None:
    errors = errors_of(text)
    # One fault, one message: no cascade of follow-on errors to wade through.
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_duplicate_client_names() -> None:
    text = server() + toml_table("[[server.client]]", CLIENT, {"token_sha256": f'"{HASH_B}"'})
    assert errors_of(text) == [
        "server.client[1].name: 'branch' is already used by server.client[0] (line 8)"
    ]


def test_empty_token_file_is_an_error() -> None:
    text = server(client={"token_sha256": None, "token_file": '"/t/empty"'})
    errors = errors_of(text, {"/t/empty": ""})
    assert errors == ["server.client[0].token_file: /t/empty: the token is empty (line 6)"]


def test_toml_syntax_error_names_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        load('[log]\nlevel = "info\n')
    (message,) = info.value.errors
    assert message.startswith("TOML syntax error:")
    assert "line 2" in message and "column" in message


def test_every_error_is_reported_in_file_order() -> None:
    text = (
        '[log]\nlevel = "loud"\n'  # line 2
        + tunnel(conect='"x:1"', ping_interval='"fast"')  # lines 3..11
        + tunnel(name='"b c"', mode='"sideways"', listen='"nowhere"')
    )
    with pytest.raises(ConfigError) as info:
        load(text)
    errors = info.value.errors
    assert [e.split(":")[0] for e in errors] == [
        "log.level",
        "tunnel[0].conect",
        "tunnel[0].ping_interval",
        "tunnel[1].name",
        "tunnel[1].mode",
        "tunnel[1].listen",
    ]
    assert errors[0].endswith("(line 2)")
    assert errors[1].endswith("(line 10)")
    # The exception text prefixes each line with the file, as `aiowstunnel check` prints it.
    assert str(info.value).splitlines()[0] == (
        "test.toml: log.level: expected one of debug, info, warning, error, got 'loud' (line 2)"
    )


def test_missing_key_points_at_its_table_header() -> None:
    text = tunnel() + "\n" + tunnel(name=None, listen='"127.0.0.1:1"')
    assert errors_of(text) == ["tunnel[1].name: required key is missing (line 9)"]


# The documented example configuration (docs/configuration.md), every optional key switched on.
EXAMPLE = f"""
[metrics]                       # Prometheus exporter; also serves GET /healthz
listen = ":9100"

[log]
level = "info"

[daemon]
shutdown_timeout = 5

[server]
listen = "0.0.0.0:9000"
path = "/aiowstunnel"
tls_cert = "/etc/aiowstunnel/server.crt"
tls_key = "/etc/aiowstunnel/server.key"
tls_client_ca = "/etc/aiowstunnel/clients-ca.crt"

[[server.client]]
name = "branch-office"
token_file = "/etc/aiowstunnel/tokens/branch-office"
allow_connect = ["srv:6789", "10.0.0.0/8:22"]
allow_listen = ["0.0.0.0:5678"]

[[server.client]]
name = "laptop"
token_sha256 = "{HASH_B}"
allow_connect = ["*:443"]
max_sessions = 2

[[tunnel]]
name = "app"
mode = "connect"
server = "wss://host2:9000/aiowstunnel"
token_file = "/etc/aiowstunnel/tokens/app"
listen = "0.0.0.0:5678"
connect = "srv:6789"
ca_file = "/etc/aiowstunnel/ca.crt"
proxy = "http://proxy:3128"
backoff = {{ initial = 1.0, max = 60.0, factor = 2.0 }}
ping_interval = 20.0
ping_timeout = 20.0

[[tunnel]]
name = "reverse-ssh"
mode = "listen"
server = "ws://[::1]:9000"
token = "inline-token"
listen = "0.0.0.0:2222"
connect = "localhost:22"
"""
EXAMPLE_TOKENS = {
    "/etc/aiowstunnel/tokens/branch-office": "token-a",
    "/etc/aiowstunnel/tokens/app": "app-token",
}


def test_example_loads_with_defaults_filled() -> None:
    config = load(EXAMPLE, EXAMPLE_TOKENS)
    assert config.source == "test.toml"
    assert config.metrics.enabled and config.metrics.listen == Address("", 9100)
    assert config.log.level == "info"
    assert config.shutdown_timeout == 5.0

    srv = config.server
    assert srv is not None
    assert srv.listen == Address("0.0.0.0", 9000)
    assert srv.tls_client_ca == Path("/etc/aiowstunnel/clients-ca.crt")
    assert (srv.settings.window, srv.settings.max_streams, srv.settings.max_frame) == (
        DEFAULT_WINDOW,
        DEFAULT_MAX_STREAMS,
        1024 * 1024 + 64,
    )
    session = srv.settings
    assert (session.handshake_timeout, session.ping_interval, session.ping_timeout) == (
        10.0,
        20.0,
        20.0,
    )
    # The clients are ready for the server's Policy: the token file authenticates.
    policy = Policy(srv.clients)
    branch = policy.authenticate("token-a")
    assert branch is not None and branch.name == "branch-office"
    assert branch.max_sessions == 16
    assert branch.may_connect(Address("10.1.2.3", 22))
    assert not branch.may_connect(Address("10.1.2.3", 23))
    assert branch.may_listen(Address("0.0.0.0", 5678))
    assert policy.authenticate("token-b").name == "laptop"  # by its token_sha256

    app, reverse = config.tunnels
    assert app.mode is Mode.CONNECT and app.uses_tls
    assert app.token.reveal() == "app-token"
    assert app.backoff == BackoffPolicy(1.0, 60.0, 2.0, 30.0)
    assert app.proxy == "http://proxy:3128"
    assert reverse.mode is Mode.LISTEN and not reverse.uses_tls
    assert reverse.server.url == "ws://[::1]:9000/aiowstunnel"  # default path filled in
    assert reverse.settings.window == DEFAULT_WINDOW
    assert (reverse.settings.ping_interval, reverse.settings.ping_timeout) == (20.0, 20.0)


def test_empty_file_is_a_valid_config_with_defaults() -> None:
    config = load("")
    assert config.server is None and config.tunnels == ()
    # loopback by default: the metrics name every client (issue 11, finding 10)
    assert config.metrics.listen == Address("127.0.0.1", 9100)
    assert config.metrics.max_connections == 64
    assert config.shutdown_timeout == 10.0


def test_metrics_can_be_turned_off_and_port_zero_is_allowed_for_listeners() -> None:
    config = load("[metrics]\nenabled = false\n" + tunnel(listen='"127.0.0.1:0"'))
    assert not config.metrics.enabled
    assert config.tunnels[0].listen == Address("127.0.0.1", 0)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    (conf / "tokens").mkdir(parents=True)
    (conf / "tokens" / "app").write_text("app-token\n")  # as `echo token > file` writes it
    (conf / "tokens" / "branch").write_text("token-a\r\n")
    text = server(
        tls_cert='"tls/server.crt"',
        tls_key='"/abs/server.key"',
        client={"token_sha256": None, "token_file": '"tokens/branch"'},
    ) + tunnel(
        token=None,
        token_file='"tokens/app"',
        ca_file='"tls/ca.crt"',
        client_cert='"tls/client.crt"',
        client_key='"../client.key"',
    )
    (conf / "aiowstunnel.toml").write_text(text)

    config = read_config(conf / "aiowstunnel.toml")

    assert config.source == str(conf / "aiowstunnel.toml")
    assert config.server.tls_cert == conf / "tls" / "server.crt"
    assert config.server.tls_key == Path("/abs/server.key")
    assert config.server.clients[0].token_sha256 == token_digest("token-a")
    spec = config.tunnels[0]
    assert spec.token.reveal() == "app-token"
    assert (spec.ca_file, spec.client_cert) == (conf / "tls" / "ca.crt", conf / "tls/client.crt")
    assert spec.client_key == conf / ".." / "client.key"


def test_read_config_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_config(tmp_path / "missing.toml")
    assert str(info.value) == f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"


def test_token_file_errors_name_key_and_path(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    text = tunnel(token=None, token_file='"dir"') + tunnel(
        name='"b"', token=None, token_file='"nope"', listen='"127.0.0.1:1"'
    )
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        read_config(tmp_path / "c.toml")
    assert info.value.errors == [
        f"tunnel[0].token_file: {tmp_path / 'dir'}: is a directory (line 7)",
        f"tunnel[1].token_file: {tmp_path / 'nope'}: no such file (line 14)",
    ]


def test_secrets_never_print() -> None:
    config = load(EXAMPLE, EXAMPLE_TOKENS)
    shown = repr(config) + str(config) + repr(config.tunnels) + f"{config.tunnels[1].token}"
    for secret in ("app-token", "inline-token", "token-a"):
        assert secret not in shown
    assert repr(Secret("x")) == str(Secret("x")) == "***"
    assert Secret("x") == Secret("x") != Secret("y")
    assert len({Secret("x"), Secret("x")}) == 1


def test_token_is_never_echoed_in_an_error() -> None:
    errors = errors_of(tunnel(token='"abc def-secret"'))
    assert "secret" not in "".join(errors)


# --- diff, as a table


def three_tunnels(**changes: dict[str, str | None]) -> str:
    """Tunnels a, b, c; ``changes`` maps a name to key changes (``{"drop": None}`` drops it)."""
    text = ""
    for port, name in enumerate(("a", "b", "c"), start=7001):
        change = changes.get(name, {})
        if "drop" in change:
            continue
        text += tunnel(**{"name": f'"{name}"', "listen": f'"127.0.0.1:{port}"', **change})
    return text


BASE = server() + three_tunnels()
DIFFS = [
    ("nothing", BASE, ConfigDiff(unchanged=("a", "b", "c"))),
    (
        "added",
        BASE + tunnel(name='"d"', listen='"127.0.0.1:7004"'),
        ConfigDiff(added=("d",), unchanged=("a", "b", "c")),
    ),
    (
        "removed",
        server() + three_tunnels(b={"drop": None}),
        ConfigDiff(removed=("b",), unchanged=("a", "c")),
    ),
    (
        "changed target",
        server() + three_tunnels(b={"connect": '"srv:1"'}),
        ConfigDiff(changed=("b",), unchanged=("a", "c")),
    ),
    (
        "changed token",
        server() + three_tunnels(a={"token": '"new-token"'}),
        ConfigDiff(changed=("a",), unchanged=("b", "c")),
    ),
    (
        "changed backoff",
        server() + three_tunnels(c={"backoff": "{ max = 5 }"}),
        ConfigDiff(changed=("c",), unchanged=("a", "b")),
    ),
    (
        "renamed",
        server() + three_tunnels(c={"name": '"c2"'}),
        ConfigDiff(added=("c2",), removed=("c",), unchanged=("a", "b")),
    ),
    (
        "reordered",
        server() + tunnel(name='"c"', listen='"127.0.0.1:7003"') + three_tunnels(c={"drop": None}),
        ConfigDiff(unchanged=("c", "a", "b")),
    ),
    (
        "server ACL",
        server(client={"allow_connect": '["srv:6790"]'}) + three_tunnels(),
        ConfigDiff(unchanged=("a", "b", "c"), server_changed=True),
    ),
    ("server removed", three_tunnels(), ConfigDiff(unchanged=("a", "b", "c"), server_changed=True)),
    (
        "metrics",
        '[metrics]\nlisten = "127.0.0.1:9101"\n' + BASE,
        ConfigDiff(unchanged=("a", "b", "c"), metrics_changed=True),
    ),
    (
        "log level only",
        '[log]\nlevel = "debug"\n' + BASE,
        ConfigDiff(unchanged=("a", "b", "c")),
    ),
]


@pytest.mark.parametrize(("new", "expected"), [d[1:] for d in DIFFS], ids=[d[0] for d in DIFFS])
def test_diff(new: str, expected: ConfigDiff) -> None:
    assert diff(load(BASE), load(new)) == expected


def test_diff_sees_a_changed_token_file() -> None:
    text = tunnel(token=None, token_file='"/t/app"')
    old = load(text, {"/t/app": "one"})
    assert diff(old, load(text, {"/t/app": "one"})) == ConfigDiff(unchanged=("app",))
    assert diff(old, load(text, {"/t/app": "two"})) == ConfigDiff(changed=("app",))


def test_documented_example_loads() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    example = doc.split("```toml\n")[-1].split("```")[0]
    config = load_config(example, Path("/etc/aiowstunnel"), read_secret=lambda path: "t0ken")
    assert [t.name for t in config.tunnels] == ["app", "db", "reverse-ssh", "proxy", "web-socket"]
    assert len(config.tunnels[1].servers) == 2
    assert config.server.tls_cert == Path("/etc/aiowstunnel/tls/server.crt")


def test_socks_tunnels() -> None:
    config = load(
        tunnel(
            mode='"socks5"',
            connect=None,
            socks_username='"alice"',
            socks_password_file='"socks.pw"',
        )
        + tunnel(
            name='"rs"',
            mode='"reverse-socks5"',
            connect=None,
            allow_connect='["127.0.0.1:22", "10.0.0.0/8:*"]',
            listen='"127.0.0.1:1080"',
        ),
        {"/etc/socks.pw": "pw1"},
    )
    socks, reverse = config.tunnels
    assert socks.mode is Mode.SOCKS5 and socks.connect is None
    assert socks.socks_username == "alice" and socks.socks_password == Secret("pw1")
    assert reverse.mode is Mode.REVERSE_SOCKS5
    assert [str(r) for r in reverse.allow_connect] == ["127.0.0.1:22", "10.0.0.0/8:*"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (tunnel(mode='"socks5"'), "tunnel[0].connect: not used in socks5 mode"),
        (tunnel(mode='"reverse-socks5"', connect=None), "tunnel[0].allow_connect: required"),
        (
            tunnel(allow_connect='["a:1"]'),
            "tunnel[0].allow_connect: only used with mode = 'reverse-socks5'",
        ),
        (
            tunnel(mode='"socks5"', connect=None, socks_username='"a"'),
            "tunnel[0].socks_username: needs socks_password_file too",
        ),
        (
            tunnel(socks_username='"a"', socks_password_file='"p"'),
            "tunnel[0].socks_username: only used with mode = 'socks5'",
        ),
        (
            tunnel(mode='"reverse-socks5"', connect=None, allow_connect='["nope"]'),
            "tunnel[0].allow_connect[0]: 'nope': expected 'host:port'",
        ),
    ],
)
def test_socks_tunnel_errors(text: str, message: str) -> None:
    assert any(e.startswith(message) for e in errors_of(text, {"/etc/p": "x"})), errors_of(
        text, {"/etc/p": "x"}
    )


def test_unix_socket_endpoints_and_rules() -> None:
    from aiowstunnel.addresses import UnixPath

    config = load(
        tunnel(listen='"unix:/run/app/tunnel.sock"', connect='"unix:/run/app.sock"',
               socket_mode='"0600"')
        + server(client={"allow_connect": '["unix:/run/app.sock"]',
                         "allow_listen": '["unix:/run/in.sock"]'}, socket_mode='"0666"'),
    )  # fmt: skip
    spec = config.tunnels[0]
    assert spec.listen == UnixPath("/run/app/tunnel.sock")
    assert spec.connect == UnixPath("/run/app.sock") and spec.socket_mode == 0o600
    assert config.server.socket_mode == 0o666
    client = config.server.clients[0]
    assert client.may_connect(UnixPath("/run/app.sock"))
    assert not client.may_connect(UnixPath("/run/other.sock"))
    assert client.may_listen(UnixPath("/run/in.sock"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (tunnel(connect='"unix:run/app.sock"'), "tunnel[0].connect: 'unix:run/app.sock': a unix"),
        (tunnel(socket_mode='"0600"'), "tunnel[0].socket_mode: only used with a unix socket"),
        (tunnel(listen='"unix:/x.sock"', socket_mode='"rw"'), "tunnel[0].socket_mode: 'rw'"),
        (tunnel(listen='"unix:/a.sock"') + tunnel(name='"b"', listen='"unix:/a.sock"'),
         "tunnel[1].listen: unix:/a.sock is also used by tunnel[0].listen"),
    ],
)  # fmt: skip
def test_unix_socket_errors(text: str, message: str) -> None:
    errors = errors_of(text)
    assert any(e.startswith(message) for e in errors), errors


def test_proxy_protocol_key() -> None:
    assert load(tunnel(proxy_protocol='"v2"')).tunnels[0].proxy_protocol == "v2"
    assert load(tunnel()).tunnels[0].proxy_protocol is None
    errors = errors_of(tunnel(proxy_protocol='"v3"'))
    assert errors[0].startswith("tunnel[0].proxy_protocol: expected 'v1' or 'v2', got 'v3'")


# -- several servers per tunnel, the server's name, stop_grace (issue 17) -----------------

SEVERAL = [
    ("servers empty", tunnel(server="[]"), "tunnel[0].server: expected at least one URL"),
    ("servers not str", tunnel(server='["wss://a:1", 2]'), "tunnel[0].server[1]: expected a URL"),
    ("server a table", tunnel(server="{ a = 1 }"), "tunnel[0].server: expected a URL or an array"),
    (
        "servers bad url",
        tunnel(server='["wss://a:1", "http://b:1"]'),
        "tunnel[0].server[1]: 'http://b:1': expected a ws:// or wss:// URL",
    ),
    (
        "servers twice",
        tunnel(server='["wss://a:1/x", "wss://a:1/x"]'),
        "tunnel[0].server[1]: 'wss://a:1/x' is listed twice",
    ),
    (
        "servers mixed schemes",
        tunnel(server='["wss://a:1", "ws://b:1"]'),
        "tunnel[0].server[1]: mixes ws:// and wss://",
    ),
    (
        "too many servers",
        tunnel(server="[" + ", ".join(f'"wss://h{i}:1"' for i in range(17)) + "]"),
        "tunnel[0].server: at most 16 servers, got 17",
    ),
    ("server name", server(name='"my server"'), "server.name: 'my server': use only"),
    ("stop_grace", "[daemon]\nstop_grace = -1\n", "daemon.stop_grace: must be >= 0"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in SEVERAL], ids=[c[0] for c in SEVERAL]
)
def test_several_servers_broken_names_the_key(text: str, expected: str) -> None:
    assert any(e.startswith(expected) for e in errors_of(text)), errors_of(text)


def test_server_may_be_one_url_or_a_list() -> None:
    one = load(tunnel()).tunnels[0]
    assert one.servers == (one.server,) and one.more_servers == ()
    three = load(tunnel(server='["wss://a:9000", "wss://b:9000/t", "wss://c"]')).tunnels[0]
    assert [s.url for s in three.servers] == [
        "wss://a:9000/aiowstunnel",
        "wss://b:9000/t",
        "wss://c:443/aiowstunnel",
    ]
    assert three.server == three.servers[0]
    # One entry is the same tunnel as the plain string: a reload does not restart it.
    assert load(tunnel(server='["wss://host2:9000/aiowstunnel"]')).tunnels[0] == one


def test_server_name_and_stop_grace() -> None:
    config = load("[daemon]\nstop_grace = 2.5\n" + server(name='"edge-1"'))
    assert config.stop_grace == 2.5
    assert config.server is not None and config.server.name == "edge-1"
    plain = load(server())
    assert plain.stop_grace == 0.0 and plain.server is not None and plain.server.name == ""


# -- UDP tunnels (issue 18) ----------------------------------------------------------------


def tunnel_toml(**changes: str | None) -> str:
    return toml_table("[[tunnel]]", TUNNEL, changes)


def test_protocol_defaults_to_tcp_with_a_60_s_idle_timeout() -> None:
    (spec,) = load(tunnel_toml()).tunnels
    assert spec.protocol.value == "tcp" and spec.settings.udp_idle_timeout == 60.0


@pytest.mark.parametrize("protocol", ["udp", "tcp+udp"])
def test_udp_tunnel_loads_with_its_idle_timeout(protocol: str) -> None:
    (spec,) = load(tunnel_toml(protocol=f'"{protocol}"', udp_idle_timeout="0")).tunnels
    assert spec.protocol.value == protocol and spec.settings.udp_idle_timeout == 0.0


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"protocol": '"sctp"'}, "tunnel[0].protocol: expected 'tcp', 'udp' or 'tcp+udp'"),
        ({"protocol": '"udp"', "udp_idle_timeout": "-1"}, "udp_idle_timeout: must be >= 0"),
        ({"protocol": '"udp"', "udp_idle_timeout": "100000"}, "must be <= 86400"),
        ({"udp_idle_timeout": "5"}, "tunnel[0].udp_idle_timeout: only used with protocol"),
        (
            {"protocol": '"udp"', "mode": '"socks5"', "connect": None},
            "tunnel[0].protocol: UDP is carried in the connect and listen modes, not socks5",
        ),
        (
            {"protocol": '"tcp+udp"', "listen": '"unix:/run/dns.sock"'},
            "tunnel[0].listen: protocol = 'tcp+udp' needs a host:port, not a unix socket",
        ),
    ],
)
def test_bad_udp_keys_name_the_key(changes: dict[str, str], expected: str) -> None:
    assert any(expected in e for e in errors_of(tunnel_toml(**changes)))


def test_a_tcp_and_a_udp_tunnel_may_share_a_port_two_udp_ones_may_not() -> None:
    base = {**TUNNEL, "listen": '"127.0.0.1:5353"'}
    tcp = toml_table("[[tunnel]]", base, {"name": '"a"'})
    udp = toml_table("[[tunnel]]", base, {"name": '"b"', "protocol": '"udp"'})
    both = toml_table("[[tunnel]]", base, {"name": '"c"', "protocol": '"tcp+udp"'})
    assert len(load(tcp + udp).tunnels) == 2
    assert any("also used by tunnel[0].listen" in e for e in errors_of(udp + both))


def test_udp_rules_load_with_their_protocol() -> None:
    text = f"""
[server]
listen = "127.0.0.1:0"
[[server.client]]
name = "c"
token_sha256 = "{HASH_A}"
allow_connect = ["udp:127.0.0.1:53", "127.0.0.1:53"]
allow_listen = ["udp:0.0.0.0:51820"]
"""
    server = load(text).server
    assert server is not None
    (entry,) = server.clients
    assert [r.protocol for r in entry.allow_connect] == ["udp", "tcp"]
    assert entry.may_listen(Address("0.0.0.0", 51820), "udp")
    assert not entry.may_listen(Address("0.0.0.0", 51820))
