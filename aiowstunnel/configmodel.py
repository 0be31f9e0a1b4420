"""The configuration as the daemon uses it: frozen dataclasses, one per section, and
``diff(old, new)``, what a reload must do. ``config`` builds them (docs/configuration.md)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

from .addresses import Address, AddressRule, Endpoint, SocketAddress
from .backoff import BackoffPolicy
from .handshake import Mode, TunnelProtocol
from .limits import DEFAULT_METRICS_CONNECTIONS, ServerLimits
from .policy import ClientPolicy
from .settings import SessionSettings
from .unixsock import DEFAULT_SOCKET_MODE

LOG_LEVELS = ("debug", "info", "warning", "error")
#: Loopback: the metrics name every client and count its bytes; opening them is a choice.
DEFAULT_METRICS_LISTEN = "127.0.0.1:9100"
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
INT32_MAX = 2**31 - 1
#: Servers one tunnel may list (`server` as an array): each is a session kept up.
MAX_TUNNEL_SERVERS = 16
#: The defaults of every session setting (settings.py writes them, once).
SESSION_DEFAULTS = SessionSettings()


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
    #: window, max_streams, max_frame, handshake_timeout, ping_interval, ping_timeout,
    #: resume_timeout
    settings: SessionSettings = field(default_factory=SessionSettings)
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: the file mode of unix sockets bound for LISTEN sessions
    socket_mode: int = DEFAULT_SOCKET_MODE
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
    listen: SocketAddress  # host:port or unix:/path
    connect: SocketAddress | None  # None in the socks modes: each request names its target
    ca_file: Path | None
    client_cert: Path | None
    client_key: Path | None
    proxy: str | None
    backoff: BackoffPolicy
    #: window, ping_interval, ping_timeout, resume_timeout (the others keep their defaults)
    settings: SessionSettings = field(default_factory=SessionSettings)
    #: reverse-socks5: the targets the server's SOCKS clients may reach through this host
    allow_connect: tuple[AddressRule, ...] = ()
    #: RFC 1929 username and password the SOCKS listener asks for (either socks mode)
    socks_username: str | None = None
    socks_password: Secret | None = None
    #: the file mode of a unix socket this host listens on (connect, socks5)
    socket_mode: int = DEFAULT_SOCKET_MODE
    #: "v1" / "v2": the dialing side sends that PROXY protocol header to each backend
    proxy_protocol: str | None = None
    #: what the tunnel carries: TCP streams, UDP datagram flows, or both on one port
    protocol: TunnelProtocol = TunnelProtocol.TCP
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
