"""Plain counters that the tunnel layers keep and the metrics collector reads at scrape time.

Nothing here calls prometheus_client: incrementing an int is all the hot path pays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class TunnelStats:
    """Counters of one tunnel (client side) or one client entry (server side)."""

    name: str
    up: bool = False
    client: str = ""  # server side: the client entry's name (``name`` is the tunnel's)
    connects: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    backoff_seconds: float = 0.0
    streams_active: int = 0
    streams_opened: int = 0
    stream_open_failures: Counter[str] = field(default_factory=Counter)
    stream_resets: Counter[str] = field(default_factory=Counter)  # by resets.Cut value
    sent_bytes: int = 0
    received_bytes: int = 0
    sessions_active: int = 0
    sessions_detached: int = 0  # server side: of sessions_active, those without a link
    detached: bool = False  # client side: the tunnel's session is detached, resuming
    resumes: Counter[str] = field(default_factory=Counter)  # by result: ok or a refusal code
    replayed_bytes: int = 0  # resent by resumes
    detached_bytes: int = 0  # server side: held for replay by the detached sessions
    # UDP tunnels (udp.py): datagrams each way, drops by reason (udp.DROP_REASONS), flows
    datagrams_sent: int = 0  # into the tunnel, toward the other side
    datagrams_received: int = 0  # out of the tunnel, written to a UDP socket
    datagram_drops: Counter[str] = field(default_factory=Counter)
    flows_active: int = 0
    flows_opened: int = 0
    flows_expired: int = 0  # ended by udp_idle_timeout


@dataclass
class ServerStats:
    """Counters of the tunnel server as a whole."""

    rejected: Counter[str] = field(default_factory=Counter)
    resumes: Counter[str] = field(default_factory=Counter)  # by result, as TunnelStats'


@dataclass
class LimitStats:
    """How often each resource limit refused or closed something, by limit name (a fixed
    set: ``limits.LIMIT_NAMES``)."""

    hits: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class TunnelServer:
    """One server of a client tunnel (``server`` may list several), read at scrape time."""

    tunnel: str
    server: str  # its URL, as configured
    up: bool  # its session is open
    streams: int  # streams open on its sessions (a draining one's included)
    name: str = ""  # what the server called itself in its 101 (X-Aiowstunnel-Server)


@dataclass
class MetricsSnapshot:
    """What the collector reads at each scrape; built by the daemon's provider callable."""

    tunnels: Iterable[TunnelStats] = ()  # client-side tunnels
    server_clients: Iterable[TunnelStats] = ()  # server side, one per (client entry, tunnel)
    server: ServerStats | None = None
    reload_ok: bool = True
    reload_timestamp: float | None = None  # time.time() of the last successful (re)load
    limits: LimitStats | None = None
    tunnel_servers: Iterable[TunnelServer] = ()  # each client tunnel's session per server


@dataclass
class Health:
    """What ``/healthz`` reports; built by the daemon's health callable."""

    tunnels: Mapping[str, bool] = field(default_factory=dict)  # client tunnels: name -> up
    #: instances a reload replaced or removed, still draining: name -> streams still open
    draining: Mapping[str, int] = field(default_factory=dict)
    #: server side, None without a server: client entry -> tunnel name -> has a session
    server: Mapping[str, Mapping[str, bool]] | None = None
    #: each client tunnel's sessions, one per server it lists
    servers: Iterable[TunnelServer] = ()
    #: SIGTERM came: /healthz fails (503) so that a balancer sends nothing new here
    stopping: bool = False

    def report(self) -> tuple[bool, dict[str, object]]:
        """What ``/healthz`` answers: healthy (200, else 503) and its JSON body."""
        tunnels = {name: _state(up) for name, up in self.tunnels.items()}
        healthy = all(state == "up" for state in tunnels.values()) and not self.stopping
        answer: dict[str, object] = {
            "status": "stopping" if self.stopping else "ok" if healthy else "degraded",
            "tunnels": tunnels,
        }
        if self.stopping:
            answer["stopping"] = True
        servers: dict[str, dict[str, dict[str, object]]] = {}
        for s in self.servers:  # tunnel -> server URL -> its session
            entry: dict[str, object] = {"state": _state(s.up), "streams": s.streams}
            if s.name:
                entry["name"] = s.name
            servers.setdefault(s.tunnel, {})[s.server] = entry
        if servers:
            answer["servers"] = servers
        if self.draining:
            answer["draining"] = dict(self.draining)
        if self.server is not None:
            answer["server"] = {
                entry: {name: _state(up) for name, up in names.items()}
                for entry, names in self.server.items()
            }
        return healthy, answer


def _state(up: bool) -> str:
    return "up" if up else "down"
