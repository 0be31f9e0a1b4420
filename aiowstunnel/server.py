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
import socket
import ssl as ssl_module
from collections.abc import Iterable

from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from . import wire
from .addresses import Address
from .affinity import SERVER_HEADER, default_server_name
from .destinations import dialer, proxy_protocol
from .dial import Dial
from .errors import ProtocolViolation
from .handshake import DEFAULT_PATH, HEADER_EARLY_DATA, Refusal, RequestRefused
from .limits import QuietLog, ServerLimits, Slot
from .link import ws_log
from .logs import TunnelLogger, escape, tunnel_logger
from .policy import ClientPolicy, Policy
from .resets import Cut
from .resumeauth import (
    HEADER_RESUMABLE,
    parse_resumable,
    parse_resume_request,
)
from .serveraccess import (
    Grant,
    authenticate,
    check_grant,
    client_rules,
    same_tunnel,
    still_allowed,
)
from .serveradmit import Admission
from .serverlisten import bind_session_listener, hand_over, listen_endpoint, serve_flows
from .serverresume import ResumeRegistry
from .session import Phase, Session
from .settings import SessionSettings
from .stats import LimitStats, ServerStats, TunnelStats
from .tlsreads import TlsAccept
from .unixsock import DEFAULT_SOCKET_MODE

log = logging.getLogger("aiowstunnel.server")
#: Refusals: a flood of them costs a few lines per period, each saying how many were left
#: out (the counters have them all). Limit hits are serveradmit's.
quiet = QuietLog(log)

