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
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI

from . import wire
from .addresses import Address, Endpoint, format_peer
from .backoff import Backoff, BackoffPolicy
from .dial import proxy_tunnel, tcp_dialer
from .errors import HandshakeRefused, describe
from .handshake import (
    DEFAULT_PATH,
    DEFAULT_UDP_IDLE,
    HEADER_PROTOCOL,
    TUNNEL_NAME,
    Mode,
    Refusal,
    TunnelProtocol,
    TunnelRequest,
)
from .link import ws_log
from .logs import tunnel_logger
from .resets import Abortable, Cut, reset
from .session import Phase, Session
from .settings import SessionSettings
from .stats import TunnelStats
from .udp import FlowTable, UdpEndpoint, bind_endpoint, udp_dialer

log = logging.getLogger("aiowstunnel.client")

#: A refusal's HTTP status -> the ``reason`` label of connect_failures_total: the same
#: labels the server counts in server_rejected_total (handshake.Refusal is the one list).
_REFUSAL_LABELS: dict[int, str] = {refusal.status: refusal.label for refusal in Refusal}
#: At most one "refused a connection" line per this many seconds per tunnel (each says how
#: many were refused since the last one): a client retrying in a loop must not flood the log.
REFUSED_LOG_PERIOD = 10.0


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
        protocol: what the tunnel carries: ``"tcp"`` (the default), ``"udp"`` (datagram
            flows: each UDP source a flow) or ``"tcp+udp"`` (both, on one port).
        udp_idle_timeout: seconds after which a silent UDP flow ends; 0 = never.
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
        protocol: TunnelProtocol | str = TunnelProtocol.TCP,
        udp_idle_timeout: float = DEFAULT_UDP_IDLE,
    ) -> None:
        self.mode = Mode(mode)
        self.protocol = TunnelProtocol(protocol)
        self.udp_idle_timeout = udp_idle_timeout
        #: CONNECT mode with UDP: the local UDP socket, kept across sessions
        self._udp: UdpEndpoint | None = None
        #: a UDP socket handed to a successor (detach_listener), until it takes it
        self.udp_handover: socket.socket | None = None
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
        self._up = asyncio.Event()
        self._log = tunnel_logger(self.name, log)
        # The name goes to the server as a label (X-Aiowstunnel-Tunnel), where it must fit
        # TUNNEL_NAME; a library name that does not is kept here and not sent.
        self._sent_name = self.name if TUNNEL_NAME.fullmatch(self.name) else ""
        if not self._sent_name:
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
            if self.mode is Mode.CONNECT and not self._bound and self.predecessor is None:
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
            if not self._closing:
                await self._pause()

    async def _serve(self, session: Session) -> None:
        self.session = session
        self.stats.up = True
        self.stats.connects += 1
        self.stats.backoff_seconds = 0.0
        self._up.set()
        where = f", server listening on {self.listen_address}" if self.mode is Mode.LISTEN else ""
        self._log.info(
            "tunnel up: %s %s via %s%s",
            self.mode.value,
            self.connect if self.mode is Mode.CONNECT else self.listen,
            self.url,
            where,
        )
        reason = await session.wait_closed()
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
        if self._udp is not None:
            self._udp.close()
        if self.session is not None:
            self.session.goaway("tunnel removed or replaced")

    def detach_listener(self) -> socket.socket | None:
        """Stop accepting here and hand the listening socket over to a successor.

        The socket stays open and listening: connections that arrive meanwhile wait in its
        queue for the successor, none is refused. This instance then only drains its open
        streams (:meth:`close`). None when there is no single socket to hand over.
        """
        self._closing = True
        self._replaced = True
        if self.session is not None:
            self.session.goaway("tunnel replaced")
        udp, self._udp = self._udp, None
        if udp is not None and udp.transport is not None:
            # The UDP socket too: datagrams that come meanwhile wait in its buffer.
            udp_sock = udp.transport.get_extra_info("socket")
            if udp_sock is not None:
                self.udp_handover = socket.socket(fileno=os.dup(udp_sock.fileno()))
            udp.close()
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
        udp_sock, old.udp_handover = old.udp_handover, None
        try:
            await self._bind(sock, udp_sock)
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
        if self._udp is not None:
            self._udp.close()
            self._udp = None
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

    @property
    def _bound(self) -> bool:
        return self._listener is not None or self._udp is not None

    def _flows(self) -> FlowTable | None:
        """Where the local UDP socket's datagrams go: the session's flows, if one is up."""
        return self.session.flows if self.session is not None else None

    async def _bind(
        self, sock: socket.socket | None = None, udp_sock: socket.socket | None = None
    ) -> None:
        """Listen on :attr:`listen`, or serve ``sock`` (and ``udp_sock``), handed over."""
        if not self.protocol.tcp:
            if sock is not None:
                sock.close()  # the predecessor carried TCP; this one does not
            await self._bind_udp(self.listen.port, udp_sock)
            return
        await self._bind_tcp(sock)
        if self.protocol.udp:
            assert self.listen_address is not None
            try:
                # tcp+udp: the UDP socket takes the TCP listener's port (DNS: one port).
                await self._bind_udp(self.listen_address.port, udp_sock)
            except OSError:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                raise

    async def _bind_udp(self, port: int, sock: socket.socket | None) -> None:
        self._udp = await bind_endpoint(self.listen.bind_host, port, self._flows, self.stats, sock)
        self.listen_address = Address(self.listen.host, self._udp.address[1])
        how = "taking over" if sock else "listening on"
        self._log.info("%s udp %s", how, self.listen_address)

    async def _bind_tcp(self, sock: socket.socket | None = None) -> None:
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

    def _local_stream(self) -> asyncio.BaseProtocol:
        session = self.session
        if session is None or session.phase is not Phase.OPEN:
            return _Refuse(self)
        return session.new_stream()

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
        session.flows.idle_timeout = self.udp_idle_timeout
        if self.mode is Mode.LISTEN:
            # Set before the request: the server may open a stream right after the 101.
            if self.protocol.tcp:
                session.dial = tcp_dialer(
                    self.connect.host, self.connect.port, settings.connect_timeout
                )
            if self.protocol.udp:
                session.flows.dial = udp_dialer(
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
        tunnel = TunnelRequest(
            self.mode,
            target,
            self.token,
            self._sent_name,
            self.protocol,
            self.udp_idle_timeout,
        )
        for key, value in tunnel.headers():
            request.headers[key] = value
        session.send_request(request)
        try:
            response = await asyncio.wait_for(
                asyncio.shield(session.handshake), settings.handshake_timeout
            )
        except BaseException:
            session.abort("handshake failed")
            raise
        confirmed = response.headers.get(HEADER_PROTOCOL, TunnelProtocol.TCP.value)
        if confirmed != self.protocol.value:
            # A server of an older version ignores the header and would carry TCP only.
            session.abort("the server does not carry this protocol")
            raise HandshakeRefused(
                400,
                f"the server did not confirm {HEADER_PROTOCOL}: {self.protocol} (it answered "
                f"{confirmed!r}): it does not carry UDP tunnels; upgrade it",
            )
        if self.mode is Mode.LISTEN:
            bound = response.headers.get("X-Aiowstunnel-Bound")
            self.listen_address = Address.parse(bound, True) if bound else self.listen
        return session


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
