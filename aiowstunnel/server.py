"""The tunnel server: accepts WebSocket sessions, checks who asks for what, serves them.

Every check happens before the upgrade (protocol.md, Handshake), so a refused client gets
an HTTP status and a plain-text reason, and a refused CONNECT target never sees a packet.
In LISTEN mode the server binds the listener for the session and closes it the moment the
session ends, so that the reconnecting client can bind it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl as ssl_module
from collections.abc import Iterable
from dataclasses import dataclass

from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from . import wire
from .addresses import Address, ip_or_none
from .affinity import SERVER_HEADER, SERVER_NAME
from .dial import Dial, tcp_dialer
from .errors import describe
from .handshake import DEFAULT_PATH, Mode, Refusal, RequestRefused, TunnelRequest
from .limits import QuietLog, ServerLimits, SessionGuard, Slot, Slots
from .link import Link, ws_log
from .logs import TunnelLogger, escape, tunnel_logger
from .policy import ClientPolicy, Policy
from .session import Phase, Session
from .settings import SessionSettings
from .stats import LimitStats, ServerStats, TunnelStats
from .tcp import TcpStream

log = logging.getLogger("aiowstunnel.server")
#: Refusals and limit hits: a flood of them costs a few lines per period, each saying how
#: many were left out (the counters have them all).
quiet = QuietLog(log)
#: A limit hit during the handshake -> the ``reason`` of server_rejected_total.
_HANDSHAKE_LIMITS = {
    "handshakes": "too_many_handshakes",
    "handshakes_per_address": "too_many_handshakes",
    "handshake_bytes": "handshake_too_large",
}

#: Distinct tunnel names kept per client entry (each is a metric label): a client that
#: sends more, or a new name per session, is folded into OTHER_TUNNELS.
MAX_TUNNEL_NAMES = 32
OTHER_TUNNELS = "(other)"  # parentheses: no valid tunnel name can collide with these
UNNAMED_TUNNEL = "(unnamed)"  # a client that sent no X-Aiowstunnel-Tunnel


@dataclass(eq=False)
class Grant:
    """What one accepted session was allowed: kept to re-check it when rules change."""

    client: ClientPolicy
    request: TunnelRequest
    target: Address | None = None  # CONNECT: where the server dials (pinned IP if resolved)
    listener: asyncio.Server | None = None  # LISTEN: the socket bound for this session
    bound: str = ""  # LISTEN: the address actually bound (port 0 resolved)
    slot: Slot | None = None  # its place in max_sessions and max_sessions_total


class Server:
    """A tunnel server.

    Args:
        host, port: where to listen for tunnel clients (port 0: any free port).
        ssl: an ``ssl.SSLContext`` for ``wss://`` (with ``verify_mode=CERT_REQUIRED`` and
            a CA loaded for mutual TLS).
        path: URL path of the WebSocket endpoint.
        clients: the client entries (tokens and rules). ``None`` makes an open relay, as
            the original aiowstunnel was: anyone may CONNECT anywhere and LISTEN anywhere.
        window: receive window per stream, in bytes.
        max_streams: streams one session may have open at once.
        max_frame: the largest WebSocket message accepted.
        handshake_timeout: seconds a connection has to complete TLS and the upgrade.
        connect_timeout: seconds to dial a CONNECT target.
        ping_interval, ping_timeout: keepalive; a silent client is dropped after both.
        settings: the session's settings whole (the daemon's), instead of the seven above
            (:class:`SessionSettings`).
        stats, client_stats: counters to keep (the daemon passes the same ones to the server
            that replaces this one, so that Prometheus counters never go backwards);
            ``client_stats`` is keyed by (client entry name, tunnel name).
        limits: resource limits (docs/reliability.md, Limits); those left None are derived
            from the process's open-files limit when the server is built.
        limit_stats: where limit hits are counted.
        name: how this server names itself in each 101 (``X-Aiowstunnel-Server``), so a
            client behind a balancer knows which server holds its session; the host name
            when empty.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        path: str = DEFAULT_PATH,
        clients: Iterable[ClientPolicy] | None = None,
        window: int = SessionSettings.window,
        max_streams: int = SessionSettings.max_streams,
        max_frame: int = SessionSettings.max_frame,
        handshake_timeout: float = SessionSettings.handshake_timeout,
        connect_timeout: float = SessionSettings.connect_timeout,
        ping_interval: float | None = SessionSettings.ping_interval,
        ping_timeout: float = SessionSettings.ping_timeout,
        settings: SessionSettings | None = None,
        stats: ServerStats | None = None,
        client_stats: dict[tuple[str, str], TunnelStats] | None = None,
        limits: ServerLimits | None = None,
        limit_stats: LimitStats | None = None,
        name: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.path = path
        #: the name sent in each 101 (affinity.SERVER_HEADER)
        self.name = name or _host_name()
        self.settings = SessionSettings.given(
            settings,
            window=window,
            max_streams=max_streams,
            max_frame=max_frame,
            handshake_timeout=handshake_timeout,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        self.stats = stats if stats is not None else ServerStats()
        self.client_stats = client_stats if client_stats is not None else {}
        self.limits = (limits or ServerLimits()).resolve()
        self.limit_stats = limit_stats if limit_stats is not None else LimitStats()
        lim = self.limits
        assert lim.max_handshakes and lim.max_sessions_total and lim.max_streams_total
        assert lim.max_client_streams
        self._handshakes = Slots(lim.max_handshakes)
        self._handshakes_per_address = Slots(lim.max_handshakes_per_address)
        self._sessions_total = Slots(lim.max_sessions_total)
        self._client_sessions = Slots(0)  # by client name; the bound is each max_sessions
        self._streams_total = Slots(lim.max_streams_total)
        self._client_streams = Slots(lim.max_client_streams)
        self.sessions: dict[Session, Grant] = {}
        self.policy = Policy(None)
        self.set_clients(clients)
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start listening in the background (the seed's API). Errors are logged."""
        self._task = asyncio.get_running_loop().create_task(self.listen())
        self._task.add_done_callback(_log_failure)

    async def listen(self, sock: socket.socket | None = None) -> None:
        """Bind the tunnel endpoint, or serve ``sock``, a listening socket handed over by
        the server this one replaces (:meth:`detach_listener`).

        Raises:
            OSError: the address cannot be bound; the message names it.
        """
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        tls_timeout = self.settings.handshake_timeout if self.ssl else None
        try:
            if sock is not None:
                self._server = await loop.create_server(
                    self._new_session,
                    sock=sock,
                    ssl=self.ssl,
                    ssl_handshake_timeout=tls_timeout,
                    backlog=1024,
                )
            else:
                self._server = await loop.create_server(
                    self._new_session,
                    self.host or None,
                    self.port,
                    ssl=self.ssl,
                    ssl_handshake_timeout=tls_timeout,
                    backlog=1024,
                )
        except OSError as exc:
            address = Address(self.host, self.port)
            raise OSError(exc.errno, f"cannot listen on {address}: {describe(exc)}") from exc
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        scheme = "wss" if self.ssl else "ws"
        log.info(
            "tunnel server listening on %s://%s%s", scheme, Address(self.host, self.port), self.path
        )

    def detach_listener(self) -> socket.socket | None:
        """Stop accepting here and hand the listening socket to a successor; it stays
        listening, so no client is refused meanwhile. None if there is no single socket."""
        self._closing = True
        server, self._server = self._server, None
        if server is None:
            return None
        sockets = list(server.sockets)
        sock = socket.socket(fileno=os.dup(sockets[0].fileno())) if len(sockets) == 1 else None
        server.close()
        return sock

    @property
    def streams_active(self) -> int:
        return sum(len(session.streams) for session in self.sessions)

    async def close(self, timeout: float = 5.0) -> int:
        """Stop accepting, send GOAWAY, let open streams drain up to ``timeout``, close.

        Safe to call twice. Returns how many streams were reset because the drain ran out.
        """
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._task
        if self._server is not None:
            self._server.close()
        for task in list(self._pending):
            task.cancel()
        for grant in self.sessions.values():
            if grant.listener is not None:
                grant.listener.close()  # no new streams: stop accepting on LISTEN ports
        sessions = list(self.sessions)
        before = sum(s.drain_cut for s in sessions)  # a second close counts only its own
        await asyncio.gather(*(s.shutdown("server shutting down", timeout) for s in sessions))
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        return sum(s.drain_cut for s in sessions) - before

    # -- policy ---------------------------------------------------------------------

    def set_clients(self, clients: Iterable[ClientPolicy] | None) -> None:
        """Replace the client entries; sessions whose permission was removed are closed.

        New sessions see the new rules at once; a session stays up while its client entry
        (same name, same token) still allows what it asked for.
        """
        self.policy = Policy(clients)
        if self.policy.open_relay:
            log.warning(
                "tunnel server has no client policy: it is an OPEN RELAY, anyone may connect "
                "anywhere through it and listen on any port; give it clients= to restrict it"
            )
        for session, grant in list(self.sessions.items()):
            reason = self._still_allowed(grant)
            if reason:
                _session_log(session).warning("closing the session: %s", reason)
                session.close(CloseCode.POLICY_VIOLATION, reason)

    def _still_allowed(self, grant: Grant) -> str:
        """Why a granted session is no longer allowed, or ``""`` (and then the session
        adopts its client's new entry, e.g. a raised max_sessions)."""
        if self.policy.open_relay:
            return ""
        current = next((c for c in self.policy.clients if c.name == grant.client.name), None)
        if current is None:
            return f"client entry {grant.client.name!r} was removed"
        if current.token_sha256 != grant.client.token_sha256:
            return f"the token of client {grant.client.name!r} changed"
        request = grant.request
        if request.mode is Mode.CONNECT:
            target = grant.target or request.address
            ip = ip_or_none(target.host)
            allowed = current.may_connect(request.address) or (
                ip is not None and current.may_connect_ip(ip, target.port)
            )
            if not allowed:
                return f"connect to {request.address} is no longer allowed"
        elif not current.may_listen(request.address):
            return f"listen on {request.address} is no longer allowed"
        grant.client = current
        return ""

    # -- sessions --------------------------------------------------------------------

    def _new_session(self) -> Link:
        settings = self.settings
        ws = ServerProtocol(
            subprotocols=[Subprotocol(wire.SUBPROTOCOL)],
            max_size=settings.max_frame,
            logger=ws_log,
        )
        guard = SessionGuard(
            self.limits,
            self._handshakes,
            self._handshakes_per_address,
            self._streams_total,
            self._client_streams,
            self._limit_hit,
        )
        # The Session takes its settings one by one until it takes a SessionSettings whole.
        session = Session(
            ws,
            TunnelStats("unauthenticated"),
            window=settings.window,
            max_streams=settings.max_streams,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            on_request=self._on_request,
            name="server",
            guard=guard,
        )
        loop = asyncio.get_running_loop()
        loop.call_later(settings.handshake_timeout, self._handshake_deadline, session)
        return session.link

    def _limit_hit(self, limit: str, peer: str) -> None:
        self.limit_stats.hits[limit] += 1
        reason = _HANDSHAKE_LIMITS.get(limit)
        if reason is not None:
            self.stats.rejected[reason] += 1
        quiet.warning(
            ("limit", limit),
            "limit %s reached: refused or closed a connection from %s",
            limit,
            peer,
            extra={"peer": peer},
        )

    def _handshake_deadline(self, session: Session) -> None:
        if session.guard is not None and session.transport is None:
            session.guard.answered()  # the TLS handshake failed: no connection_lost comes
        # transport None: the TLS handshake failed and asyncio already dropped the socket.
        if session.phase is Phase.HANDSHAKE and session.transport and not session.closed.done():
            self.stats.rejected["handshake_timeout"] += 1
            quiet.warning(
                "handshake_timeout",
                "dropping the connection: no complete handshake within %g s",
                self.settings.handshake_timeout,
                extra={"peer": session.peer},
            )
            session.abort(f"handshake timeout ({self.settings.handshake_timeout:g} s)")

    def _on_request(self, session: Session, request: Request) -> None:
        task = asyncio.get_running_loop().create_task(self._authorize(session, request))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _authorize(self, session: Session, request: Request) -> None:
        grant: Grant | None = None
        reserved: list[Slot] = []  # released on every path but the session's start
        try:
            grant = await self._check(request, reserved)
            if not session.check_upgrade(request):  # websockets' own 400, sent
                self.stats.rejected["bad_upgrade"] += 1
                quiet.warning(
                    "bad_upgrade",
                    "refused tunnel request from %s (client %s): invalid WebSocket upgrade",
                    session.peer,
                    grant.client.name,
                    extra={"peer": session.peer, "tunnel": grant.client.name},
                )
                for slot in reserved:
                    slot.release()
                return
            if grant.request.mode is Mode.LISTEN:
                await self._bind(session, grant)
        except RequestRefused as refused:
            for slot in reserved:
                slot.release()
            self.stats.rejected[refused.refusal.label] += 1
            name = grant.client.name if grant else ""
            quiet.warning(
                ("refused", refused.refusal),
                "refused the tunnel request: %d %s",
                refused.refusal.status,
                escape(refused.reason),  # it may quote the request (a path, a header)
                extra={"peer": session.peer, "client": name or None},
            )
            session.reject(refused.refusal.status, refused.reason)
            return
        except BaseException as exc:  # our bug, or cancelled: answer, never leave one hanging
            for slot in reserved:
                slot.release()
            if not isinstance(exc, Exception):
                raise
            log.exception(
                "checking the tunnel request from %s failed",
                session.peer,
                extra={"peer": session.peer},
            )
            self.stats.rejected["internal_error"] += 1
            session.reject(500, "internal error")
            return
        if session.closed.done():  # the client went away while we checked
            for slot in reserved:
                slot.release()
            if grant.listener is not None:
                grant.listener.close()
            return
        grant.slot = reserved[0] if reserved else None
        session.guard.client = grant.client.name  # type: ignore[union-attr]
        entry = grant.client.name
        tunnel = self._tunnel_label(entry, grant.request.tunnel)
        stats = self.client_stats.get((entry, tunnel))
        if stats is None:
            stats = self.client_stats[entry, tunnel] = TunnelStats(tunnel, client=entry)
        session.stats = stats
        session.name = tunnel
        session.client = entry
        stats.sessions_active += 1
        stats.connects += 1
        stats.up = True
        self.sessions[session] = grant
        session.on_close.append(self._session_closed)
        session.on_goaway.append(self._peer_going_away)
        dial = self._dialer(grant) if grant.request.mode is Mode.CONNECT else None
        headers = {SERVER_HEADER: self.name}
        if grant.bound:
            headers["X-Aiowstunnel-Bound"] = grant.bound
        session.accept(request, dial, extra_headers=headers)
        what = (
            f"connect to {grant.request.address}"
            if grant.request.mode is Mode.CONNECT
            else f"listen on {grant.bound}"
        )
        _session_log(session).info("session opened: %s", what)

    def _tunnel_label(self, entry: str, name: str) -> str:
        """The ``tunnel`` label for a session of ``entry``: its own name while the entry
        has fewer than MAX_TUNNEL_NAMES, else OTHER_TUNNELS (bounded cardinality)."""
        name = name or UNNAMED_TUNNEL
        if (entry, name) in self.client_stats:
            return name
        known = sum(1 for c, t in self.client_stats if c == entry and t != OTHER_TUNNELS)
        return name if known < MAX_TUNNEL_NAMES else OTHER_TUNNELS

    async def _check(self, request: Request, reserved: list[Slot]) -> Grant:
        """The grant for a request, or the refusal. The session's place is taken into
        ``reserved`` before the first await, so concurrent requests count each other."""
        if self._closing:
            raise RequestRefused(Refusal.SHUTTING_DOWN, "server is shutting down")
        # The request target is a path (origin-form), never split as a URL: urlsplit
        # would read "//evil/aiowstunnel" as host "evil" and path "/aiowstunnel".
        path = request.path.partition("?")[0]
        if path != self.path:
            raise RequestRefused(Refusal.NOT_FOUND, f"no tunnel endpoint at {path}")
        offered = [
            p.strip()
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",")
        ]
        if wire.SUBPROTOCOL not in offered:
            raise RequestRefused(
                Refusal.BAD_REQUEST,
                f"this server speaks the subprotocol {wire.SUBPROTOCOL}; "
                f"offered: {', '.join(offered) or 'none'}",
            )
        tunnel = TunnelRequest.from_headers(request.headers)
        client = self.policy.authenticate(tunnel.token)
        if client is None:
            reason = "missing bearer token" if tunnel.token is None else "invalid token"
            raise RequestRefused(Refusal.BAD_TOKEN, reason)
        grant = Grant(client, tunnel)
        if self._client_sessions.full(client.name, client.max_sessions):
            active = self._client_sessions.by_key.get(client.name, 0)
            raise RequestRefused(
                Refusal.TOO_MANY_SESSIONS,
                f"client {client.name!r} already has {active} sessions (max {client.max_sessions})",
            )
        if self._sessions_total.full():
            self._limit_hit("sessions", "")
            raise RequestRefused(
                Refusal.SERVER_FULL,
                f"the server has its maximum of {self._sessions_total.limit} sessions",
            )
        # Taken now, synchronously: the checks below may await the resolver.
        reserved.append(Slot((self._sessions_total, None), (self._client_sessions, client.name)))
        if tunnel.mode is Mode.CONNECT:
            grant.target = await self._connect_target(client, tunnel.address)
        elif not client.may_listen(tunnel.address):
            raise RequestRefused(
                Refusal.FORBIDDEN,
                f"client {client.name!r} may not listen on {tunnel.address} (not in allow_listen)",
            )
        return grant

    async def _connect_target(self, client: ClientPolicy, target: Address) -> Address:
        """Where to dial for a CONNECT request, or a 403 refusal.

        A name allowed by a name rule is dialed by name. A name allowed only through a
        CIDR rule is resolved here, and the session is pinned to an address that the rule
        allows, so a later DNS answer cannot steer it elsewhere.
        """
        if client.may_connect(target):
            return target
        if client.needs_resolution(target):
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(target.host, target.port, type=1),
                    self.settings.connect_timeout,
                )
            except (OSError, asyncio.TimeoutError) as exc:
                raise RequestRefused(
                    Refusal.FORBIDDEN, f"cannot resolve {target.host}: {describe(exc)}"
                ) from None
            for info in infos:
                ip = ip_or_none(str(info[4][0]))
                if ip is not None and client.may_connect_ip(ip, target.port):
                    return Address(str(ip), target.port)
            raise RequestRefused(
                Refusal.FORBIDDEN,
                f"client {client.name!r} may not connect to {target}: it resolves to addresses "
                "outside allow_connect",
            )
        raise RequestRefused(
            Refusal.FORBIDDEN,
            f"client {client.name!r} may not connect to {target} (not in allow_connect)",
        )

    def _dialer(self, grant: Grant) -> Dial:
        target = grant.target or grant.request.address
        return tcp_dialer(target.host, target.port, self.settings.connect_timeout)

    async def _bind(self, session: Session, grant: Grant) -> None:
        address = grant.request.address

        def new_stream() -> TcpStream:
            return session.new_stream()

        loop = asyncio.get_running_loop()
        try:
            grant.listener = await loop.create_server(
                new_stream, address.bind_host, address.port, backlog=1024
            )
        except OSError as exc:
            raise RequestRefused(
                Refusal.LISTEN_FAILED, f"cannot listen on {address}: {describe(exc)}"
            ) from None
        port = grant.listener.sockets[0].getsockname()[1]
        grant.bound = str(Address(address.host, port))

    def _peer_going_away(self, session: Session) -> None:
        """The client sent GOAWAY (it stops, or a reload replaces it): no new stream may be
        opened for it, so its LISTEN port is released now, for its successor to bind."""
        grant = self.sessions.get(session)
        if grant is not None and grant.listener is not None:
            grant.listener.close()

    def _session_closed(self, session: Session) -> None:
        grant = self.sessions.pop(session, None)
        if grant is None:
            return
        if grant.slot is not None:
            grant.slot.release()
        if grant.listener is not None:
            grant.listener.close()  # at once: the client must be able to bind it again
        stats = session.stats
        stats.sessions_active -= 1
        stats.up = stats.sessions_active > 0
        cut = session.cut_streams
        _session_log(session).info(
            "session ended: %s; %s",
            escape(session.close_reason),
            f"{cut} stream{'' if cut == 1 else 's'} reset" if cut else "no stream open",
        )


def _session_log(session: Session) -> TunnelLogger:
    """The server's log for one authenticated session: client entry, tunnel and peer."""
    return tunnel_logger(session.name, log, client=session.client, peer=session.peer)


def _host_name() -> str:
    """This host's name as a server name (affinity.SERVER_NAME), or "aiowstunnel"."""
    name = socket.gethostname()
    return name if SERVER_NAME.fullmatch(name) else "aiowstunnel"


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("tunnel server failed: %s", task.exception())