#: Distinct tunnel names kept per client entry (each is a metric label): a client that
#: sends more, or a new name per session, is folded into OTHER_TUNNELS.
MAX_TUNNEL_NAMES = 32
OTHER_TUNNELS = "(other)"  # parentheses: no valid tunnel name can collide with these
UNNAMED_TUNNEL = "(unnamed)"  # a client that sent no X-Aiowstunnel-Tunnel


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
        resume_timeout: seconds a session whose connection broke is kept for its client to
            resume it (protocol.md, Resumption); 0 turns resumption off.
        settings: the session's settings whole (the daemon's), instead of the eight above
            (:class:`SessionSettings`).
        stats, client_stats: counters to keep (the daemon passes the same ones to the server
            that replaces this one, so that Prometheus counters never go backwards);
            ``client_stats`` is keyed by (client entry name, tunnel name).
        limits: resource limits (docs/reliability.md, Limits); those left None are derived
            from the process's open-files limit when the server is built.
        limit_stats: where limit hits are counted.
        socket_mode: the file mode of a unix socket bound for a LISTEN session.
        name: how this server names itself in each 101 (``X-Aiowstunnel-Server``), so a
            client behind a balancer knows which server holds its session (the host name).
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
        resume_timeout: float = SessionSettings.resume_timeout,
        settings: SessionSettings | None = None,
        stats: ServerStats | None = None,
        client_stats: dict[tuple[str, str], TunnelStats] | None = None,
        limits: ServerLimits | None = None,
        limit_stats: LimitStats | None = None,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        name: str = "",
    ) -> None:
        self.host = host
        self.socket_mode = socket_mode
        self.port = port
        self.ssl = ssl
        self.path = path
        self.name = name or default_server_name()  # in each 101 (affinity.SERVER_HEADER)
        self.settings = SessionSettings.given(
            settings,
            window=window,
            max_streams=max_streams,
            max_frame=max_frame,
            handshake_timeout=handshake_timeout,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            resume_timeout=resume_timeout,
        )
        self.stats = stats if stats is not None else ServerStats()
        self.client_stats = client_stats if client_stats is not None else {}
        self.limits = (limits or ServerLimits()).resolve()
        self.limit_stats = limit_stats if limit_stats is not None else LimitStats()
        # the handshake, session and stream slots every connection takes from
        self.admission = Admission(self.limits, self.stats, self.limit_stats)
        self.sessions: dict[Session, Grant] = {}
        self.resumable = ResumeRegistry(self.settings, self.stats, self.limits, self.limit_stats)
        self.policy = Policy(None)
        self.set_clients(clients)
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: set[asyncio.Task[None]] = set()
        #: TLS handshakes under way (TlsAccept): a close lets them end within its timeout
        self._tls_handshakes: set[asyncio.Task[None]] = set()

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
        # TLS is started by the accepted connection itself (tlsreads.TlsAccept), once its
        # admission is checked: the listener itself is plain TCP
        factory = self._new_tls_connection if self.ssl else self._new_connection
        self._server = await listen_endpoint(factory, self.host, self.port, sock)
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
        return hand_over(server)

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
            grant.close_listeners()  # no new streams: stop accepting on LISTEN ports
        sessions = list(self.sessions)
        before = sum(s.drain_cut for s in sessions)  # a second close counts only its own
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(s.shutdown("server shutting down", timeout) for s in sessions))
        # A TLS handshake under way ends as before the close: its request is refused
        # (shutting_down), unless the drain's time is over by then.
        if self._tls_handshakes:
            late = set(self._tls_handshakes)
            left = started + timeout - asyncio.get_running_loop().time()
            if left > 0:
                _, late = await asyncio.wait(late, timeout=left)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
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
            reason = still_allowed(self.policy, grant)
            if reason:
                _session_log(session).warning("closing the session: %s", reason)
                session.close(CloseCode.POLICY_VIOLATION, reason)

    # -- sessions --------------------------------------------------------------------

    def _new_connection(self) -> asyncio.BaseProtocol:
        return self._new_session().link

    def _new_tls_connection(self) -> asyncio.BaseProtocol:
        session = self._new_session()
        guard = session.guard
        assert self.ssl is not None and guard is not None
        return TlsAccept(
            session.link,
            self.ssl,
            self.settings.handshake_timeout,
            guard.admit_before_tls,
            guard.settled,
            self._tls_handshakes,
        )

    def _new_session(self) -> Session:
        settings = self.settings
        ws = ServerProtocol(
            subprotocols=[Subprotocol(wire.SUBPROTOCOL)],
            max_size=settings.max_frame,
            logger=ws_log,
        )
        session = Session(
            ws,
            TunnelStats("unauthenticated"),
            settings=settings,
            on_request=self._on_request,
            name="server",
            guard=self.admission.guard(),
        )
        self.admission.watch(session, settings.handshake_timeout)
        return session

    def _on_request(self, session: Session, request: Request) -> None:
        task = asyncio.get_running_loop().create_task(self._authorize(session, request))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _authorize(self, session: Session, request: Request) -> None:
        grant: Grant | None = None
        reserved: list[Slot] = []  # released on every path but the session's start
        try:
            try:
                resume_id = parse_resume_request(request.headers)
                resumable = parse_resumable(request.headers.get(HEADER_RESUMABLE))
            except ProtocolViolation as exc:
                raise RequestRefused(Refusal.BAD_REQUEST, str(exc)) from None
            if resume_id is not None:
                # full authentication again, as a fresh request's
                asker, asked = authenticate(request, self.path, self.policy, closing=self._closing)
                self.resumable.resume(
                    session, request, resume_id, asker, asked, self.sessions, self.policy
                )
                return
            grant = await self._check(request, reserved)
            if not session.server_link.check_upgrade(request):  # websockets' own 400, sent
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
            if grant.request.mode.server_listens:
                await bind_session_listener(session, grant, self.socket_mode)
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
            session.server_link.reject(
                refused.refusal.status, refused.reason, label=refused.refusal.label
            )
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
            session.server_link.reject(500, "internal error", label="internal_error")
            return
        if session.closed.done():  # the client went away while we checked
            for slot in reserved:
                slot.release()
            grant.close_listeners()
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
        dial = None if grant.request.mode.server_listens else self._dialer(grant)
        headers = {SERVER_HEADER: self.name}
        # Early data both ways (protocol.md): what the client takes, what we take.
        session.mux.early_send = grant.request.early_data
        headers[HEADER_EARLY_DATA] = str(session.mux.early_receive)
        if grant.bound:
            headers["X-Aiowstunnel-Bound"] = grant.bound
        dial = serve_flows(session, grant, dial, headers, self.settings.connect_timeout)
        if resumable and self.settings.resume_timeout > 0:
            self.resumable.offer(session, headers)
        session.accept(request, dial, headers)
        _session_log(session).info("session opened: %s%s", grant.what, grant.request.protocol.note)

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
        client, tunnel = authenticate(request, self.path, self.policy, closing=self._closing)
        grant = Grant(client, tunnel)
        # A fresh session of a tunnel that has one detached: its client restarted, or gave
        # up resuming. The detached one will not come back: it makes room (its LISTEN
        # port too) instead of holding a session slot until it expires.
        for old, old_grant in list(self.sessions.items()):
            if old.phase is Phase.DETACHED and same_tunnel(old_grant, client, tunnel):
                old.expire(Cut.EXPIRED, "replaced by a fresh session of the same tunnel")
        # Taken now, synchronously: the checks below may await the resolver.
        reserved.append(self.admission.reserve(client))
        await check_grant(grant, self.settings.connect_timeout)
        return grant

    def _dialer(self, grant: Grant) -> Dial:
        """Each stream goes to the session's target, or to its OPEN's own if the client
        entry's allow_connect allows it (destinations.py): the entry as it is at each
        stream, so that a reload's narrower rules apply to the next one."""
        default = grant.target or grant.request.address
        header = proxy_protocol(grant.request.proxy_protocol)
        timeout = self.settings.connect_timeout
        return dialer(default, lambda: client_rules(grant.client), timeout, header)

    def _peer_going_away(self, session: Session) -> None:
        """The client sent GOAWAY (it stops, or a reload replaces it): no new stream may be
        opened for it, so its LISTEN port is released now, for its successor to bind."""
        grant = self.sessions.get(session)
        if grant is not None:
            grant.close_listeners()

    def _session_closed(self, session: Session) -> None:
        grant = self.sessions.pop(session, None)
        if grant is None:
            return
        self.resumable.forget(session)
        if session.ended_detached:
            session.stats.sessions_detached -= 1
        if grant.slot is not None:
            grant.slot.release()
        grant.close_listeners()  # at once: the client must be able to bind it again
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


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("tunnel server failed: %s", task.exception())
