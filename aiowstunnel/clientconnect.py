"""One connection attempt of a client: the TCP (or proxied) and TLS connection to the
tunnel server, the upgrade request (the tunnel request, and the resumption headers), and
its answer: a fresh session (resumable if the server issued credentials), or a detached
session resumed on the new link. Reads the client through :class:`TunnelSide`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from typing import Protocol

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI

from . import resumeauth, wire
from .addresses import Address, AddressRule, Endpoint, SocketAddress, parse_socket_address
from .affinity import SERVER_HEADER, Affinity
from .destinations import RuleSet, dialer, proxy_protocol
from .dial import proxy_tunnel
from .errors import HandshakeRefused, ProtocolViolation, describe
from .handshake import (
    HEADER_EARLY_DATA,
    HEADER_PROTOCOL,
    Mode,
    TunnelProtocol,
    TunnelRequest,
    parse_early_data,
    refusal_label,
)
from .link import Link, ws_log
from .resumption import Discarded, ResumeHandshake, Resumption
from .session import Session
from .settings import SessionSettings
from .socks5 import Credentials
from .stats import TunnelStats
from .tlsreads import link_protocol
from .udpsocket import udp_dialer

#: What a failed connection attempt may raise (each is counted and logged: failure()).
ATTEMPT_ERRORS = (HandshakeRefused, ssl_module.SSLError, OSError, asyncio.TimeoutError)


def failure(exc: BaseException, url: str, tls: bool) -> tuple[str, str, int]:
    """A failed attempt to open a session with ``url``: the ``reason`` label it counts
    under, its log line and the line's level."""
    if isinstance(exc, HandshakeRefused):
        # the same labels the server counts in server_rejected_total (handshake.Refusal)
        label = refusal_label(exc.status, exc.named)
        if exc.retry_after is not None:  # busy, not wrong: it said when to come back
            return (
                "too_many_handshakes",  # the server's own reason for it
                f"server busy: {exc}; it asks to retry after {exc.retry_after:g} s",
                logging.WARNING,
            )
        return label, f"server refused the tunnel: {exc}", logging.ERROR
    if isinstance(exc, ssl_module.SSLError):
        return "tls", f"TLS failed with {url}: {describe(exc)}", logging.ERROR
    label = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connect"
    hint = ""
    if tls and isinstance(exc, ConnectionError):
        hint = " (a TLS server that requires a client certificate closes like this)"
    return label, f"cannot reach {url}: {describe(exc)}{hint}", logging.WARNING


class TunnelSide(Protocol):
    """What a connection attempt reads of its client (a :class:`~client.Client`); it sets
    ``listen_address`` (LISTEN: what the server bound)."""

    mode: Mode
    protocol: TunnelProtocol
    listen: SocketAddress
    connect: SocketAddress | None
    proxy_protocol: str
    allow_connect: tuple[AddressRule, ...]
    socks_credentials: Credentials | None
    ssl: ssl_module.SSLContext | None
    endpoint: Endpoint
    server: Address
    server_hostname: str | None
    token: str | None
    settings: SessionSettings
    name: str
    stats: TunnelStats
    proxy: Address | None
    listen_address: SocketAddress | None
    sent_name: str
    affinity: Affinity  # what the last fresh session's 101 said to route back to its server


