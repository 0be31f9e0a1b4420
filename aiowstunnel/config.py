"""The daemon's configuration: TOML text in, frozen dataclasses out, and ``diff(old, new)``.

This module owns the schema of ``/etc/aiowstunnel.toml`` (docs/configuration.md): each key,
its type, default and check. ``load_config`` is pure apart from an injected token-file reader,
so ``aiowstunnel check``, ``run`` and a SIGHUP reload all see the same result.
"""

from __future__ import annotations

import difflib
import enum
import hmac
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, TypeVar
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import wire
from .addresses import Address, AddressRule, Endpoint
from .backoff import BackoffPolicy
from .errors import AddressError, ConfigError, describe
from .handshake import DEFAULT_PATH, Mode
from .limits import DEFAULT_METRICS_CONNECTIONS, ServerLimits
from .policy import ClientPolicy, token_digest
from .settings import MIN_MAX_FRAME, SessionSettings

__all__ = [
    "Config",
    "ConfigDiff",
    "LogConfig",
    "MetricsConfig",
    "Secret",
    "ServerConfig",
    "TunnelSpec",
    "diff",
    "load_config",
    "read_config",
    "read_secret_file",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
#: Loopback: the metrics name every client and count its bytes; opening them is a choice.
DEFAULT_METRICS_LISTEN = "127.0.0.1:9100"
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: Servers one tunnel may list (`server` as an array): each is a session kept up.
MAX_TUNNEL_SERVERS = 16
_INT32_MAX = 2**31 - 1
#: The defaults of every session setting (settings.py writes them, once).
_SESSION = SessionSettings()
#: Names become a metrics label and a journald field value: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")

SecretReader = Callable[[Path], str]


# --------------------------------------------------------------------------- the data


class Secret:
    """A token. Prints as ``***`` (repr, str, f-strings, logs); compares by value.

    Comparing by value lets a reload see that a tunnel's token changed (and restart it).
    """

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def reveal(self) -> str:
        """The token itself; call it only where it goes on the wire."""
        return self._text

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._text.encode(), other._text.encode())

    def __hash__(self) -> int:
        return hash(self._text)


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus exporter (and ``/healthz``); off when not ``enabled``."""

    enabled: bool
    listen: Address
    max_connections: int = DEFAULT_METRICS_CONNECTIONS


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: ``level`` is one of :data:`LOG_LEVELS`."""

    level: str


@dataclass(frozen=True)
class ServerConfig:
    """``[server]`` and its ``[[server.client]]`` entries. Paths are absolute."""

    listen: Address
    path: str
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    clients: tuple[ClientPolicy, ...]
    #: window, max_streams, max_frame, handshake_timeout, ping_interval, ping_timeout
    settings: SessionSettings = field(default_factory=SessionSettings)
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: how this server names itself in the 101 (X-Aiowstunnel-Server); "" for the host name
    name: str = ""


