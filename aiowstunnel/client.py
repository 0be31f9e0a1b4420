"""The tunnel client: keeps one tunnel up forever, reconnecting with backoff.

In CONNECT mode it owns the local listener (bound once, kept across reconnects) and opens
a stream per accepted connection; in LISTEN mode the server owns the listener and the
client dials ``connect_host:connect_port`` for each stream the server opens. It never
exits because the server is down, refuses it, or vanishes: it logs why and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import ssl as ssl_module
from collections.abc import Callable, Iterable, Sequence

from .addresses import AddressRule, Endpoint, SocketAddress, parse_proxy_url, socket_address
from .affinity import Affinity
from .backoff import Backoff, BackoffPolicy, asked_delay
from .clientconnect import ATTEMPT_ERRORS, failure, open_session
from .clientlisten import DownRefusals, Listening, Sockets
from .clientresume import Resumed, count_streams, resume
from .errors import HandshakeRefused, describe
from .handshake import DEFAULT_PATH, TUNNEL_NAME, Mode, TunnelProtocol
from .logs import tunnel_logger
from .pool import End, ServerPool
from .session import Phase, Session
from .settings import SessionSettings
from .socks import Socks5Stream
from .socks5 import Credentials
from .stats import TunnelStats
from .unixsock import DEFAULT_SOCKET_MODE

log = logging.getLogger("aiowstunnel.client")
#: A server's "busy, retry after" is followed this many times in a row; then the backoff
#: decides again (a server that stays busy is not asked once a second forever).
BUSY_RETRIES = 3


class Client:
    """A tunnel client (the seed's API; keyword arguments are additions).

    Args:
        mode: ``aiowstunnel.CONNECT`` (we listen, the server dials) or
            ``aiowstunnel.LISTEN`` (the server listens, we dial).
        tunnel_host, tunnel_port: the tunnel server.
        listen_host, listen_port: where the listener is (here in CONNECT, on the server
            in LISTEN). Port 0 picks a free port (see :attr:`listen_address`).
        connect_host, connect_port: what is dialed for each connection (by the server in
            CONNECT, by us in LISTEN).
        ssl: ``True`` or an ``ssl.SSLContext`` for ``wss://`` (a client certificate in
            the context gives mutual TLS); ``None`` for plain ``ws://``.
        server_hostname: the name to verify the server's certificate against.
        path: the request target of the server's WebSocket endpoint (its path, and
            ``?query`` if any).
        token: this client's bearer token.
        backoff: reconnect delays.
        ping_interval, ping_timeout, window, max_frame, handshake_timeout, connect_timeout,
        resume_timeout, udp_idle_timeout: the session's settings (:class:`SessionSettings`
            says what each does; resume_timeout 0 turns resumption off).
        settings: the session's settings whole (the daemon's), instead of those eight.
        name: the tunnel's name in logs and metrics.
        stats: counters to keep (the daemon passes its own; a new one otherwise).
        proxy: ``http://host:port`` of an HTTP proxy to reach the server through (CONNECT).
        random: [0, 1) source for the backoff jitter (tests inject a fixed one).
        allow_connect: the targets a stream the server opens may name (LISTEN and
            REVERSE_SOCKS5: this side dials them); empty: only ``connect``.
        socks_credentials: the username/password (RFC 1929) clients of the SOCKS listener
            must give (SOCKS5: the local one; REVERSE_SOCKS5: the server's, which gets them
            in the upgrade request); None: no authentication.
        socket_mode: the file mode of a unix socket this side listens on.
        proxy_protocol: ``"v1"`` or ``"v2"``: the dialing side (the server in CONNECT and
            SOCKS5, this side otherwise) sends that PROXY protocol header to each backend,
            with the original client's address.
        protocol: ``"tcp"``, ``"udp"`` (each UDP source a datagram flow) or ``"tcp+udp"``
            (both, on one port: DNS), in the connect and listen modes.
        more_servers: further servers of the tunnel (``ws[s]://`` URLs, the same scheme):
            one session is kept to each (pool.py; its own backoff and resumption). CONNECT
            gives each local connection to the open session with the fewest streams;
            LISTEN binds the listener on every server. See :attr:`group`.

    In SOCKS5 and REVERSE_SOCKS5 modes there is no fixed target: ``connect_host`` and
    ``connect_port`` are ignored (pass ``""`` and 0). A host ``"unix:/path"`` (with port 0)
    is a unix socket, to listen on or to dial.
    """

    def __init__(
        self,
        mode: Mode,
        tunnel_host: str,
        tunnel_port: int,
        listen_host: str,
        listen_port: int,
        connect_host: str,
        connect_port: int,
        *,
        ssl: ssl_module.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        path: str = DEFAULT_PATH,
        token: str | None = None,
        backoff: BackoffPolicy | None = None,
        ping_interval: float | None = SessionSettings.ping_interval,
        ping_timeout: float = SessionSettings.ping_timeout,
        window: int = SessionSettings.window,
        max_frame: int = SessionSettings.max_frame,
        handshake_timeout: float = SessionSettings.handshake_timeout,
        connect_timeout: float = SessionSettings.connect_timeout,
        resume_timeout: float = SessionSettings.resume_timeout,
        udp_idle_timeout: float = SessionSettings.udp_idle_timeout,
        settings: SessionSettings | None = None,
        name: str | None = None,
        stats: TunnelStats | None = None,
        proxy: str | None = None,
        random: Callable[[], float] = random.random,
        allow_connect: Sequence[AddressRule] = (),
        socks_credentials: Credentials | None = None,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        proxy_protocol: str | None = None,
        protocol: TunnelProtocol | str = TunnelProtocol.TCP,
        more_servers: Iterable[Endpoint | str] = (),
    ) -> None:
        self.mode = Mode(mode)
        self.protocol = TunnelProtocol(protocol)
        self.listen = socket_address(listen_host, listen_port)
        self.connect = None if self.mode.socks else socket_address(connect_host, connect_port)
        self.socket_mode = socket_mode
        self.proxy_protocol = proxy_protocol or ""
        self.allow_connect = tuple(allow_connect)
        self.socks_credentials = socks_credentials
        if ssl is True:
            ssl = ssl_module.create_default_context()
        self.ssl: ssl_module.SSLContext | None = ssl or None
        self.server_hostname = server_hostname
        self.token = token
        self.settings = SessionSettings.given(
            settings,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            window=window,
            max_frame=max_frame,
            handshake_timeout=handshake_timeout,
            connect_timeout=connect_timeout,
            resume_timeout=resume_timeout,
            udp_idle_timeout=udp_idle_timeout,
        )
        self.name = name or f"{self.mode.value}:{self.listen}"
        self.stats = stats or TunnelStats(self.name)
        self.backoff = Backoff(backoff or BackoffPolicy(), random)
        #: parsed here, once (AddressError for a bad URL, as config reports it)
        self.proxy = parse_proxy_url(proxy) if proxy else None
        self._random = random
        self._down_since: float | None = None  # the first failure of this backoff sequence
        self._busy_in_a_row = 0  # attempts answered "busy, retry after" in a row
        self._log = tunnel_logger(self.name, log)
        self._per_server(Endpoint(self.ssl is not None, tunnel_host, int(tunnel_port), path))
        #: resets a local connection accepted while down, counted, logged (rate-limited)
        down = DownRefusals(self.stats, self._log, lambda: self.last_error or "not connected yet")
        self.pool: ServerPool[Client] = ServerPool(
            self, self.stats, down.refuse, self._stream_for, self.mode is Mode.CONNECT
        )
        # The name goes to the server as a label (X-Aiowstunnel-Tunnel), where it must fit
        # TUNNEL_NAME; a library name that does not is kept here and not sent.
        self.sent_name = self.name if TUNNEL_NAME.fullmatch(self.name) else ""
        if not self.sent_name:
            self._log.warning(
                "tunnel name %r is not sent to the server (it must be 1-128 letters, digits, "
                "'_', '.', ':', '[', ']' or '-'); the server counts it as unnamed",
                self.name,
            )
        self.pool.members += [self._member(server) for server in more_servers]

    def _per_server(self, endpoint: Endpoint) -> None:
        """What each server of the tunnel keeps apart: its URL and connection state."""
        #: the tunnel server's URL, built once (the daemon's was parsed once, by config)
        self.endpoint = endpoint
        self.server = endpoint.address
        self.backoff = Backoff(self.backoff.policy, self._random)
        self.session: Session | None = None
        self.listen_address: SocketAddress | None = None  # what is actually bound (either side)
        self.affinity = Affinity()  # what the session's 101 said to route back to its server
        self._fresh_now = False  # a resume was refused: open a fresh session at once
        self.last_error = ""
        #: Set once the local listener was tried (bound, or the error logged); at once
        #: in LISTEN mode, where the listener is the server's. The daemon's READY waits on it.
        self.first_bind = asyncio.Event()
        if self.mode.server_listens:
            self.first_bind.set()
        #: Set once the first connection attempt is over (up, or the failure logged): the
        #: daemon's first status line waits on it, so that it does not say "0/8 up".
        self.first_attempt = asyncio.Event()
        #: The instance this one replaces on reload (same CONNECT listener): its listening
        #: socket is taken over once this one's first attempt is over (see _take_over).
        self.predecessor: Client | None = None
        self._replaced = False  # handed its listener to a successor: it only drains now
        self._listening = Listening(self, self._log)
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def _member(self, server: Endpoint | str) -> Client:
        """Another server of this tunnel: this Client's settings, counters and pool, with a
        URL and a connection state of its own."""
        if isinstance(server, str):
            server = Endpoint.parse(server, DEFAULT_PATH)
        if server.secure != (self.ssl is not None):
            raise ValueError(f"{server}: every server of a tunnel uses the same scheme")
        member = copy.copy(self)
        member._per_server(server)
        member.first_bind.set()  # the listener is the first server's
        return member

    @property
    def group(self) -> list[Client]:
        """The tunnel's members, one per server: this one first (it owns the listener)."""
        return self.pool.members

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def up(self) -> bool:
        """Whether the tunnel serves: one of its sessions (any server's) is open."""
        return self.pool.any_up

    @property
    def session_up(self) -> bool:
        """Whether this server's session is open."""
        return self.session is not None and self.session.phase is Phase.OPEN

    @property
    def detached(self) -> bool:
        """No session open, one being resumed (its streams wait)."""
        return self.pool.detached

    def _update(self, _: object = None) -> None:
        self.pool.update(counts=not self._replaced)  # a successor shares the counters

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Run the tunnel in the background until :meth:`close` (the seed's API); the
        sessions to its other servers too."""
        self._task = asyncio.get_running_loop().create_task(self.run())
        for member in self.pool.led_by(self)[1:]:
            member.start()

    async def wait_up(self, timeout: float | None = None) -> None:
        """Wait until a session is open (tests and the supervisor use this)."""
        await asyncio.wait_for(self.pool.up.wait(), timeout)

    async def run(self) -> None:
        """Keep the tunnel up until :meth:`close`: connect, serve, back off, repeat."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            if (
                not self.mode.server_listens
                and self.pool.first is self
                and self._listening.listener is None
                and self.predecessor is None
            ):
                try:
                    self.listen_address = await self._listening.bind(self.pool.local_stream)
                except OSError as exc:
                    self._failed("listen_failed", describe(exc), logging.ERROR)
                    self.first_bind.set()
                    self.first_attempt.set()
                    await self._pause()
                    continue
                self.first_bind.set()
            started = loop.time()
            session: Session | None = None
            asked: float | None = None  # a busy server's Retry-After
            try:
                session = await open_session(self)
            except ATTEMPT_ERRORS as exc:
                self._failed(*failure(exc, self.url, self.ssl is not None))
                if isinstance(exc, HandshakeRefused):
                    asked = exc.retry_after
            except Exception as exc:  # a fault of ours: logged, and the tunnel tries again
                self.stats.connect_failures["error"] += 1
                self.last_error = f"connection attempt failed: {describe(exc)}"
                self._log.error("%s", self.last_error, exc_info=exc)
            self.first_attempt.set()
            if self.predecessor is not None and not await self._take_over():
                if session is not None:
                    session.abort("local listener failed")
                    await session.wait_closed()
                session = None
            if session is not None:
                await self._serve(session)
                self._session_ended(loop.time() - started)
            # The server knows the session no more, or it went away (GOAWAY: the old one
            # drains meanwhile) or was lost: the next one now (pool.AT_ONCE_PERIOD).
            if self._fresh_now or (session is not None and self.pool.at_once(self)):
                self._fresh_now = False
                continue
            self.pool.expire_held()
            if not self._closing:
                await self._pause(asked)

    async def _serve(self, session: Session) -> None:
        self.session = session
        self.stats.connects += 1
        self.stats.backoff_seconds = 0.0
        self._update()
        where = f", server listening on {self.listen_address}" if self.mode.server_listens else ""
        named = f" (server {self.affinity.server})" if self.affinity.server else ""
        self._log.info(
            "tunnel up: %s %s via %s%s%s", self.mode.value, self._asked(), self.url, named, where
        )
        session.on_detach.append(self._update)
        if self.mode is Mode.CONNECT:
            session.on_refused = self.pool.reopen
            session.table.keeps_early = True  # so that they move with their early data
        self.pool.opened(session)
        route = self.affinity
        while (end := await self.pool.wait_end(session)) is End.DETACHED:
            if not await self._resume(session, route):
                break
            self.pool.opened(session)  # resumed: serve on, until the next detach or the end
        self.session = None
        if end is End.GOAWAY and not self._closing and not session.closed.done():
            self.pool.drain(self, session, lambda: self._resume(session, route))
            streams = len(session.streams)
            self._log.info(
                "server going away: opening a new session at once; %s on the old one",
                count_streams(streams, "draining") if streams else "no stream open",
            )
            self._update()
            return
        reason = await session.wait_closed()
        self._update()
        if not self._closing:
            self.last_error = reason
            cut = session.cut_streams
            self._log.warning(
                "tunnel down: %s; %s",
                reason,
                count_streams(cut, "reset") if cut else "no stream open",
            )

    async def _resume(self, session: Session, route: Affinity) -> bool:
        """Resume the detached ``session`` (clientresume); True if resumed."""
        resumed = await resume(self, session, route, self._log, self._random, lambda: self._closing)
        if resumed is not Resumed.RESUMED:  # new connections wait for the next session
            self.pool.hold()
        fresh = resumed is Resumed.UNKNOWN and session is self.session
        self._fresh_now = fresh and not self._closing
        self._update()
        return resumed is Resumed.RESUMED

    def _failed(self, label: str, message: str, level: int) -> None:
        self.stats.connect_failures[label] += 1
        self.last_error = message
        self._log.log(level, "%s", message)

    def _session_ended(self, stayed_up: float) -> None:
        """A session that stayed up ``reset_after`` starts the backoff sequence again; one
        that outlived the sequence's current ceiling starts a new outage for the ceiling's
        cap (a flapping server's sessions, gone within it, still count from the first
        fall). Found with 1,000 tunnels restarted 16 s after their start: the cap counted
        from the start's failures and let one tunnel wait 7.8 s."""
        if stayed_up >= self.backoff.ceiling():
            self._down_since = None
        self.backoff.connection_ended(stayed_up)

    async def _pause(self, asked: float | None = None) -> None:
        now = asyncio.get_running_loop().time()
        if self._down_since is None or self.backoff.attempt == 0:
            # a new outage (the start, a session that outlived the ceiling, a reset); a
            # session that keeps failing soon after it opens counts from its first fall
            self._down_since = now
        self._busy_in_a_row = self._busy_in_a_row + 1 if asked is not None else 0
        if asked is None or self._busy_in_a_row > BUSY_RETRIES:
            delay = self.backoff.next_delay(down_for=now - self._down_since)
        else:
            # The server is busy and said when to come back: that, jittered (the tunnels
            # it turned away together must not return together), and the backoff is not
            # advanced, since nothing is wrong with this tunnel; a server that stays busy
            # gets the backoff again. Never past the backoff's max.
            delay = min(asked_delay(asked, self._random), self.backoff.policy.max)
        self.stats.backoff_seconds = delay
        self._log.info("reconnecting in %.1f s", delay)
        await asyncio.sleep(delay)

    def stop_accepting(self) -> None:
        """No new streams from now on: close the local listener, send GOAWAY (the server
        then releases a LISTEN port). A reload's first step for a removed or replaced
        tunnel; :meth:`close` then drains the open streams."""
        self._goaway("tunnel removed or replaced")
        self._listening.close()

    def detach_listener(self) -> Sockets | None:
        """Stop accepting here and hand the listening sockets over to a successor.

        They stay open and listening: connections (and datagrams) that arrive meanwhile wait
        in their queues for the successor, none is refused. This instance then only drains
        its open streams (:meth:`close`). None when there is no listener to hand over.
        """
        self._goaway("tunnel replaced")
        return self._listening.hand_over()

    def _goaway(self, reason: str) -> None:
        for member in self.pool.led_by(self):
            member._closing = member._replaced = True
            if member.session is not None:
                member.session.goaway(reason)

    async def _take_over(self) -> bool:
        """Take the predecessor's listening socket (or bind afresh); False if that failed."""
        old, self.predecessor = self.predecessor, None
        assert old is not None
        try:
            handed = old.detach_listener()
            self.listen_address = await self._listening.bind(self.pool.local_stream, handed)
        except OSError as exc:
            self._failed("listen_failed", describe(exc), logging.ERROR)
            return False
        finally:
            self.first_bind.set()
        return True

    @property
    def streams_active(self) -> int:
        """Streams open on this instance (the counters may be shared with a successor):
        on every server's sessions, those draining after a GOAWAY included."""
        return sum(self.pool.own_streams(member) for member in self.pool.led_by(self))

    @property
    def own_streams(self) -> int:
        """Streams open on this server's sessions (the one it serves, those draining)."""
        return self.pool.own_streams(self)

    async def close(self, timeout: float = 5.0) -> int:
        """Stop: close the listener, let open streams finish up to ``timeout``, disconnect.

        Safe to call twice. Returns how many streams were reset because the drain ran out.
        """
        others = [asyncio.ensure_future(m.close(timeout)) for m in self.pool.led_by(self)[1:]]
        self._closing = True
        self.first_bind.set()  # nobody waits for a take-over that will not come
        self._listening.close()
        if self.pool.first is self:
            self.pool.close()
        sessions = self.pool.sessions_of(self)
        before = sum(s.drain_cut for s in sessions)  # a second close counts only its own
        await asyncio.gather(*(s.shutdown("client closing", timeout) for s in sessions))
        cut = sum(s.drain_cut for s in sessions) - before + sum(await asyncio.gather(*others))
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._listening.wait_closed()
        return cut

    # -- connecting -----------------------------------------------------------------

    def _asked(self) -> SocketAddress | str | None:
        """What the tunnel request names: the target (CONNECT), the listener (LISTEN)."""
        if self.mode is Mode.SOCKS5:
            return f"proxy on {self.listen_address or self.listen}"
        return self.connect if self.mode is Mode.CONNECT else self.listen

    def datagram_session(self) -> Session | None:
        """The session the local UDP socket's datagrams go to (the pool's choice)."""
        return self.pool.datagram_session()

    def _stream_for(self, session: Session) -> asyncio.BaseProtocol:
        """The protocol of a local connection the pool gave to ``session``."""
        if self.mode is Mode.SOCKS5:
            return Socks5Stream(session, self.socks_credentials)
        return session.new_stream()

    async def connect_once(self) -> Session:
        """One session, without the listener or any retry (``aiowstunnel stdio``): the
        caller opens its stream on it. Raises as a connection attempt of :meth:`run` does."""
        return await open_session(self)
