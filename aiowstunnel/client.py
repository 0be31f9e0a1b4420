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
import random
import ssl as ssl_module
from collections.abc import Callable, Sequence

from .addresses import (
    UNIX_SCHEME,
    Address,
    AddressRule,
    Endpoint,
    SocketAddress,
    UnixPath,
    parse_proxy_url,
)
from .backoff import Backoff, BackoffPolicy
from .clientconnect import open_session
from .clientlisten import DownRefusals, LocalListener, Refuse, Sockets, bind_local, hand_over
from .errors import HandshakeRefused, ResumeRefused, describe
from .handshake import DEFAULT_PATH, TUNNEL_NAME, Mode, Refusal, TunnelProtocol
from .logs import tunnel_logger
from .resets import Abortable, Cut
from .session import Phase, Session
from .settings import SessionSettings
from .socks import Socks5Stream
from .socks5 import Credentials
from .stats import TunnelStats
from .unixsock import DEFAULT_SOCKET_MODE

log = logging.getLogger("aiowstunnel.client")

#: A refusal's HTTP status -> the ``reason`` label of connect_failures_total: the same
#: labels the server counts in server_rejected_total (handshake.Refusal is the one list).
_REFUSAL_LABELS: dict[int, str] = {refusal.status: refusal.label for refusal in Refusal}


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
    ) -> None:
        self.mode = Mode(mode)
        self.protocol = TunnelProtocol(protocol)
        self.listen: SocketAddress = _socket_address(listen_host, listen_port)
        self.connect: SocketAddress | None = (
            None if self.mode.socks else _socket_address(connect_host, connect_port)
        )
        self.socket_mode = socket_mode
        self.proxy_protocol = proxy_protocol or ""
        self.allow_connect = tuple(allow_connect)
        self.socks_credentials = socks_credentials
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
            resume_timeout=resume_timeout,
            udp_idle_timeout=udp_idle_timeout,
        )
        self.name = name or f"{self.mode.value}:{self.listen}"
        self.stats = stats or TunnelStats(self.name)
        self.backoff = Backoff(backoff or BackoffPolicy(), random)
        self.session: Session | None = None
        self.listen_address: SocketAddress | None = None  # what is actually bound (either side)
        #: parsed here, once (AddressError for a bad URL, as config reports it)
        self.proxy = parse_proxy_url(proxy) if proxy else None
        self._random = random
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
        self._listener: LocalListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._up = asyncio.Event()
        self._log = tunnel_logger(self.name, log)
        self._down = DownRefusals(self.stats, self._log)
        # The name goes to the server as a label (X-Aiowstunnel-Tunnel), where it must fit
        # TUNNEL_NAME; a library name that does not is kept here and not sent.
        self.sent_name = self.name if TUNNEL_NAME.fullmatch(self.name) else ""
        if not self.sent_name:
            self._log.warning(
                "tunnel name %r is not sent to the server (it must be 1-128 letters, digits, "
                "'_', '.', ':', '[', ']' or '-'); the server counts it as unnamed",
                self.name,
            )

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def up(self) -> bool:
        return self.session is not None and self.session.phase is Phase.OPEN

    @property
    def detached(self) -> bool:
        """The session lost its connection and is being resumed (its streams wait)."""
        return self.session is not None and self.session.phase is Phase.DETACHED

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Run the tunnel in the background until :meth:`close` (the seed's API)."""
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def wait_up(self, timeout: float | None = None) -> None:
        """Wait until a session is open (tests and the supervisor use this)."""
        await asyncio.wait_for(self._up.wait(), timeout)

    async def run(self) -> None:
        """Keep the tunnel up until :meth:`close`: connect, serve, back off, repeat."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            if not self.mode.server_listens and self._listener is None and self.predecessor is None:
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
                session = await open_session(self)
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
            if self._fresh_now:  # the server knows the session no more: a new one, now
                self._fresh_now = False
                continue
            if not self._closing:
                await self._pause()

    async def _serve(self, session: Session) -> None:
        self.session = session
        self.stats.up = True
        self.stats.connects += 1
        self.stats.backoff_seconds = 0.0
        self._up.set()
        where = f", server listening on {self.listen_address}" if self.mode.server_listens else ""
        self._log.info(
            "tunnel up: %s %s via %s%s",
            self.mode.value,
            self._asked(),
            self.url,
            where,
        )
        session.on_detach.append(self._detached)
        while await session.wait_detached() and await self._resume(session):
            pass  # resumed: serve on, until the next detach or the end
        reason = await session.wait_closed()
        self.stats.detached = False
        self._up.clear()
        self.session = None
        if not self._replaced:  # a successor shares the counters and may be up already
            self.stats.up = False
        if not self._closing:
            self.last_error = reason
            cut = session.cut_streams
            self._log.warning(
                "tunnel down: %s; %s", reason, _streams(cut, "reset") if cut else "no stream open"
            )

    def _detached(self, session: Session) -> None:
        # At once, not when the reconnecting starts: a scrape in between must not say up.
        if not self._replaced:
            self.stats.up = False
        self.stats.detached = True

    async def _resume(self, session: Session) -> bool:
        """Reconnect to resume the detached ``session`` until resumed (True), refused or
        expired (False). Attempts back off, capped so that several fit in resume_timeout."""
        loop = asyncio.get_running_loop()
        resumption = session.resumption
        assert resumption is not None
        timeout = resumption.timeout
        self._log.warning(
            "tunnel detached: %s; %s kept, resuming within %g s",
            session.detachment.reason,
            _streams(len(session.streams), "open"),
            timeout,
        )
        cap = max(0.05, timeout / 8)
        backoff = Backoff(BackoffPolicy(initial=min(0.1, cap), max=cap), self._random)
        while session.phase is Phase.DETACHED and not self._closing:
            try:
                await open_session(self, resume_of=session)
            except ResumeRefused as refused:
                self.stats.resumes[refused.code] += 1
                self._log.warning(
                    "the server refused to resume the session (%s): its streams are reset; "
                    "opening a fresh session",
                    refused,
                )
                session.expire(Cut.RESUME_REFUSED, f"resume refused: {refused}")
                self._fresh_now = not self._closing
                return False
            except HandshakeRefused as exc:
                if exc.status in (401, 403):  # token revoked or rule narrowed: never resumes
                    self._failed("bad_token" if exc.status == 401 else "forbidden",
                                 f"server refused the resume: {exc}", logging.ERROR)
                    session.expire(Cut.RESUME_REFUSED, f"resume refused: {exc}")
                    return False
                self.last_error = f"resume failed: {exc}"
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                self.last_error = f"resume failed: {describe(exc)}"
            else:
                self.stats.up, self.stats.detached = True, False
                self.stats.resumes["ok"] += 1
                self.stats.replayed_bytes += session.detachment.replayed
                self._log.info(
                    "tunnel resumed after %.1f s: %d bytes replayed; %s",
                    loop.time() - session.detachment.since,
                    session.detachment.replayed,
                    _streams(len(session.streams), "open"),
                )
                return True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(session.closed), backoff.next_delay())
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
        self._closing = True
        self._replaced = True
        if self._listener is not None:
            self._listener.close()
        if self.session is not None:
            self.session.goaway("tunnel removed or replaced")

    def detach_listener(self) -> Sockets | None:
        """Stop accepting here and hand the listening sockets over to a successor.

        They stay open and listening: connections (and datagrams) that arrive meanwhile wait
        in their queues for the successor, none is refused. This instance then only drains
        its open streams (:meth:`close`). None when there is no listener to hand over.
        """
        self._closing = True
        self._replaced = True
        if self.session is not None:
            self.session.goaway("tunnel replaced")
        listener, self._listener = self._listener, None
        if listener is None:
            return None
        return hand_over(listener)

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

    @property
    def streams_active(self) -> int:
        """Streams open on this instance (the counters may be shared with a successor)."""
        return len(self.session.streams) if self.session is not None else 0

    async def close(self, timeout: float = 5.0) -> int:
        """Stop: close the listener, let open streams finish up to ``timeout``, disconnect.

        Safe to call twice. Returns how many streams were reset because the drain ran out.
        """
        self._closing = True
        self.first_bind.set()  # nobody waits for a take-over that will not come
        if self._listener is not None:
            self._listener.close()
        cut = 0
        if self.session is not None:
            session = self.session
            before = session.drain_cut  # a second close counts only what it cut itself
            await session.shutdown("client closing", timeout)
            cut = session.drain_cut - before
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

    async def _bind(self, sock: Sockets | None = None) -> None:
        """Listen on :attr:`listen` (TCP, UDP or both), or serve ``sock``, handed over."""
        self._listener, self.listen_address = await bind_local(self._local_stream, self, sock)
        how = "taking over" if sock else "listening on"
        self._log.info("%s %s%s", how, self.listen_address, self.protocol.note)

    def _asked(self) -> SocketAddress | str | None:
        """What the tunnel request names: the target (CONNECT), the listener (LISTEN)."""
        if self.mode is Mode.SOCKS5:
            return f"proxy on {self.listen_address or self.listen}"
        return self.connect if self.mode is Mode.CONNECT else self.listen

    def _local_stream(self) -> asyncio.BaseProtocol:
        session = self.session
        if session is None or not session.accepting:  # detached: it waits for the resume
            return Refuse(self.refused_while_down)
        if self.mode is Mode.SOCKS5:
            return Socks5Stream(session, self.socks_credentials)
        return session.new_stream()

    def refused_while_down(self, transport: Abortable) -> None:
        """A local connection accepted while the tunnel is down: reset it, count it, and
        say so in the log (rate-limited: REFUSED_LOG_PERIOD)."""
        self._down.refuse(transport, self.last_error or "not connected yet")

    async def connect_once(self) -> Session:
        """One session, without the listener or any retry (``aiowstunnel stdio``): the
        caller opens its stream on it. Raises as a connection attempt of :meth:`run` does."""
        return await open_session(self)


def _socket_address(host: str, port: int | str) -> SocketAddress:
    """The seed's (host, port) pair, or a unix socket given as host ``unix:/path``."""
    if host.startswith(UNIX_SCHEME):
        return UnixPath.parse(host)
    return Address(host, int(port))


def _streams(n: int, what: str) -> str:
    """``"1 stream reset"``, ``"3 streams reset"``."""
    return f"{n} stream{'' if n == 1 else 's'} {what}"
