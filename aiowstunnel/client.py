"""The tunnel client: keeps one tunnel up forever, reconnecting with backoff.

In CONNECT mode it owns the local listener (bound once, kept across reconnects) and opens
a stream per accepted connection; in LISTEN mode the server owns the listener and the
client dials ``connect_host:connect_port`` for each stream the server opens. It never
exits because the server is down, refuses it, or vanishes: it logs why and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl as ssl_module
from collections.abc import Callable, Iterable
from typing import cast

from websockets.client import ClientProtocol
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI

from . import wire
from .addresses import Address, Endpoint, format_peer
from .affinity import SERVER_HEADER, Affinity
from .backoff import Backoff, BackoffPolicy
from .dial import proxy_tunnel, tcp_dialer
from .errors import HandshakeRefused, describe
from .handshake import DEFAULT_PATH, TUNNEL_NAME, Mode, Refusal, TunnelRequest
from .held import HeldConnection
from .link import ws_log
from .logs import tunnel_logger
from .resets import Abortable, Cut, reset
from .session import Phase, Session
from .settings import SessionSettings
from .stats import TunnelStats

log = logging.getLogger("aiowstunnel.client")

#: A refusal's HTTP status -> the ``reason`` label of connect_failures_total: the same
#: labels the server counts in server_rejected_total (handshake.Refusal is the one list).
_REFUSAL_LABELS: dict[int, str] = {refusal.status: refusal.label for refusal in Refusal}
#: At most one "refused a connection" line per this many seconds per tunnel (each says how
#: many were refused since the last one): a client retrying in a loop must not flood the log.
REFUSED_LOG_PERIOD = 10.0
#: A session that ends (GOAWAY, or lost) is replaced at once, without a backoff, at most
#: once per this many seconds; the backoff applies otherwise.
AT_ONCE_PERIOD = 1.0
#: After a session ends (GOAWAY, or lost), a local connection that finds no open session is
#: held this long at most for the next one (held.py), across a failed first attempt and
#: the backoff's first retries, instead of being refused at once.
HOLD_WINDOW = 2.0


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
        ping_interval, ping_timeout, window, max_frame, handshake_timeout, connect_timeout:
            the session's settings (:class:`SessionSettings` says what each does).
        settings: the session's settings whole (the daemon's), instead of those six.
        name: the tunnel's name in logs and metrics.
        stats: counters to keep (the daemon passes its own; a new one otherwise).
        proxy: ``http://host:port`` of an HTTP proxy to reach the server through (CONNECT).
        random: [0, 1) source for the backoff jitter (tests inject a fixed one).
        more_servers: further servers of the same tunnel (``ws[s]://`` URLs, with the
            same ``ssl``): one session is kept to each, with its own backoff. In CONNECT
            mode each new local connection goes to the open session with the fewest
            streams; in LISTEN mode every server binds the listener. See :attr:`group`.
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
        settings: SessionSettings | None = None,
        name: str | None = None,
        stats: TunnelStats | None = None,
        proxy: str | None = None,
        random: Callable[[], float] = random.random,
        more_servers: Iterable[Endpoint | str] = (),
    ) -> None:
        self.mode = Mode(mode)
        self.listen = Address(listen_host, int(listen_port))
        self.connect = Address(connect_host, int(connect_port))
        if ssl is True:
            ssl = ssl_module.create_default_context()
        self.ssl: ssl_module.SSLContext | None = ssl or None
        #: the tunnel server's URL, built once (the daemon's was parsed once, by config)
        self.endpoint = Endpoint(self.ssl is not None, tunnel_host, int(tunnel_port), path)
        self.server = self.endpoint.address
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
        )
        self.name = name or f"{self.mode.value}:{self.listen}"
        self.stats = stats or TunnelStats(self.name)
        self.backoff = Backoff(backoff or BackoffPolicy(), random)
        self._random = random
        self.session: Session | None = None
        self.listen_address: Address | None = None  # what is actually bound (either side)
        self.proxy = proxy
        self.last_error = ""
        #: Set once the local listener was tried (bound, or the error logged); at once
        #: in LISTEN mode, where the listener is the server's. The daemon's READY waits on it.
        self.first_bind = asyncio.Event()
        if self.mode is Mode.LISTEN:
            self.first_bind.set()
        #: Set once the first connection attempt is over (up, or the failure logged): the
        #: daemon's first status line waits on it, so that it does not say "0/8 up".
        self.first_attempt = asyncio.Event()
        #: The instance this one replaces on reload (same CONNECT listener): its listening
        #: socket is taken over once this one's first attempt is over (see _take_over).
        self.predecessor: Client | None = None
        self._replaced = False  # handed its listener to a successor: it only drains now
        self._refused = 0  # connections refused while down since the last such log line
        self._refused_logged_at: float | None = None
        self._listener: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._up = asyncio.Event()  # shared by the group: any of its sessions is open
        self._log = tunnel_logger(self.name, log)
        #: The tunnel's sessions, one Client per server: this one first (it owns the
        #: CONNECT listener, and starts, stops and drains the others), then one per
        #: ``more_servers``, each without a listener of its own. One list, shared.
        self.group: list[Client] = [self]
        self._owns_listener = True
        self._turn = 0  # where the fewest-streams choice starts among equals (in turn)
        #: what the last 101 said to route back to its server (resumption sends it)
        self.affinity = Affinity()
        #: sessions the server sent GOAWAY on: they drain while a new session serves
        self._going: set[Session] = set()
        #: until when (loop time), after a GOAWAY or a lost session, local connections that
        #: find no open session are held for the next one (held.py), not refused
        self._hold_until = 0.0
        self._held: set[HeldConnection] = set()
        self._at_once_at = -AT_ONCE_PERIOD  # when a session was last replaced at once
        # The name goes to the server as a label (X-Aiowstunnel-Tunnel), where it must fit
        # TUNNEL_NAME; a library name that does not is kept here and not sent.
        self._sent_name = self.name if TUNNEL_NAME.fullmatch(self.name) else ""
        if not self._sent_name:
            self._log.warning(
                "tunnel name %r is not sent to the server (it must be 1-128 letters, digits, "
                "'_', '.', ':', '[', ']' or '-'); the server counts it as unnamed",
                self.name,
            )
        for server in more_servers:
            self._add_server(server, server_hostname)

    def _add_server(self, server: Endpoint | str, server_hostname: str | None) -> None:
        """Another server of this tunnel: a Client of the group, sharing its counters."""
        if isinstance(server, str):
            server = Endpoint.parse(server, DEFAULT_PATH)
        if server.secure != (self.ssl is not None):
            raise ValueError(f"{server}: every server of a tunnel uses the same scheme")
        member = Client(
            self.mode,
            server.host,
            server.port,
            self.listen.host,
            self.listen.port,
            self.connect.host,
            self.connect.port,
            ssl=self.ssl,
            server_hostname=server_hostname,
            path=server.path,
            token=self.token,
            backoff=self.backoff.policy,
            settings=self.settings,
            name=self.name,
            stats=self.stats,
            proxy=self.proxy,
            random=self._random,
        )
        member.group = self.group
        member._up = self._up
        member._owns_listener = False
        member.first_bind.set()  # the listener is this one's
        self.group.append(member)

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def up(self) -> bool:
        """Whether the tunnel serves: one of its sessions (any server's) is open."""
        return any(member.session_up for member in self.group)

    @property
    def session_up(self) -> bool:
        """Whether this server's session is open."""
        return self.session is not None and self.session.phase is Phase.OPEN

    def _update_up(self) -> None:
        if not self._replaced:  # a successor shares the counters and may be up already
            self.stats.up = self.up
        if self.up:
            self._up.set()
        else:
            self._up.clear()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Run the tunnel in the background until :meth:`close` (the seed's API); the
        sessions to the tunnel's other servers too."""
        self._task = asyncio.get_running_loop().create_task(self.run())
        if self._owns_listener:
            for member in self.group[1:]:
                member.start()

    async def wait_up(self, timeout: float | None = None) -> None:
        """Wait until a session is open (tests and the supervisor use this)."""
        await asyncio.wait_for(self._up.wait(), timeout)

    async def run(self) -> None:
        """Keep the tunnel up until :meth:`close`: connect, serve, back off, repeat."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            if (
                self.mode is Mode.CONNECT
                and self._owns_listener
                and self._listener is None
                and self.predecessor is None
            ):
                try:
                    await self._bind()
                except OSError as exc:
                    self._failed("listen_failed", describe(exc), logging.ERROR)
                    self.first_bind.set()
                    self.first_attempt.set()
                    await self._pause()
                    continue
                self.first_bind.set()
            started = loop.time()
            session: Session | None = None
            try:
                session = await self._connect()
            except HandshakeRefused as exc:
                label = _REFUSAL_LABELS.get(exc.status, f"http_{exc.status}")
                self._failed(label, f"server refused the tunnel: {exc}", logging.ERROR)
            except ssl_module.SSLError as exc:
                self._failed("tls", f"TLS failed with {self.url}: {describe(exc)}", logging.ERROR)
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                label = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connect"
                hint = ""
                if self.ssl and isinstance(exc, ConnectionError):
                    hint = " (a TLS server that requires a client certificate closes like this)"
                self._failed(
                    label, f"cannot reach {self.url}: {describe(exc)}{hint}", logging.WARNING
                )
            self.first_attempt.set()
            if self.predecessor is not None and not await self._take_over():
                if session is not None:
                    session.abort("local listener failed")
                    await session.wait_closed()
                session = None
            if session is not None:
                await self._serve(session)
                self.backoff.connection_ended(loop.time() - started)
                now = loop.time()
                if not self._closing and now - self._at_once_at >= AT_ONCE_PERIOD:
                    # A session that was up is replaced at once, not after a backoff: after
                    # a GOAWAY the old one drains meanwhile, and the balancer sends the new
                    # one to a server that is not going away (or, after a loss, to one that
                    # is still up). At most once per AT_ONCE_PERIOD: a server that ends
                    # every session at once gets the backoff.
                    self._at_once_at = now
                    continue
            self._update_up()
            if self._hold_left() <= 0:
                for held in list(self.group[0]._held):
                    held.refuse()  # no session came: they were accepted while down
            if not self._closing:
                await self._pause()

    async def _serve(self, session: Session) -> bool:
        """Serve ``session`` until it ends (False) or its server sends GOAWAY (True: it
        drains on in the background, and the caller opens the next one at once)."""
        self.session = session
        self._hold_until = 0.0
        self.stats.connects += 1
        self.stats.backoff_seconds = 0.0
        self._update_up()
        primary = self.group[0]
        for held in list(primary._held):  # connections held for this replacement
            held.attach(session.new_stream())
        where = f", server listening on {self.listen_address}" if self.mode is Mode.LISTEN else ""
        name = f" (server {self.affinity.server})" if self.affinity.server else ""
        self._log.info(
            "tunnel up: %s %s via %s%s%s",
            self.mode.value,
            self.connect if self.mode is Mode.CONNECT else self.listen,
            self.url,
            name,
            where,
        )
        # Callbacks, not a task per session: whichever comes first, GOAWAY or the end.
        ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        # Held from this moment, not from when this coroutine resumes: an OPEN_FAIL that
        # came with the GOAWAY is reopened (and held) in the same turn (see _reopen).
        def went_away(_: Session) -> None:
            if not ended.done():
                self._hold()
                ended.set_result(True)

        def closed(_: Session) -> None:
            if not ended.done():
                self._hold()
                ended.set_result(False)

        session.on_goaway.append(went_away)
        session.on_close.append(closed)
        if session.closed.done():
            closed(session)
        going_away = await ended
        self.session = None
        if going_away and not session.closed.done() and not self._closing:
            self._going.add(session)
            session.on_close.append(self._going.discard)
            streams = len(session.streams)
            self._log.info(
                "server going away: opening a new session at once; %s on the old one",
                _streams(streams, "draining") if streams else "no stream open",
            )
            return True
        if not session.closed.done():  # GOAWAY while closing: the close drains it
            self._going.add(session)
            session.on_close.append(self._going.discard)
        self._update_up()
        if not self._closing:
            reason = session.close_reason
            self.last_error = reason
            cut = session.cut_streams
            self._log.warning(
                "tunnel down: %s; %s", reason, _streams(cut, "reset") if cut else "no stream open"
            )
        return False

    def _failed(self, label: str, message: str, level: int) -> None:
        self.stats.connect_failures[label] += 1
        self.last_error = message
        self._log.log(level, "%s", message)

    async def _pause(self) -> None:
        delay = self.backoff.next_delay()
        self.stats.backoff_seconds = delay
        self._log.info("reconnecting in %.1f s", delay)
        await asyncio.sleep(delay)

    def stop_accepting(self) -> None:
        """No new streams from now on: close the local listener, send GOAWAY (the server
        then releases a LISTEN port). A reload's first step for a removed or replaced
        tunnel; :meth:`close` then drains the open streams."""
        for member in self._members():
            member._closing = True
            member._replaced = True
            if member.session is not None:
                member.session.goaway("tunnel removed or replaced")
        if self._listener is not None:
            self._listener.close()

    def detach_listener(self) -> socket.socket | None:
        """Stop accepting here and hand the listening socket over to a successor.

        The socket stays open and listening: connections that arrive meanwhile wait in its
        queue for the successor, none is refused. This instance then only drains its open
        streams (:meth:`close`). None when there is no single socket to hand over.
        """
        for member in self._members():
            member._closing = True
            member._replaced = True
            if member.session is not None:
                member.session.goaway("tunnel replaced")
        listener, self._listener = self._listener, None
        if listener is None:
            return None
        sockets = list(listener.sockets)
        sock = None
        if len(sockets) == 1:
            sock = socket.socket(fileno=os.dup(sockets[0].fileno()))
        listener.close()
        return sock

    async def _take_over(self) -> bool:
        """Take the predecessor's listening socket (or bind afresh); False if that failed."""
        old, self.predecessor = self.predecessor, None
        assert old is not None
        sock = old.detach_listener()
        try:
            await self._bind(sock)
        except OSError as exc:
            self._failed("listen_failed", describe(exc), logging.ERROR)
            return False
        finally:
            self.first_bind.set()
        return True

    def _members(self) -> list[Client]:
        """The group when this one owns it (the tunnel's first server), else itself."""
        return self.group if self._owns_listener else [self]

    @property
    def streams_active(self) -> int:
        """Streams open on this instance (the counters may be shared with a successor):
        on every server's session, those draining after a GOAWAY included."""
        return sum(member.own_streams for member in self._members())

    @property
    def own_streams(self) -> int:
        """Streams open on this server's sessions (the open one and those draining)."""
        sessions = [*self._going, *([self.session] if self.session is not None else [])]
        return sum(len(session.streams) for session in sessions)

    async def close(self, timeout: float = 5.0) -> int:
        """Stop: close the listener, let open streams finish up to ``timeout``, disconnect.

        Safe to call twice. Returns how many streams were reset because the drain ran out.
        """
        others = self._members()[1:]
        closing = [asyncio.ensure_future(m.close(timeout)) for m in others]
        self._closing = True
        self.first_bind.set()  # nobody waits for a take-over that will not come
        if self._listener is not None:
            self._listener.close()
        for held in list(self._held):
            held.refuse()
        cut = 0
        sessions = [*self._going, *([self.session] if self.session is not None else [])]
        if sessions:
            before = sum(s.drain_cut for s in sessions)  # a second close counts its own
            await asyncio.gather(*(s.shutdown("client closing", timeout) for s in sessions))
            cut = sum(s.drain_cut for s in sessions) - before
        if closing:
            cut += sum(await asyncio.gather(*closing))
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._listener.wait_closed(), 1.0)
            self._listener = None
        return cut

    # -- connecting -----------------------------------------------------------------

    async def _bind(self, sock: socket.socket | None = None) -> None:
        """Listen on :attr:`listen`, or serve ``sock``, a listening socket handed over."""
        loop = asyncio.get_running_loop()
        try:
            if sock is not None:
                self._listener = await loop.create_server(self._local_stream, sock=sock)
            else:
                self._listener = await loop.create_server(
                    self._local_stream, self.listen.bind_host, self.listen.port, backlog=1024
                )
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise OSError(exc.errno, f"cannot listen on {self.listen}: {describe(exc)}") from exc
        port = self._listener.sockets[0].getsockname()[1]
        self.listen_address = Address(self.listen.host, port)
        self._log.info("%s %s", "taking over" if sock else "listening on", self.listen_address)

    def _hold(self) -> None:
        """This server's session ended: hold local connections for HOLD_WINDOW."""
        if not self._closing:
            self._hold_until = asyncio.get_running_loop().time() + HOLD_WINDOW

    def _hold_left(self) -> float:
        """How long a local connection accepted now may wait for a session (0: none)."""
        end = max(member._hold_until for member in self.group)
        return max(0.0, end - asyncio.get_running_loop().time())

    def _local_stream(self) -> asyncio.BaseProtocol:
        session = self._pick()
        if session is None:
            left = self._hold_left()
            if left > 0:
                return HeldConnection(
                    self.refused_while_down, left, self._place_held, self._held.discard
                )
            return _Refuse(self)
        return session.new_stream()

    def _reopen(self, session: Session, stream_id: int) -> bool:
        """A stream the server refused because it goes away (its OPEN crossed the GOAWAY):
        nothing of it reached the target, so it is opened again on another session, or
        held for the one being opened now. False if it cannot move (then it is reset)."""
        taken = session.streams.release(stream_id)
        if taken is None:
            return False
        transport, data, eof = taken
        primary = self.group[0]
        held = HeldConnection(
            primary.refused_while_down,
            max(primary._hold_left(), 0.05),  # its place comes with the next session
            primary._place_held,
            primary._held.discard,
        )
        held.adopt(transport, data, eof)
        return True

    def _place_held(self, held: HeldConnection) -> None:
        """A held connection is made: to an open session if there is one by now, kept
        while a replacement is under way, else reset as accepted while down."""
        session = self._pick()
        if session is not None:
            held.attach(session.new_stream())
        elif self._hold_left() > 0:
            self._held.add(held)
        else:
            held.refuse()

    def _pick(self) -> Session | None:
        """The open session with the fewest open streams, of the group's (each server's);
        among equals, each in turn, so that short streams spread too. None if none."""
        live = [m.session for m in self.group if m.session is not None and m.session_up]
        if len(live) <= 1:
            return live[0] if live else None
        self._turn += 1
        n = len(live)
        return min((live[(self._turn + i) % n] for i in range(n)), key=lambda s: len(s.streams))

    def refused_while_down(self, transport: Abortable) -> None:
        """A local connection accepted while the tunnel is down: reset it, count it, and
        say so in the log (rate-limited: REFUSED_LOG_PERIOD)."""
        self.stats.stream_open_failures["tunnel_down"] += 1
        self.stats.stream_resets[Cut.TUNNEL_DOWN.value] += 1
        peer = format_peer(transport.get_extra_info("peername"))
        reset(transport)
        self._refused += 1
        now = asyncio.get_running_loop().time()
        last = self._refused_logged_at
        if last is not None and now - last < REFUSED_LOG_PERIOD:
            return
        count, self._refused, self._refused_logged_at = self._refused, 0, now
        since = "" if last is None else f" ({count} since the last such line)"
        why = self.last_error or "not connected yet"
        self._log.warning(
            "refused a connection from %s: the tunnel is down (%s)%s",
            peer,
            why,
            since,
        )

    async def _connect(self) -> Session:
        loop = asyncio.get_running_loop()
        settings, endpoint = self.settings, self.endpoint
        ws = ClientProtocol(
            # The endpoint as websockets takes it: the request target whole in ``path``.
            WebSocketURI(endpoint.secure, endpoint.host, endpoint.port, endpoint.path, ""),
            subprotocols=[Subprotocol(wire.SUBPROTOCOL)],
            max_size=settings.max_frame,
            logger=ws_log,
        )
        # The Session takes its settings one by one until it takes a SessionSettings whole.
        session = Session(
            ws,
            self.stats,
            window=settings.window,
            max_streams=settings.max_streams,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            name=self.name,
        )
        if self.mode is Mode.CONNECT:
            session.on_refused = self._reopen
        if self.mode is Mode.LISTEN:
            # Set before the request: the server may open a stream right after the 101.
            session.dial = tcp_dialer(
                self.connect.host, self.connect.port, settings.connect_timeout
            )
        ssl = self.ssl
        server_hostname = (self.server_hostname or self.server.host) if ssl else None
        tls_timeout = settings.handshake_timeout if ssl else None
        if self.proxy:
            sock = await asyncio.wait_for(
                proxy_tunnel(self.proxy, self.server), settings.connect_timeout
            )
            connecting = loop.create_connection(
                lambda: session.link,
                sock=sock,
                ssl=ssl,
                server_hostname=server_hostname,
                ssl_handshake_timeout=tls_timeout,
            )
        else:
            connecting = loop.create_connection(
                lambda: session.link,
                self.server.host,
                self.server.port,
                ssl=ssl,
                server_hostname=server_hostname,
                ssl_handshake_timeout=tls_timeout,
            )
        await asyncio.wait_for(connecting, settings.connect_timeout)
        request = ws.connect()
        target = self.connect if self.mode is Mode.CONNECT else self.listen
        for key, value in TunnelRequest(self.mode, target, self.token, self._sent_name).headers():
            request.headers[key] = value
        session.send_request(request)
        try:
            response = await asyncio.wait_for(
                asyncio.shield(session.handshake), settings.handshake_timeout
            )
        except BaseException:
            session.abort("handshake failed")
            raise
        if self.mode is Mode.LISTEN:
            bound = response.headers.get("X-Aiowstunnel-Bound")
            self.listen_address = Address.parse(bound, True) if bound else self.listen
        # What routes a resume of this session back to its server (affinity.py).
        self.affinity = Affinity.from_response(
            response.headers.get(SERVER_HEADER), response.headers.get_all("Set-Cookie")
        )
        return session

    def affinity_headers(self) -> dict[str, str]:
        """Headers for a request that must reach the server of the current session (a
        resume): the balancer's cookies from its 101. Empty for a fresh session."""
        return self.affinity.headers()


class _Refuse(asyncio.Protocol):
    """A local connection accepted while the tunnel is down: reset at once (see
    Client.refused_while_down)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport, which can abort (uvloop's too, though not by class).
        self.client.refused_while_down(cast(Abortable, transport))


def _streams(n: int, what: str) -> str:
    """``"1 stream reset"``, ``"3 streams reset"``."""
    return f"{n} stream{'' if n == 1 else 's'} {what}"