async def open_session(
    side: TunnelSide, resume_of: Session | None = None, route: Affinity | None = None
) -> Session:
    """A fresh session, or (``resume_of``) a new link for a detached one, resumed; a
    resume carries ``route``, the affinity of the session's 101, for a balancer to send
    it to the server that holds the session (a fresh session: the balancer chooses).

    Raises:
        ResumeRefused: the server cannot resume ``resume_of`` (with the code).
    """
    loop = asyncio.get_running_loop()
    settings, endpoint = side.settings, side.endpoint
    ws = ClientProtocol(
        # The endpoint as websockets takes it: the request target whole in ``path``.
        WebSocketURI(endpoint.secure, endpoint.host, endpoint.port, endpoint.path, ""),
        subprotocols=[Subprotocol(wire.SUBPROTOCOL)],
        max_size=settings.max_frame,
        logger=ws_log,
    )
    handshake: ResumeHandshake | None = None
    if resume_of is None:
        session = Session(ws, side.stats, settings=settings, name=side.name)
        link = session.link
        if side.mode.server_listens:
            # Set before the request: the server may open a stream right after the 101.
            rules = RuleSet(f"tunnel {side.name!r}", "allow_connect", side.allow_connect)
            header = proxy_protocol(side.proxy_protocol)
            if side.protocol.tcp:
                session.dial = dialer(side.connect, lambda: rules, settings.connect_timeout, header)
            if side.protocol.udp and isinstance(side.connect, Address):
                connect = side.connect
                session.flows.dial = udp_dialer(
                    connect.host, connect.port, settings.connect_timeout
                )
    else:
        session = resume_of
        link = Link(ws, Discarded(), settings, max_data=session.mux.max_data)
        handshake = ResumeHandshake(link, session, None, settings.handshake_timeout)
    ssl = side.ssl
    server_hostname = (side.server_hostname or side.server.host) if ssl else None
    tls_timeout = settings.handshake_timeout if ssl else None
    if side.proxy:
        sock = await asyncio.wait_for(
            proxy_tunnel(side.proxy, side.server), settings.connect_timeout
        )
        connecting = loop.create_connection(
            lambda: link_protocol(link, ssl is not None),
            sock=sock,
            ssl=ssl,
            server_hostname=server_hostname,
            ssl_handshake_timeout=tls_timeout,
        )
    else:
        connecting = loop.create_connection(
            lambda: link_protocol(link, ssl is not None),
            side.server.host,
            side.server.port,
            ssl=ssl,
            server_hostname=server_hostname,
            ssl_handshake_timeout=tls_timeout,
        )
    await asyncio.wait_for(connecting, settings.connect_timeout)
    try:  # from here every way out but the session's start drops the connection
        request = ws.connect()
        target = side.listen if side.mode.server_listens else side.connect
        asked = "" if side.mode.server_listens else side.proxy_protocol  # else we send it
        creds = side.socks_credentials if side.mode is Mode.REVERSE_SOCKS5 else None
        auth = (creds.username, creds.password) if creds is not None else None
        tunnel = TunnelRequest(
            side.mode,
            target,
            side.token,
            side.sent_name,
            asked,
            auth,
            side.protocol,
            settings.udp_idle_timeout,
            early_data=session.mux.early_receive,
        )
        for key, value in tunnel.headers():
            request.headers[key] = value
        if resume_of is not None and resume_of.resumption is not None:
            request.headers[resumeauth.HEADER_RESUME] = resume_of.resumption.id_hex
            for key, value in (route or Affinity()).headers().items():
                request.headers[key] = value
        elif settings.resume_timeout > 0:
            request.headers[resumeauth.HEADER_RESUMABLE] = "1"
        link.send_request(request)
        response = await asyncio.wait_for(
            asyncio.shield(link.handshake), settings.handshake_timeout
        )
        _still_wanted()
        assert isinstance(response, Response)
        if handshake is not None:
            handshake.start(resumeauth.parse_challenge(response.headers))
            await asyncio.wait_for(asyncio.shield(handshake.done), settings.handshake_timeout)
            return session
        credentials = resumeauth.Credentials.from_headers(response.headers)
        try:  # what the server takes before its OPEN_OK (0 from older servers)
            early = response.headers.get_all(HEADER_EARLY_DATA)
            if len(early) > 1:
                raise ValueError(f"{len(early)} {HEADER_EARLY_DATA} headers")
            session.mux.early_send = parse_early_data(early[0] if early else None)
        except ValueError as exc:
            link.abort("handshake failed")
            raise ConnectionError(f"bad upgrade response: {exc}") from None
        confirmed = response.headers.get(HEADER_PROTOCOL, TunnelProtocol.TCP.value)
        if confirmed != side.protocol.value:
            # A server of an older version ignores the header and would carry TCP only.
            raise HandshakeRefused(
                400,
                f"the server did not confirm {HEADER_PROTOCOL}: {side.protocol} (it answered "
                f"{confirmed[:20]!r}): it does not carry UDP tunnels; upgrade it",
            )
    except ProtocolViolation as exc:  # a malformed resumption header in the 101
        link.abort("handshake failed")
        raise ConnectionError(f"bad upgrade response: {exc}") from None
    except BaseException:
        link.abort("handshake failed")
        raise
    if credentials is not None and settings.resume_timeout > 0:
        session.resumption = Resumption(
            credentials.session_id,
            settings.resume_timeout,
            credentials=credentials,
            path_delay=session.round_trip,
        )
    # What routes a resume of this session back to its server (affinity.py).
    side.affinity = Affinity.from_response(
        response.headers.get(SERVER_HEADER), response.headers.get_all("Set-Cookie")
    )
    if side.mode.server_listens:
        bound = response.headers.get("X-Aiowstunnel-Bound")
        side.listen_address = parse_socket_address(bound, True) if bound else side.listen
    return session


def _still_wanted() -> None:
    """Raise the cancellation that Python 3.11's wait_for drops when the awaited result and
    the cancel come in the same loop iteration (fixed in 3.12): a client whose close()
    cancelled it meanwhile must not be handed a session that nobody will close (close()
    would then wait for its task forever)."""
    task = asyncio.current_task()
    # Task.cancelling() exists from Python 3.11; on 3.10 this check is skipped
    if task is not None and getattr(task, "cancelling", lambda: 0)():
        raise asyncio.CancelledError
