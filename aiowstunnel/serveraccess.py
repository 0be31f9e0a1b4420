"""Who may ask for what, on the server: the checks of a tunnel request before the upgrade.

The request's authentication (path, subprotocol, token), the :class:`Grant` an accepted
session keeps, its re-check when the client entries change (a reload), a CONNECT target's
check (pinned to an allowed address where a CIDR rule allowed it), and the rule set of a
client entry's ``allow_connect``. Pure decisions over the policy; the server counts, logs
and answers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from websockets.http11 import Request

from . import wire
from .addresses import Address, SocketAddress, ip_or_none
from .destinations import RuleSet, TargetRefused, check_target
from .handshake import Mode, Refusal, RequestRefused, TunnelRequest
from .limits import Slot
from .policy import ClientPolicy, Policy
from .udpsocket import UdpEndpoint


@dataclass(eq=False)
class Grant:
    """What one accepted session was allowed: kept to re-check it when rules change."""

    client: ClientPolicy
    request: TunnelRequest
    target: SocketAddress | None = None  # CONNECT: where the server dials (pinned IP if resolved)
    listener: asyncio.Server | None = None  # LISTEN: the socket bound for this session
    bound: str = ""  # LISTEN: the address actually bound (port 0 resolved)
    slot: Slot | None = None  # its place in max_sessions and max_sessions_total
    #: UDP: CONNECT: where the flows' sockets send (pinned IP if resolved, as ``target``);
    #: LISTEN: the UDP socket bound for this session
    udp_target: SocketAddress | None = None
    udp_endpoint: UdpEndpoint | None = None

    @property
    def what(self) -> str:
        """What the session serves, for its "session opened" line."""
        mode = self.request.mode
        if mode is Mode.CONNECT:
            return f"connect to {self.request.address}"
        if mode is Mode.SOCKS5:
            return "socks5: each stream's target checked against allow_connect"
        return f"{'SOCKS5 proxy ' if mode.socks else ''}listen on {self.bound}"

    def close_listeners(self) -> None:
        """Stop taking new connections and datagrams for the session (LISTEN modes)."""
        if self.listener is not None:
            self.listener.close()
        if self.udp_endpoint is not None:
            self.udp_endpoint.close()


def authenticate(
    request: Request, path: str, policy: Policy, *, closing: bool = False
) -> tuple[ClientPolicy, TunnelRequest]:
    """Who asks for what (path, subprotocol, token) at the endpoint ``path``, or the refusal
    (``closing``: the server is shutting down)."""
    if closing:
        raise RequestRefused(Refusal.SHUTTING_DOWN, "server is shutting down")
    # The request target is a path (origin-form), never split as a URL: urlsplit
    # would read "//evil/aiowstunnel" as host "evil" and path "/aiowstunnel".
    asked = request.path.partition("?")[0]
    if asked != path:
        raise RequestRefused(Refusal.NOT_FOUND, f"no tunnel endpoint at {asked}")
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
    client = policy.authenticate(tunnel.token)
    if client is None:
        reason = "missing bearer token" if tunnel.token is None else "invalid token"
        raise RequestRefused(Refusal.BAD_TOKEN, reason)
    return client, tunnel


def still_allowed(policy: Policy, grant: Grant) -> str:
    """Why a granted session is no longer allowed, or ``""`` (and then the session
    adopts its client's new entry, e.g. a raised max_sessions)."""
    if policy.open_relay:
        return ""
    current = next((c for c in policy.clients if c.name == grant.client.name), None)
    if current is None:
        return f"client entry {grant.client.name!r} was removed"
    if current.token_sha256 != grant.client.token_sha256:
        return f"the token of client {grant.client.name!r} changed"
    request = grant.request
    for protocol in request.protocol.names:  # each one: a TCP rule never grants UDP
        shown = _shown(request.address, protocol)
        if request.mode is Mode.SOCKS5:
            if not current.allow_connect:
                return f"client {current.name!r} may no longer connect anywhere"
        elif request.mode is Mode.CONNECT:
            assert request.address is not None
            target = (grant.udp_target if protocol == "udp" else grant.target) or request.address
            allowed = current.may_connect(request.address, protocol)
            if not allowed and isinstance(target, Address):  # pinned to a resolved IP?
                ip = ip_or_none(target.host)
                allowed = ip is not None and current.may_connect_ip(ip, target.port, protocol)
            if not allowed:
                return f"connect to {shown} is no longer allowed"
        elif request.address is None or not current.may_listen(request.address, protocol):
            return f"listen on {shown} is no longer allowed"
    grant.client = current
    return ""


async def check_grant(grant: Grant, timeout: float) -> None:
    """What the request asks, checked against its client entry's rules, for each protocol
    it carries; a CONNECT target resolved and pinned into ``grant`` (or the 403)."""
    client, tunnel = grant.client, grant.request
    for protocol in tunnel.protocol.names:  # each one: a TCP rule never grants UDP
        if tunnel.mode is Mode.CONNECT:
            assert tunnel.address is not None
            target = await connect_target(client, tunnel.address, timeout, protocol)
            if protocol == "udp":
                grant.udp_target = target
            else:
                grant.target = target
        elif tunnel.mode is Mode.SOCKS5:
            if not client.allow_connect:
                raise RequestRefused(
                    Refusal.FORBIDDEN,
                    f"client {client.name!r} may not connect anywhere (allow_connect is empty)",
                )
        elif tunnel.address is None or not client.may_listen(tunnel.address, protocol):
            raise RequestRefused(
                Refusal.FORBIDDEN,
                f"client {client.name!r} may not listen on {_shown(tunnel.address, protocol)} "
                "(not in allow_listen)",
            )


async def connect_target(
    client: ClientPolicy, target: SocketAddress, timeout: float, protocol: str = "tcp"
) -> SocketAddress:
    """Where to dial for a CONNECT request, or a 403 refusal.

    A name allowed by a name rule is dialed by name. A name allowed only through a
    CIDR rule is resolved here, and the session is pinned to an address that the rule
    allows, so a later DNS answer cannot steer it elsewhere.
    """
    try:
        return await check_target(client_rules(client, protocol), target, timeout)
    except TargetRefused as exc:
        raise RequestRefused(Refusal.FORBIDDEN, str(exc)) from None


def same_tunnel(grant: Grant, client: ClientPolicy, tunnel: TunnelRequest) -> bool:
    """The same client entry (name and token) asking for the same tunnel."""
    request = grant.request
    return (
        grant.client.name == client.name
        and grant.client.token_sha256 == client.token_sha256
        and (request.mode, request.address, request.tunnel, request.protocol)
        == (tunnel.mode, tunnel.address, tunnel.tunnel, tunnel.protocol)
    )


def client_rules(client: ClientPolicy, protocol: str = "tcp") -> RuleSet:
    """A client entry's allow_connect as the rule set each target is checked against."""
    return RuleSet(f"client {client.name!r}", "allow_connect", client.allow_connect, protocol)


def _shown(address: SocketAddress | None, protocol: str) -> str:
    """An address in a refusal: ``udp:`` before it when the protocol is UDP, as the rule
    that would allow it is written."""
    return f"udp:{address}" if protocol == "udp" else str(address)
