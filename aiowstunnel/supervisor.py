"""Runs the configured server and tunnels, and applies a new config as a diff.

Each tunnel is a :class:`Client` with its own task and backoff, so a tunnel that fails
never blocks another. A reload starts added tunnels, stops removed ones, restarts changed
ones and leaves unchanged ones alone (their streams go on); on the server, new client rules
apply at once and a changed listener is rebound. No change waits for another: an instance
a reload replaces or removes drains its open streams in the background (up to
``shutdown_timeout``, then they are reset), and a changed CONNECT tunnel's new instance takes
over the old one's listening socket, so its port never stops accepting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any

from .addresses import Address, SocketAddress
from .client import Client
from .config import Config, ConfigDiff, ServerConfig, TunnelSpec, diff
from .errors import ConfigError
from .logs import tunnel_logger
from .server import Server
from .socks5 import Credentials
from .stats import Health, LimitStats, MetricsSnapshot, ServerStats, TunnelServer, TunnelStats
from .tls import server_ssl, tunnel_ssl

log = logging.getLogger("aiowstunnel.supervisor")


def build_server(
    config: ServerConfig,
    stats: ServerStats | None = None,
    client_stats: dict[tuple[str, str], TunnelStats] | None = None,
    limit_stats: LimitStats | None = None,
) -> Server:
    return Server(
        config.listen.host,
        config.listen.port,
        ssl=server_ssl(config),
        path=config.path,
        clients=config.clients,
        settings=config.settings,
        stats=stats,  # the same counters across a rebind: Prometheus counters never go back
        client_stats=client_stats,
        limits=config.limits,
        limit_stats=limit_stats,
        socket_mode=config.socket_mode,
        name=config.name,
    )


def _host_port(endpoint: SocketAddress | None) -> tuple[str, int]:
    """The Client's (host, port) for an endpoint: ``("unix:/path", 0)`` for a unix socket,
    ``("", 0)`` for none (the socks modes)."""
    if isinstance(endpoint, Address):
        return endpoint.host, endpoint.port
    return (str(endpoint), 0) if endpoint is not None else ("", 0)


def build_client(spec: TunnelSpec, index: int, stats: TunnelStats) -> Client:
    return Client(
        spec.mode,
        spec.server.host,
        spec.server.port,
        *_host_port(spec.listen),
        *_host_port(spec.connect),
        ssl=tunnel_ssl(spec, index),
        path=spec.server.path,
        token=spec.token.reveal(),
        backoff=spec.backoff,
        settings=spec.settings,
        name=spec.name,
        stats=stats,
        proxy=spec.proxy,
        socket_mode=spec.socket_mode,
        proxy_protocol=spec.proxy_protocol,
        allow_connect=spec.allow_connect,
        socks_credentials=(
            Credentials(spec.socks_username, spec.socks_password.reveal())
            if spec.socks_username and spec.socks_password
            else None
        ),
        protocol=spec.protocol,
        more_servers=spec.more_servers,
    )


class Supervisor:
    """The server and the tunnels of one configuration, kept running."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server: Server | None = None
        self.tunnels: dict[str, Client] = {}
        self.tunnel_stats: dict[str, TunnelStats] = {}
        self.server_stats = ServerStats()
        self.client_stats: dict[tuple[str, str], TunnelStats] = {}
        self.limit_stats = LimitStats()  # the server's and the exporter's limit hits
        self.reload_ok = True
        self.reload_timestamp: float | None = None
        #: instances a reload replaced or removed, draining in the background: task -> name
        #: and the instance (a Client, or the Server under the name "server")
        self.draining: dict[asyncio.Task[object], tuple[str, Client | Server]] = {}
        #: SIGTERM came: /healthz fails first, so that a balancer stops sending here
        self.stopping = False

    async def start(self) -> None:
        """Bind the server (if any) and start every tunnel.

        Raises:
            OSError: the server's address cannot be bound.
            ConfigError: a TLS file cannot be loaded.
        """
        if self.config.server is not None:
            self.server = build_server(
                self.config.server, self.server_stats, self.client_stats, self.limit_stats
            )
            await self.server.listen()
        for index, spec in enumerate(self.config.tunnels):
            self._start_tunnel(spec, index)

    async def listeners_bound(self, timeout: float = 10.0) -> None:
        """Wait until each CONNECT tunnel tried its first bind (bound, or error logged)."""
        waits = [c.first_bind.wait() for c in self.tunnels.values()]
        if waits:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout)

    async def first_attempts(self, timeout: float) -> None:
        """Wait until every tunnel's first connection attempt is over (up or failed)."""
        waits = [c.first_attempt.wait() for c in self.tunnels.values()]
        if waits:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout)

    def _start_tunnel(
        self, spec: TunnelSpec, index: int, predecessor: Client | None = None
    ) -> Client | None:
        stats = self.tunnel_stats.setdefault(spec.name, TunnelStats(spec.name))
        try:
            client = build_client(spec, index, stats)
        except ConfigError as exc:  # checked at load; a file may vanish before reload
            tunnel_logger(spec.name, log).error("tunnel %s not started: %s", spec.name, exc)
            return None
        client.predecessor = predecessor
        self.tunnels[spec.name] = client
        client.start()
        return client

    def _retire(
        self, name: str, client: Client, timeout: float, successor: Client | None = None
    ) -> None:
        """Let ``client`` drain its open streams in the background, up to ``timeout``.

        With a ``successor`` that takes over its listener, it accepts until the successor
        took the socket (after its first connection attempt); else it stops accepting now.
        """
        if successor is None:
            client.stop_accepting()

        async def drain() -> None:
            if successor is not None:
                await successor.first_bind.wait()  # set by the take-over (or its close)
            streams = client.streams_active
            cut = await client.close(timeout)
            if streams:
                tunnel_logger(name, log).info(
                    "previous instance stopped: %s open when replaced, %d finished, "
                    "%d reset at the %g s drain timeout",
                    _streams(streams),
                    streams - cut,
                    cut,
                    timeout,
                )

        self._background(name, client, drain())

    def _background(
        self, name: str, instance: Client | Server, work: Coroutine[Any, Any, object]
    ) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.draining[task] = (name, instance)
        task.add_done_callback(self._drained)

    def _drained(self, task: asyncio.Task[object]) -> None:
        self.draining.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("draining a previous instance failed: %r", task.exception())

    async def reload(self, new: Config) -> ConfigDiff:
        """Apply a validated config: only what changed is touched, and nothing waits for
        the streams of a replaced or removed instance (they drain in the background).

        Raises:
            OSError: a changed server listener cannot be bound; the old one keeps running.
            ConfigError: a TLS file cannot be loaded; nothing was changed.
        """
        change = diff(self.config, new)
        timeout = new.shutdown_timeout
        if change.server_changed:
            await self._reload_server(new.server, timeout)
        names = {spec.name: index for index, spec in enumerate(new.tunnels)}
        old_specs = {spec.name: spec for spec in self.config.tunnels}
        for name in change.removed:
            client = self.tunnels.pop(name, None)
            if client is not None:
                self._retire(name, client, timeout)
            self.tunnel_stats.pop(name, None)
        for name in change.changed:
            spec, index = new.tunnels[names[name]], names[name]
            old = self.tunnels.pop(name, None)
            if old is None:
                self._start_tunnel(spec, index)
                continue
            if _hands_over(old_specs[name], spec):
                successor = self._start_tunnel(spec, index, predecessor=old)
                self._retire(name, old, timeout, successor)
            else:
                self._retire(name, old, timeout)  # GOAWAY first: a LISTEN port is released
                self._start_tunnel(spec, index)
        for name in change.added:
            self._start_tunnel(new.tunnels[names[name]], names[name])
        self.config = new
        log.info(
            "configuration reloaded: %d added, %d removed, %d changed, %d unchanged%s",
            len(change.added),
            len(change.removed),
            len(change.changed),
            len(change.unchanged),
            ", server updated" if change.server_changed else "",
        )
        return change

    async def _reload_server(self, new: ServerConfig | None, timeout: float) -> None:
        old = self.config.server
        if new is None:
            if self.server is not None:
                self._background("server", self.server, self.server.close(timeout))
                self.server = None
            return
        if self.server is not None and old is not None and _same_listener(old, new):
            self.server.set_clients(new.clients)  # sessions stay while still allowed
            return
        replacement = build_server(new, self.server_stats, self.client_stats, self.limit_stats)
        if self.server is not None and old is not None and old.listen == new.listen:
            # Same address: the listening socket is handed over, so no client is refused.
            # Without a single socket to hand over, the old one lets go first.
            sock = self.server.detach_listener()
            if sock is None:
                await asyncio.sleep(0)  # uvloop closes the old sockets on the next turn
            await replacement.listen(sock)
        else:
            await replacement.listen()  # the old one keeps serving if this fails
        if self.server is not None:
            self._background("server", self.server, self.server.close(timeout))
        self.server = replacement

    async def stop(self, timeout: float) -> tuple[int, int]:
        """GOAWAY everywhere, let streams drain up to ``timeout``, close. Bounded.

        Returns:
            How many streams were open, and how many of them were reset when the drain ran
            out (the others finished by themselves).
        """
        instances: list[Client | Server] = list(self.tunnels.values())
        if self.server is not None:
            instances.append(self.server)
        instances += [instance for _, instance in self.draining.values()]
        open_streams = sum(instance.streams_active for instance in instances)
        cut = 0

        async def close(instance: Client | Server) -> None:
            nonlocal cut
            cut += await instance.close(timeout)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*map(close, instances)), timeout + 2.0)
        for task in list(self.draining):
            task.cancel()
        self.tunnels.clear()
        return open_streams, cut

    # -- what the daemon reports --------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(
            tunnels=tuple(self.tunnel_stats.values()),
            server_clients=tuple(self.client_stats.values()) if self.server else (),
            server=self.server_stats if self.config.server is not None else None,
            reload_ok=self.reload_ok,
            reload_timestamp=self.reload_timestamp,
            limits=self.limit_stats,
            tunnel_servers=self.tunnel_servers(),
        )

    def tunnel_servers(self) -> tuple[TunnelServer, ...]:
        """Each tunnel's session per server it lists (``server`` may be an array)."""
        return tuple(
            TunnelServer(
                name,
                member.url,
                member.session_up,
                member.own_streams,
                member.affinity.server if member.session_up else "",
            )
            for name, client in self.tunnels.items()
            for member in client.group
        )

    def draining_streams(self) -> dict[str, int]:
        """Instances a reload replaced or removed, still draining: name -> open streams."""
        out: dict[str, int] = {}
        for name, instance in self.draining.values():
            out[name] = out.get(name, 0) + instance.streams_active
        return out

    def health(self) -> Health:
        server: dict[str, dict[str, bool]] | None = None
        if self.server is not None:
            server = {}
            for (entry, tunnel), stats in self.client_stats.items():
                server.setdefault(entry, {})[tunnel] = stats.sessions_active > 0
        return Health(
            tunnels={name: client.up for name, client in self.tunnels.items()},
            draining=self.draining_streams(),
            server=server,
            servers=self.tunnel_servers(),
            stopping=self.stopping,
        )

    def status_line(self) -> str:
        """One line for systemd's STATUS=, e.g. ``3/4 tunnels up, 12 streams``."""
        up = sum(1 for client in self.tunnels.values() if client.up)
        streams = sum(s.streams_active for s in self.tunnel_stats.values())
        parts = [f"{up}/{len(self.tunnels)} tunnels up", f"{streams} streams"]
        if self.server is not None:
            sessions = sum(s.sessions_active for s in self.client_stats.values())
            detached = sum(s.sessions_detached for s in self.client_stats.values())
            kept = f" ({detached} detached)" if detached else ""
            parts.append(f"server: {sessions} sessions{kept}")
        resuming = [name for name, client in self.tunnels.items() if client.detached]
        connecting = [
            name
            for name, client in self.tunnels.items()
            if not client.up and not client.first_attempt.is_set()
        ]
        down = [
            name
            for name, client in self.tunnels.items()
            if not client.up and not client.detached and client.first_attempt.is_set()
        ]
        partial = [
            f"{name} ({sum(m.session_up for m in client.group)}/{len(client.group)})"
            for name, client in self.tunnels.items()
            if client.up and len(client.group) > 1 and not all(m.session_up for m in client.group)
        ]
        if resuming:  # its connection broke; its streams wait for the resume
            more = "..." if len(resuming) > 3 else ""
            parts.append("detached: " + ", ".join(resuming[:3]) + more)
        if connecting:
            parts.append(f"connecting: {len(connecting)}")
        if down:
            parts.append("down: " + ", ".join(down[:3]) + ("..." if len(down) > 3 else ""))
        if partial:
            more = "..." if len(partial) > 3 else ""
            parts.append("servers up: " + ", ".join(partial[:3]) + more)
        draining = self.draining_streams()
        if draining:
            parts.append(
                "draining: "
                + ", ".join(f"{name} ({_streams(n)})" for name, n in sorted(draining.items()))
            )
        if not self.reload_ok:
            parts.append("last reload FAILED, running the previous config")
        return ", ".join(parts)


def _hands_over(old: TunnelSpec, new: TunnelSpec) -> bool:
    """Whether a changed tunnel's new instance takes over the old one's listening socket:
    both CONNECT (the listener is ours) on the same address."""
    return old.mode is new.mode and not new.mode.server_listens and old.listen == new.listen


def _streams(n: int) -> str:
    return f"{n} stream{'' if n == 1 else 's'}"


def _same_listener(old: ServerConfig, new: ServerConfig) -> bool:
    """True when only the client entries differ (no rebind needed)."""
    return dataclasses.replace(new, clients=old.clients) == old
