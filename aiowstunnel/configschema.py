"""The schema of ``/etc/aiowstunnel.toml``: each section's keys, types, defaults and checks
(docs/configuration.md), building the dataclasses of ``configmodel``."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from .addresses import Address, AddressRule, SocketAddress, UnixPath
from .configmodel import (
    DEFAULT_METRICS_LISTEN,
    DEFAULT_SHUTDOWN_TIMEOUT,
    INT32_MAX,
    LOG_LEVELS,
    SESSION_DEFAULTS,
    Config,
    LogConfig,
    MetricsConfig,
    Secret,
    ServerConfig,
    TunnelSpec,
)
from .configtable import KeyPath, Table, describe_value, dotted
from .configvalues import ValueReader
from .handshake import DEFAULT_PATH, MAX_UDP_IDLE, PROXY_PROTOCOL_VERSIONS, Mode, TunnelProtocol
from .limits import DEFAULT_METRICS_CONNECTIONS, ServerLimits
from .policy import ClientPolicy, token_digest
from .settings import MIN_MAX_FRAME

_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")


class Loader(ValueReader):
    """Builds a Config from parsed TOML, collecting every error instead of stopping."""

    def load(self, data: dict[str, Any], source: str) -> Config | None:
        root = Table(self, (), data)
        metrics = self.metrics(root.table("metrics") or Table(self, ("metrics",), {}))
        log = self.log(root.table("log") or Table(self, ("log",), {}))
        daemon = root.table("daemon") or Table(self, ("daemon",), {})
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

    def metrics(self, t: Table) -> MetricsConfig | None:
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

    def log(self, t: Table) -> LogConfig | None:
        level = t.string("level", "info")
        if level is not None and level not in LOG_LEVELS:
            t.error("level", f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
            level = None
        t.close()
        return LogConfig(level) if level is not None else None

    def server(self, t: Table) -> ServerConfig | None:
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
            max_streams=t.integer("max_streams", SESSION_DEFAULTS.max_streams, 1, INT32_MAX),
            handshake_timeout=t.number("handshake_timeout", SESSION_DEFAULTS.handshake_timeout),
            max_frame=t.integer("max_frame", SESSION_DEFAULTS.max_frame, MIN_MAX_FRAME, INT32_MAX),
        )
        limits = self.limits(t)
        socket_mode = t.socket_mode()
        name = t.name(required=False)
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
        assert socket_mode is not None
        return ServerConfig(
            listen=listen,
            path=path,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            clients=tuple(c for c in clients if c is not None),
            settings=settings,
            limits=limits,
            socket_mode=socket_mode,
            name=name or "",
        )

    def limits(self, t: Table) -> ServerLimits:
        """The resource limits of ``[server]``; absent fd-bound ones stay None (derived
        from the open-files limit when the server starts)."""
        d = ServerLimits()
        values = {
            "max_handshakes": t.integer("max_handshakes", None, 1, INT32_MAX),
            "max_handshakes_per_address": t.integer(
                "max_handshakes_per_address", None, 1, INT32_MAX
            ),
            # at least one ordinary upgrade request (a few hundred bytes, a long token)
            "max_handshake_bytes": t.integer(
                "max_handshake_bytes", d.max_handshake_bytes, 1024, 1024 * 1024
            ),
            "max_sessions_total": t.integer("max_sessions_total", None, 1, INT32_MAX),
            "max_streams_total": t.integer("max_streams_total", None, 1, INT32_MAX),
            "max_client_streams": t.integer("max_client_streams", None, 1, INT32_MAX),
            "max_send_buffer": t.integer(
                "max_send_buffer", d.max_send_buffer, 2 * 1024 * 1024, INT32_MAX
            ),
            "max_violations": t.integer("max_violations", d.max_violations, 1, INT32_MAX),
            "max_detached_sessions": t.integer(
                "max_detached_sessions", d.max_detached_sessions, 1, INT32_MAX
            ),
            "max_detached_per_client": t.integer(
                "max_detached_per_client", d.max_detached_per_client, 1, INT32_MAX
            ),
            "max_detached_bytes": t.integer("max_detached_bytes", d.max_detached_bytes, 1, 2**62),
        }
        # an error is already recorded for a None that had a default
        return ServerLimits(**{k: v for k, v in values.items() if v is not None})

    def client(self, t: Table) -> ClientPolicy | None:
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
        max_sessions = t.integer("max_sessions", ClientPolicy.max_sessions, 1, INT32_MAX)
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

    def tunnel(self, t: Table) -> TunnelSpec | None:
        mark = len(self._found)
        name = t.name()
        mode_text = t.string("mode")
        mode = None
        if mode_text is not None:
            try:
                mode = Mode(mode_text)
            except ValueError:
                modes = ", ".join(repr(m.value) for m in Mode)
                t.error("mode", f"expected one of {modes}, got {mode_text!r}")
        servers = self.server_urls(t)
        server = servers[0] if servers else None
        token = None
        key = self.one_of(t, "token_file", "token")
        if key == "token_file":
            token = self.token_from_file(t)
        elif key == "token":
            value = t.take("token")
            if not isinstance(value, str):
                t.error("token", f"expected a string, got {describe_value(value, secret=True)}")
            else:
                token = self.check_token(t, "token", value, "")
        # The listener may take port 0 ("any free port"); a dial target needs a real one.
        listen = t.socket_address("listen", allow_zero_port=True)
        connect = None
        if mode is not None and mode.socks:
            t.expect("connect")
            if t.has("connect"):
                t.error("connect", f"not used in {mode} mode: each SOCKS request names its target")
        else:
            connect = t.socket_address("connect", allow_zero_port=False, need_host=True)
        socket_mode = t.socket_mode()
        if t.has("socket_mode") and not isinstance(listen, UnixPath):
            t.error("socket_mode", "only used with a unix socket listen (unix:/path)")
        elif t.has("socket_mode") and mode is not None and mode.server_listens:
            t.error("socket_mode", f"not used in {mode} mode: the server owns that socket")
        allow_connect, socks_username, socks_password = self.socks_keys(t, mode)
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
        proxy_protocol = t.string("proxy_protocol", None)
        if proxy_protocol is not None and proxy_protocol not in PROXY_PROTOCOL_VERSIONS:
            t.error("proxy_protocol", f"expected 'v1' or 'v2', got {proxy_protocol!r}")
        backoff = self.backoff(t)
        settings = self.session_settings(t)
        protocol, udp_idle_timeout = self.protocol(t, mode, listen, connect)
        t.close()
        if len(self._found) > mark:
            return None
        # Each None was recorded as an error, so there is none left here.
        assert name is not None and mode is not None and server is not None
        assert token is not None and listen is not None
        assert connect is not None or mode.socks  # the socks modes have no fixed target
        assert backoff is not None and settings is not None and socket_mode is not None
        if udp_idle_timeout is not None:
            settings = dataclasses.replace(settings, udp_idle_timeout=udp_idle_timeout)
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
            allow_connect=allow_connect,
            socks_username=socks_username,
            socks_password=socks_password,
            socket_mode=socket_mode,
            proxy_protocol=proxy_protocol,
            protocol=protocol,
            more_servers=servers[1:],
        )

    def protocol(
        self,
        t: Table,
        mode: Mode | None,
        listen: SocketAddress | None,
        connect: SocketAddress | None,
    ) -> tuple[TunnelProtocol, float | None]:
        """``protocol`` and ``udp_idle_timeout`` (None: the default); errors recorded."""
        t.expect("udp_idle_timeout")
        text = t.string("protocol", TunnelProtocol.TCP.value)
        protocol = TunnelProtocol.TCP
        if text is not None:
            try:
                protocol = TunnelProtocol(text)
            except ValueError:
                t.error("protocol", f"expected 'tcp', 'udp' or 'tcp+udp', got {text!r}")
        if protocol.udp and mode is not None and mode.socks:
            t.error("protocol", f"UDP is carried in the connect and listen modes, not {mode}")
        elif protocol.udp and UnixPath in (type(listen), type(connect)):
            key = "listen" if isinstance(listen, UnixPath) else "connect"
            t.error(key, f"protocol = {text!r} needs a host:port, not a unix socket")
        if not t.has("udp_idle_timeout"):
            return protocol, None
        idle = t.number("udp_idle_timeout", SESSION_DEFAULTS.udp_idle_timeout, 0.0, strict=False)
        if idle is not None and idle > MAX_UDP_IDLE:
            t.error("udp_idle_timeout", f"must be <= {MAX_UDP_IDLE:g} (or 0: never), got {idle:g}")
        elif not protocol.udp and text is not None:
            # Silently ignoring it would let an operator believe flows end by it.
            t.error("udp_idle_timeout", 'only used with protocol = "udp" or "tcp+udp"')
        return protocol, idle

    def socks_keys(
        self, t: Table, mode: Mode | None
    ) -> tuple[tuple[AddressRule, ...], str | None, Secret | None]:
        """allow_connect (reverse-socks5), socks_username and socks_password_file (both
        SOCKS modes: in reverse-socks5 they go to the server in the upgrade request)."""
        t.expect("allow_connect", "socks_username", "socks_password_file")
        allow_connect: tuple[AddressRule, ...] = ()
        if t.has("allow_connect"):
            allow_connect = self.rules(t, "allow_connect")
            if mode is not None and mode is not Mode.REVERSE_SOCKS5:
                t.error("allow_connect", "only used with mode = 'reverse-socks5'")
        elif mode is Mode.REVERSE_SOCKS5:
            t.error(
                "allow_connect",
                "required key is missing: what the server's SOCKS clients may reach through "
                "this host (default deny)",
            )
        username = password = None
        if t.has("socks_username") or t.has("socks_password_file"):
            if mode is not None and not mode.socks:
                key = "socks_username" if t.has("socks_username") else "socks_password_file"
                t.error(key, "only used with mode = 'socks5' or 'reverse-socks5'")
            self.check_pair(t, "socks_username", "socks_password_file")
            username = t.string("socks_username", None)
            if username is not None and not 0 < len(username.encode()) <= 255:
                t.error("socks_username", "must be 1 to 255 bytes (RFC 1929)")
            path = t.path_value("socks_password_file")
            if path is not None:
                text = self.secret_text(t, "socks_password_file", path)
                if text is not None and not 0 < len(text.encode()) <= 255:
                    t.error("socks_password_file", f"{path}: the password must be 1 to 255 bytes")
                elif text is not None:
                    password = Secret(text)
        return allow_connect, username, password

    def check_unique_names(self, tables: list[Table]) -> None:
        # Read from the raw tables, so a duplicate is reported even in an entry with other errors.
        seen: dict[str, KeyPath] = {}
        for t in tables:
            name = t.data.get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                t.error("name", f"{name!r} is already used by {dotted(seen[name])}")
            else:
                seen[name] = t.path

    def check_unique_tokens(self, entries: list[Table], clients: list[ClientPolicy | None]) -> None:
        # Two entries with one token would make authentication pick one of them arbitrarily.
        seen: dict[bytes, Table] = {}
        for entry, client in zip(entries, clients, strict=True):
            if client is None:
                continue
            first = seen.setdefault(client.token_sha256, entry)
            if first is not entry:
                key = "token_file" if entry.has("token_file") else "token_sha256"
                entry.error(key, f"same token as {dotted(first.path)}")

    def check_binds(
        self,
        metrics: MetricsConfig | None,
        server: ServerConfig | None,
        tunnels: list[TunnelSpec | None],
    ) -> None:
        """Two local listeners on one address would fail at start: say so now (best effort)."""
        binds: list[tuple[KeyPath, SocketAddress, tuple[str, ...]]] = []
        if metrics is not None and metrics.enabled:
            binds.append((("metrics", "listen"), metrics.listen, ("tcp",)))
        if server is not None:
            binds.append((("server", "listen"), server.listen, ("tcp",)))
        for i, spec in enumerate(tunnels):
            # In LISTEN mode the listener is on the remote server, not here.
            if spec is not None and not spec.mode.server_listens:
                binds.append((("tunnel", i, "listen"), spec.listen, spec.protocol.names))
        for n, (path, address, protocols) in enumerate(binds):
            for other_path, other, other_protocols in binds[:n]:
                if not set(protocols) & set(other_protocols):
                    continue  # a TCP and a UDP socket may share a port
                if isinstance(address, UnixPath) or isinstance(other, UnixPath):
                    clash = address == other
                else:
                    clash = bool(address.port) and _overlap(address, other)
                if clash:
                    self.error(path, f"{address} is also used by {dotted(other_path)} ({other})")
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