@dataclass(frozen=True)
class TunnelSpec:
    """One ``[[tunnel]]``: everything needed to run it, and nothing else, so that two specs
    compare equal exactly when the tunnel need not restart. Paths are absolute."""

    name: str
    mode: Mode
    server: Endpoint
    token: Secret
    listen: Address
    connect: Address
    ca_file: Path | None
    client_cert: Path | None
    client_key: Path | None
    proxy: str | None
    backoff: BackoffPolicy
    #: window, ping_interval, ping_timeout (the others keep their defaults)
    settings: SessionSettings = field(default_factory=SessionSettings)
    #: the second and later servers when ``server`` is an array: one session to each
    more_servers: tuple[Endpoint, ...] = ()

    @property
    def uses_tls(self) -> bool:
        return self.server.secure

    @property
    def servers(self) -> tuple[Endpoint, ...]:
        """Every server of the tunnel, in config order (one session is kept to each)."""
        return (self.server, *self.more_servers)


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration file."""

    metrics: MetricsConfig
    log: LogConfig
    server: ServerConfig | None
    tunnels: tuple[TunnelSpec, ...]
    shutdown_timeout: float
    source: str
    #: every token_file named, for the permission checks of ``check`` and start (audit.py)
    token_files: tuple[Path, ...] = ()
    #: on SIGTERM, how long /healthz fails while everything still runs, before GOAWAY
    stop_grace: float = 0.0


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload must do, by tunnel name, each tuple in config order.

    ``changed`` tunnels restart; ``unchanged`` ones keep their streams. ``server_changed``
    means the ``[server]`` section (clients included) differs; ``metrics_changed`` means the
    exporter must rebind.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    server_changed: bool = False
    metrics_changed: bool = False


# --------------------------------------------------------------------------- public API


def read_secret_file(path: Path) -> str:
    """Read a token file: its text without one trailing newline (``\\n`` or ``\\r\\n``).

    Raises:
        OSError: the file cannot be read.
        UnicodeDecodeError: the file is not UTF-8.
    """
    text = path.read_text(encoding="utf-8")
    for newline in ("\r\n", "\n"):
        if text.endswith(newline):
            return text[: -len(newline)]
    return text


def load_config(
    text: str,
    base_dir: Path,
    source: str = "<config>",
    read_secret: SecretReader = read_secret_file,
) -> Config:
    """Parse and validate a configuration.

    Args:
        text: the TOML text.
        base_dir: the folder relative paths resolve against (the config file's folder).
        source: the file name, for error messages.
        read_secret: reads a token file given its absolute path; injected for tests.

    Returns:
        The configuration, with every default filled in.

    Raises:
        ConfigError: listing every problem found, each message starting with the key path
            (``tunnel[2].conect: unknown key (line 14)``).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already says "(at line L, column C)".
        raise ConfigError([f"TOML syntax error: {exc}"], source) from None
    loader = _Loader(text, Path(base_dir), read_secret)
    config = loader.load(data, source)
    if loader.errors or config is None:
        raise ConfigError(loader.errors, source)
    return config


def read_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; relative paths in it resolve against its folder.

    Args:
        path: the file.

    Returns:
        The configuration.

    Raises:
        ConfigError: the file cannot be read, or its content is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {describe(exc)}"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["cannot read: not UTF-8 text"], str(path)) from None
    # absolute(), so that paths stay right whatever the daemon's working directory later is.
    return load_config(text, path.absolute().parent, str(path))


def diff(old: Config, new: Config) -> ConfigDiff:
    """Compare two configurations by tunnel name (as rathole's config watcher does).

    A tunnel whose spec is equal in both is unchanged; a renamed tunnel is one removed and
    one added.

    Args:
        old: the running configuration.
        new: the configuration to switch to.

    Returns:
        The names added, removed, changed and unchanged, and whether the server and the
        metrics exporter differ.
    """
    before = {t.name: t for t in old.tunnels}
    after = {t.name: t for t in new.tunnels}
    return ConfigDiff(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=tuple(n for n in after if n in before and before[n] != after[n]),
        unchanged=tuple(n for n in after if n in before and before[n] == after[n]),
        server_changed=old.server != new.server,
        metrics_changed=old.metrics != new.metrics,
    )


# --------------------------------------------------------------------------- loading

KeyPath = tuple[str | int, ...]
T = TypeVar("T")


class _Required(enum.Enum):
    """The default of a key that must be given."""

    REQUIRED = enum.auto()


_REQUIRED = _Required.REQUIRED


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


# bool is an int in Python, but `ping_interval = true` is a mistake, not 1 second.
def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_string(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


def _is_boolean(value: object) -> TypeGuard[bool]:
    return isinstance(value, bool)


def _describe(value: object, secret: bool = False) -> str:
    """How a wrong value shows in an error; a secret shows only its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if secret or not isinstance(value, str | int | float):
        kind = {str: "a string", int: "an integer", float: "a number"}.get(type(value))
        return kind or "a date/time"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Table:
    """One TOML table being read: each key is taken once, and ``close`` reports the rest."""

    def __init__(self, loader: _Loader, path: KeyPath, data: dict[str, Any]) -> None:
        self.loader = loader
        self.path = path
        self.data = data
        self._taken: set[str] = set()

    def error(self, key: str | None, message: str) -> None:
        self.loader.error(self.path if key is None else (*self.path, key), message)

    def has(self, key: str) -> bool:
        return key in self.data

    def take(self, key: str, default: object = _REQUIRED) -> Any:
        """The raw value (any TOML value); ``default`` when absent (an error if there is
        none: then None)."""
        self._taken.add(key)
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            self.error(key, "required key is missing")
            return None
        return default

    def expect(self, *keys: str) -> None:
        """Mark keys as part of the schema without reading them (for ``close``'s hints)."""
        self._taken.update(keys)

    def close(self) -> None:
        for key in self.data:
            if key not in self._taken:
                hint = difflib.get_close_matches(key, sorted(self._taken), n=1)
                self.error(key, "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))

    # Typed readers: each returns the value, or None after recording an error.

    def _typed(
        self,
        key: str,
        default: T | _Required | None,
        check: Callable[[object], TypeGuard[T]],
        kind: str,
    ) -> T | None:
        if key not in self.data:
            self.take(key, default)  # marks it read; records the error if it is required
            return None if isinstance(default, _Required) else default
        value = self.take(key)
        if not check(value):
            self.error(key, f"expected {kind}, got {_describe(value)}")
            return None
        return value

    def string(self, key: str, default: str | _Required | None = _REQUIRED) -> str | None:
        return self._typed(key, default, _is_string, "a string")

    def boolean(self, key: str, default: bool | _Required = _REQUIRED) -> bool | None:
        return self._typed(key, default, _is_boolean, "true or false")

    def number(
        self, key: str, default: float, minimum: float = 0.0, strict: bool = True
    ) -> float | None:
        """A float (an integer is accepted); ``strict``: must exceed ``minimum``."""
        value = self._typed(key, default, _is_number, "a number")
        if value is None:
            return None
        if not math.isfinite(value):
            self.error(key, f"expected a finite number, got {value}")
            return None
        if value < minimum or (strict and value == minimum):
            self.error(key, f"must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
            return None
        return float(value)

    def integer(self, key: str, default: int | None, low: int, high: int) -> int | None:
        """An integer in ``low..high``; ``default`` (None: no value) when absent."""
        value = self._typed(key, default, _is_integer, "an integer")
        if value is not None and not low <= value <= high:
            self.error(key, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def address(
        self, key: str, allow_zero_port: bool, need_host: bool = False
    ) -> Address | None:
        text = self.string(key)
        if text is None:
            return None
        try:
            address = Address.parse(text, allow_zero_port=allow_zero_port)
        except AddressError as exc:
            self.error(key, str(exc))
            return None
        if need_host and not address.host:
            self.error(key, f"{text!r}: a host is required")
            return None
        return address

    def path_value(self, key: str) -> Path | None:
        """An optional file path, resolved against the config file's folder."""
        text = self.string(key, None)
        if text is None:
            return None
        if not text:
            self.error(key, "expected a file path, got ''")
            return None
        return self.loader.base_dir / text

    def name(self) -> str | None:
        name = self.string("name")
        if name is not None and not _NAME.fullmatch(name):
            self.error("name", f"{name!r}: use only letters, digits, '_', '.' and '-'")
            return None
        return name

    def table(self, key: str) -> _Table | None:
        """A sub-table, or None when absent (or, after an error, not a table)."""
        value = self.take(key, None)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {_describe(value)}")
            return None
        return _Table(self.loader, (*self.path, key), value)

    def tables(self, key: str, header: str) -> list[_Table]:
        """An array of tables (``[[header]]``)."""
        value = self.take(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.error(key, f"expected an array of tables ([[{header}]]), got {_describe(value)}")
            return []
        return [_Table(self.loader, (*self.path, key, i), v) for i, v in enumerate(value)]

    def strings(self, key: str) -> Iterator[tuple[KeyPath, str]]:
        """An optional array of strings, each with its own path for errors."""
        value = self.take(key, [])
        if not isinstance(value, list):
            self.error(key, f"expected an array of strings, got {_describe(value)}")
            return
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield (*self.path, key, i), item
            else:
                self.loader.error((*self.path, key, i), f"expected a string, got {_describe(item)}")


class _Loader:
    """Builds a Config from parsed TOML, collecting every error instead of stopping."""

    def __init__(self, text: str, base_dir: Path, read_secret: SecretReader) -> None:
        self.base_dir = base_dir
        self.read_secret = read_secret
        self._found: list[tuple[int, str]] = []
        self._lines = _key_lines(text)
        self.token_files: list[Path] = []

    @property
    def errors(self) -> list[str]:
        """Every error so far, in file order (those without a line first)."""
        return [message for _, message in sorted(self._found, key=lambda found: found[0])]

    def error(self, path: KeyPath, message: str) -> None:
        # A missing key has no line of its own: point at its table's header instead.
        line = None
        for n in range(len(path), 0, -1):
            line = self._lines.get(_dotted(path[:n]))
            if line is not None:
                break
        suffix = f" (line {line})" if line is not None else ""
        self._found.append((line or 0, f"{_dotted(path)}: {message}{suffix}"))

    def load(self, data: dict[str, Any], source: str) -> Config | None:
        root = _Table(self, (), data)
        metrics = self.metrics(root.table("metrics") or _Table(self, ("metrics",), {}))
        log = self.log(root.table("log") or _Table(self, ("log",), {}))
        daemon = root.table("daemon") or _Table(self, ("daemon",), {})
        shutdown_timeout = daemon.number("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT, 0, False)
        stop_grace = daemon.number("stop_grace", 0.0, 0, False)
        daemon.close()
        server_table = root.table("server")
        server = self.server(server_table) if server_table is not None else None
        tunnel_tables = root.tables("tunnel", "tunnel")
        tunnels = [self.tunnel(t) for t in tunnel_tables]
        root.close()
        self.check_unique_names(tunnel_tables)
        self.check_binds(metrics, server, tunnels)
        if self.errors or metrics is None or log is None or None in tunnels:
            return None
        assert shutdown_timeout is not None and stop_grace is not None  # else an error
        return Config(
            metrics=metrics,
            log=log,
            server=server,
            tunnels=tuple(t for t in tunnels if t is not None),
            shutdown_timeout=shutdown_timeout,
            source=source,
            token_files=tuple(dict.fromkeys(self.token_files)),
            stop_grace=stop_grace,
        )

    # ------------------------------------------------------------------ sections

    def metrics(self, t: _Table) -> MetricsConfig | None:
        enabled = t.boolean("enabled", True)
        t.expect("listen")
        if t.has("listen"):
            listen = t.address("listen", allow_zero_port=True)
        else:
            listen = Address.parse(DEFAULT_METRICS_LISTEN)
        max_connections = t.integer("max_connections", DEFAULT_METRICS_CONNECTIONS, 1, 65536)
        t.close()
        if enabled is None or listen is None or max_connections is None:
            return None
        return MetricsConfig(enabled=enabled, listen=listen, max_connections=max_connections)

    def log(self, t: _Table) -> LogConfig | None:
        level = t.string("level", "info")
        if level is not None and level not in LOG_LEVELS:
            t.error("level", f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
            level = None
        t.close()
        return LogConfig(level) if level is not None else None

    def server(self, t: _Table) -> ServerConfig | None:
        mark = len(self._found)
        listen = t.address("listen", allow_zero_port=True)
        path = t.string("path", DEFAULT_PATH)
        if path is not None and (not path.startswith("/") or re.search(r"[\s?#]", path)):
            t.error("path", f"{path!r}: must start with '/' and hold no spaces, '?' or '#'")
        tls_cert = t.path_value("tls_cert")
        tls_key = t.path_value("tls_key")
        tls_client_ca = t.path_value("tls_client_ca")
        self.check_pair(t, "tls_cert", "tls_key")
        if t.has("tls_client_ca") and not t.has("tls_cert"):
            t.error("tls_client_ca", "client certificates need TLS: set tls_cert and tls_key")
        settings = self.session_settings(
            t,
            max_streams=t.integer("max_streams", _SESSION.max_streams, 1, _INT32_MAX),
            handshake_timeout=t.number("handshake_timeout", _SESSION.handshake_timeout),
            max_frame=t.integer("max_frame", _SESSION.max_frame, MIN_MAX_FRAME, _INT32_MAX),
        )
        limits = self.limits(t)
        name = t.string("name", "")
        if name and not _NAME.fullmatch(name):
            t.error("name", f"{name!r}: use only letters, digits, '_', '.' and '-'")
        entries = t.tables("client", "server.client")
        if not entries and isinstance(t.data.get("client", []), list):
            t.error(
                "client",
                "at least one [[server.client]] is required (the daemon is never an open relay)",
            )
        clients = [self.client(c) for c in entries]
        t.close()
        self.check_unique_names(entries)
        self.check_unique_tokens(entries, clients)
        if len(self._found) > mark:
            return None
        assert listen is not None and path is not None and settings is not None  # as above
        return ServerConfig(
            listen=listen,
            path=path,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            clients=tuple(c for c in clients if c is not None),
            settings=settings,
            limits=limits,
            name=name or "",
        )

    def limits(self, t: _Table) -> ServerLimits:
        """The resource limits of ``[server]``; absent fd-bound ones stay None (derived
        from the open-files limit when the server starts)."""
        d = ServerLimits()
        values = {
            "max_handshakes": t.integer("max_handshakes", None, 1, _INT32_MAX),
            "max_handshakes_per_address": t.integer(
                "max_handshakes_per_address", d.max_handshakes_per_address, 1, _INT32_MAX
            ),
            # at least one ordinary upgrade request (a few hundred bytes, a long token)
            "max_handshake_bytes": t.integer(
                "max_handshake_bytes", d.max_handshake_bytes, 1024, 1024 * 1024
            ),
            "max_sessions_total": t.integer("max_sessions_total", None, 1, _INT32_MAX),
            "max_streams_total": t.integer("max_streams_total", None, 1, _INT32_MAX),
            "max_client_streams": t.integer("max_client_streams", None, 1, _INT32_MAX),
            "max_send_buffer": t.integer(
                "max_send_buffer", d.max_send_buffer, 2 * 1024 * 1024, _INT32_MAX
            ),
            "max_violations": t.integer("max_violations", d.max_violations, 1, _INT32_MAX),
        }
        # an error is already recorded for a None that had a default
        return ServerLimits(**{k: v for k, v in values.items() if v is not None})

    def client(self, t: _Table) -> ClientPolicy | None:
        mark = len(self._found)
        name = t.name()
        if t.has("token"):
            # Server-side tokens live in a file or as a hash, never inline
            # (docs/architecture.md, Design rules: Default deny).
            t.take("token")
            t.error("token", "inline tokens are not accepted here: use token_file or token_sha256")
        digest = None
        key = self.one_of(t, "token_file", "token_sha256")
        if key == "token_file":
            token = self.token_from_file(t)
            digest = token_digest(token) if token is not None else None
        elif key == "token_sha256":
            text = t.string("token_sha256")
            if text is not None and not _HEX64.fullmatch(text):
                t.error("token_sha256", "expected 64 hexadecimal characters (a SHA-256 digest)")
            elif text is not None:
                digest = bytes.fromhex(text)
        allow_connect = self.rules(t, "allow_connect")
        allow_listen = self.rules(t, "allow_listen")
        max_sessions = t.integer("max_sessions", ClientPolicy.max_sessions, 1, _INT32_MAX)
        t.close()
        if len(self._found) > mark or digest is None:
            return None
        assert name is not None and max_sessions is not None  # else an error was recorded
        return ClientPolicy(
            name=name,
            token_sha256=digest,
            allow_connect=allow_connect,
            allow_listen=allow_listen,
            max_sessions=max_sessions,
        )

    def tunnel(self, t: _Table) -> TunnelSpec | None:
        mark = len(self._found)
        name = t.name()
        mode_text = t.string("mode")
        mode = None
        if mode_text is not None:
            try:
                mode = Mode(mode_text)
            except ValueError:
                t.error("mode", f"expected 'connect' or 'listen', got {mode_text!r}")
        servers = self.server_urls(t)
        server = servers[0] if servers else None
        token = None
        key = self.one_of(t, "token_file", "token")
        if key == "token_file":
            token = self.token_from_file(t)
        elif key == "token":
            value = t.take("token")
            if not isinstance(value, str):
                t.error("token", f"expected a string, got {_describe(value, secret=True)}")
            else:
                token = self.check_token(t, "token", value, "")
        # The listener may take port 0 ("any free port"); a dial target needs a real one.
        listen = t.address("listen", allow_zero_port=True)
        connect = t.address("connect", allow_zero_port=False, need_host=True)
        ca_file = t.path_value("ca_file")
        client_cert = t.path_value("client_cert")
        client_key = t.path_value("client_key")
        self.check_pair(t, "client_cert", "client_key")
        if server is not None and not server.secure:
            # Silently ignoring a CA file would let an operator believe the link is verified.
            for tls_key in ("ca_file", "client_cert", "client_key"):
                if t.has(tls_key):
                    t.error(tls_key, "only used with a wss:// server")
        proxy = self.proxy_url(t)
        backoff = self.backoff(t)
        settings = self.session_settings(t)
        t.close()
        if len(self._found) > mark:
            return None
        # Each None was recorded as an error, so there is none left here.
        assert name is not None and mode is not None and server is not None
        assert token is not None and listen is not None and connect is not None
        assert backoff is not None and settings is not None
        return TunnelSpec(
            name=name,
            mode=mode,
            server=server,
            token=Secret(token),
            listen=listen,
            connect=connect,
            ca_file=ca_file,
            client_cert=client_cert,
            client_key=client_key,
            proxy=proxy,
            backoff=backoff,
            settings=settings,
            more_servers=servers[1:],
        )

    def session_settings(
        self,
        t: _Table,
        max_streams: int | None = _SESSION.max_streams,
        handshake_timeout: float | None = _SESSION.handshake_timeout,
        max_frame: int | None = _SESSION.max_frame,
    ) -> SessionSettings | None:
        """The session's settings: window, ping_interval and ping_timeout, which both ends
        take with the same defaults and bounds, and the server's three (read by the caller:
        None after an error); None after an error (already recorded)."""
        interval = _SESSION.ping_interval
        assert interval is not None  # a config always pings; only the library turns it off
        window = t.integer("window", _SESSION.window, 1, wire.MAX_WINDOW)
        ping_interval = t.number("ping_interval", interval)
        ping_timeout = t.number("ping_timeout", _SESSION.ping_timeout)
        if (
            window is None
            or ping_interval is None
            or ping_timeout is None
            or max_streams is None
            or handshake_timeout is None
            or max_frame is None
        ):
            return None
        return SessionSettings(
            window=window,
            max_streams=max_streams,
            max_frame=max_frame,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            handshake_timeout=handshake_timeout,
        )

    def backoff(self, tunnel: _Table) -> BackoffPolicy | None:
        defaults = BackoffPolicy()
        t = tunnel.table("backoff")
        if t is None:
            return None if tunnel.has("backoff") else defaults
        initial = t.number("initial", defaults.initial)
        maximum = t.number("max", defaults.max)
        factor = t.number("factor", defaults.factor, 1.0, strict=False)
        reset_after = t.number("reset_after", defaults.reset_after, 0.0, strict=False)
        t.close()
        if initial is None or maximum is None or factor is None or reset_after is None:
            return None
        if maximum < initial:
            # Name the key the operator wrote: that is the one to fix.
            if t.has("max"):
                t.error("max", f"must be >= initial ({initial:g}), got {maximum:g}")
            else:
                t.error("initial", f"must be <= max ({maximum:g}, the default), got {initial:g}")
            return None
        return BackoffPolicy(initial, maximum, factor, reset_after)

    # ------------------------------------------------------------------ values

    def server_urls(self, t: _Table) -> tuple[Endpoint, ...]:
        """``server``: one URL, or an array of them (a session to each); () after an error."""
        value = t.take("server")
        if value is None:
            return ()  # missing: recorded
        if isinstance(value, str):
            endpoint = self.server_url(("server",), t, value)
            return (endpoint,) if endpoint is not None else ()
        if not isinstance(value, list):
            t.error("server", f"expected a URL or an array of URLs, got {_describe(value)}")
            return ()
        if not value:
            t.error("server", "expected at least one URL")
            return ()
        if len(value) > MAX_TUNNEL_SERVERS:
            t.error("server", f"at most {MAX_TUNNEL_SERVERS} servers, got {len(value)}")
            return ()
        found: list[Endpoint] = []
        ok = True
        for i, item in enumerate(value):
            where: KeyPath = ("server", i)
            if not isinstance(item, str):
                self.error((*t.path, *where), f"expected a URL, got {_describe(item)}")
                ok = False
                continue
            endpoint = self.server_url(where, t, item)
            if endpoint is None:
                ok = False
            elif endpoint in found:
                self.error((*t.path, *where), f"{item!r} is listed twice")
                ok = False
            elif found and endpoint.secure != found[0].secure:
                # One TLS setup (ca_file, client_cert) serves every server of the tunnel.
                self.error((*t.path, *where), "mixes ws:// and wss://: use one scheme")
                ok = False
            else:
                found.append(endpoint)
        return tuple(found) if ok else ()

    def server_url(self, where: KeyPath, t: _Table, text: str) -> Endpoint | None:
        try:
            return Endpoint.parse(text, DEFAULT_PATH)
        except AddressError as exc:
            self.error((*t.path, *where), str(exc))
            return None

    def proxy_url(self, t: _Table) -> str | None:
        text = t.string("proxy", None)
        if text is None:
            return None
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            t.error("proxy", f"{text!r}: {exc}")
            return None
        problem = None
        if parts.scheme != "http":
            problem = "expected an http://host:port URL"
        elif not parts.hostname:
            problem = "the URL has no host"
        elif port == 0:
            problem = "port 0 is not a proxy port"
        elif parts.username is not None or parts.password is not None:
            problem = "proxy credentials are not supported"
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            problem = "expected http://host:port, with no path"
        if problem:
            t.error("proxy", f"{text!r}: {problem}")
            return None
        return text

    def rules(self, t: _Table, key: str) -> tuple[AddressRule, ...]:
        rules = []
        for path, text in t.strings(key):
            try:
                rules.append(AddressRule.parse(text))
            except AddressError as exc:
                self.error(path, str(exc))
        return tuple(rules)

    def token_from_file(self, t: _Table) -> str | None:
        path = t.path_value("token_file")
        if path is None:
            return None  # the error is already recorded
        self.token_files.append(path)
        try:
            text = self.read_secret(path)
        except FileNotFoundError:
            t.error("token_file", f"{path}: no such file")
            return None
        except PermissionError:
            t.error("token_file", f"{path}: permission denied")
            return None
        except IsADirectoryError:
            t.error("token_file", f"{path}: is a directory")
            return None
        except OSError as exc:
            t.error("token_file", f"{path}: {describe(exc)}")
            return None
        except UnicodeDecodeError:
            t.error("token_file", f"{path}: not UTF-8 text")
            return None
        return self.check_token(t, "token_file", text, f"{path}: ")

    def check_token(self, t: _Table, key: str, token: str, where: str) -> str | None:
        # The token travels in an `Authorization: Bearer` header, which the server strips:
        # a space or control character would make it fail to match, silently.
        if not token:
            t.error(key, f"{where}the token is empty")
            return None
        if not all("!" <= c <= "~" for c in token):
            t.error(key, f"{where}the token must be printable ASCII with no spaces or newlines")
            return None
        return token

    # ------------------------------------------------------------------ cross-checks

    def one_of(self, t: _Table, a: str, b: str) -> str | None:
        """Which of two exclusive keys is given; an error unless exactly one is."""
        t.expect(a, b)
        if t.has(a) and t.has(b):
            # Read neither: which one the operator meant is the question to answer first.
            t.error(b, f"give either {a} or {b}, not both")
            return None
        if t.has(a):
            return a
        if t.has(b):
            return b
        t.error(a, f"required key is missing (or {b})")
        return None

    def check_pair(self, t: _Table, a: str, b: str) -> None:
        """Two keys that go together: both or neither."""
        if t.has(a) != t.has(b):
            present, missing = (a, b) if t.has(a) else (b, a)
            t.error(present, f"needs {missing} too")

    def check_unique_names(self, tables: list[_Table]) -> None:
        # Read from the raw tables, so a duplicate is reported even in an entry with other errors.
        seen: dict[str, KeyPath] = {}
        for t in tables:
            name = t.data.get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                t.error("name", f"{name!r} is already used by {_dotted(seen[name])}")
            else:
                seen[name] = t.path

    def check_unique_tokens(
        self, entries: list[_Table], clients: list[ClientPolicy | None]
    ) -> None:
        # Two entries with one token would make authentication pick one of them arbitrarily.
        seen: dict[bytes, _Table] = {}
        for entry, client in zip(entries, clients, strict=True):
            if client is None:
                continue
            first = seen.setdefault(client.token_sha256, entry)
            if first is not entry:
                key = "token_file" if entry.has("token_file") else "token_sha256"
                entry.error(key, f"same token as {_dotted(first.path)}")

    def check_binds(
        self,
        metrics: MetricsConfig | None,
        server: ServerConfig | None,
        tunnels: list[TunnelSpec | None],
    ) -> None:
        """Two local listeners on one address would fail at start: say so now (best effort)."""
        binds: list[tuple[KeyPath, Address]] = []
        if metrics is not None and metrics.enabled:
            binds.append((("metrics", "listen"), metrics.listen))
        if server is not None:
            binds.append((("server", "listen"), server.listen))
        for i, spec in enumerate(tunnels):
            # In LISTEN mode the listener is on the remote server, not here.
            if spec is not None and spec.mode is Mode.CONNECT:
                binds.append((("tunnel", i, "listen"), spec.listen))
        for n, (path, address) in enumerate(binds):
            for other_path, other in binds[:n]:
                if address.port and _overlap(address, other):
                    self.error(path, f"{address} is also used by {_dotted(other_path)} ({other})")
                    break


def _overlap(a: Address, b: Address) -> bool:
    if a.port != b.port:
        return False
    if a.host.lower() == b.host.lower() or "" in (a.host, b.host):
        return True
    for wildcard, other in ((a.host, b.host), (b.host, a.host)):
        if wildcard == "0.0.0.0" and re.fullmatch(r"[\d.]+", other):
            return True
        if wildcard == "::" and ":" in other:
            return True
    return False


# --------------------------------------------------------------------------- line numbers

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')"""
_HEADER_LINE = re.compile(r"^\s*(\[\[|\[)\s*(.+?)\s*(?:\]\]|\])\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=\s*(.*)$")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_KEY_PART})\s*=")


def _key_parts(text: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(_KEY_PART, text)]


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths (``tunnel[1].listen``) to the line that sets them.

    A plain text scan, good for the files people write; it only adds line numbers to
    messages, so a miss costs nothing but the number.
    """
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}  # [[x]] headers seen so far, by path
    prefix = ""
    in_string: str | None = None  # the closing quotes of a multi-line string we are in
    for number, line in enumerate(text.splitlines(), 1):
        if in_string is not None:
            if in_string in line:
                in_string = None
            continue
        header = _HEADER_LINE.match(line)
        if header:
            parts = _key_parts(header.group(2))
            prefix = ""
            for i, part in enumerate(parts):
                prefix = f"{prefix}.{part}" if prefix else part
                if i == len(parts) - 1 and header.group(1) == "[[":
                    arrays[prefix] = arrays.get(prefix, 0) + 1
                if prefix in arrays:
                    prefix += f"[{arrays[prefix] - 1}]"
            lines.setdefault(prefix, number)
            continue
        match = _KEY_LINE.match(line)
        if not match:
            continue
        path = prefix
        for part in _key_parts(match.group(1)):
            path = f"{path}.{part}" if path else part
        lines.setdefault(path, number)
        value = match.group(2)
        if value.startswith("{"):
            for inner in _INLINE_KEY.finditer(value):
                lines.setdefault(f"{path}.{inner.group(1).strip(chr(34) + chr(39))}", number)
        for quotes in ('"""', "'''"):
            if value.count(quotes) == 1:
                in_string = quotes
    return lines
