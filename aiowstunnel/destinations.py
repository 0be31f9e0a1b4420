"""Where a stream may go: each OPEN's own target, checked against a rule set, then dialed.

An OPEN may name its target (protocol.md, Frames): a SOCKS request's, or ``stdio``'s. The
dialing side checks every one against its rules before anything is dialed, with the same
rules and the same pinning as the handshake (policy.py): a name allowed only by a CIDR rule
is resolved once and the address that matched is dialed, so DNS cannot steer it elsewhere.
A refused target is never connected to; the refusal is a PermissionError whose text names
the rule set, which the session counts as ``forbidden`` and sends back in OPEN_FAIL.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import proxyproto
from .addresses import (
    Address,
    AddressRule,
    SocketAddress,
    UnixPath,
    ip_or_none,
    parse_socket_address,
)
from .errors import AddressError, describe
from .policy import allows, allows_ip, needs_resolution

#: Called once the connection is up, before any tunneled byte: e.g. a PROXY protocol
#: header written to the backend (proxyproto.py). Arguments: transport, the OPEN's origin.
OnConnected = Callable[[asyncio.BaseTransport, str], None]


class TargetRefused(PermissionError):
    """The rules do not allow a stream's target; the text names the rule set."""


@dataclass(frozen=True)
class RuleSet:
    """Whose rules decide, for messages (``client 'app'``, ``tunnel 'office'``), and the rules."""

    owner: str
    key: str
    rules: tuple[AddressRule, ...]
    protocol: str = "tcp"  # only the rules of this protocol count ("udp": a UDP flow's)


async def check_target(ruleset: RuleSet, target: SocketAddress, timeout: float) -> SocketAddress:
    """Where to dial for ``target``, or TargetRefused.

    Raises:
        TargetRefused: no rule allows it (or it resolves only to addresses none allows).
    """
    rules, protocol = ruleset.rules, ruleset.protocol
    shown = f"udp:{target}" if protocol == "udp" else str(target)
    refused = f"{ruleset.owner} may not connect to {shown} (not in {ruleset.key})"
    if allows(rules, target, protocol):
        return target
    if isinstance(target, UnixPath) or not needs_resolution(rules, target, protocol):
        raise TargetRefused(refused)
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(target.host, target.port, type=kind), timeout
        )
    except (OSError, asyncio.TimeoutError) as exc:
        raise TargetRefused(f"{refused}: cannot resolve {target.host}: {describe(exc)}") from None
    for info in infos:
        ip = ip_or_none(str(info[4][0]))
        if ip is not None and allows_ip(rules, ip, target.port, protocol):
            return Address(str(ip), target.port)
    raise TargetRefused(
        f"{ruleset.owner} may not connect to {shown}: it resolves to addresses outside "
        f"{ruleset.key}"
    )


async def open_endpoint(
    factory: Callable[[], asyncio.Protocol], endpoint: SocketAddress, timeout: float
) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """Connect to a TCP or unix endpoint, with a timeout; errors name the endpoint."""
    loop = asyncio.get_running_loop()
    if isinstance(endpoint, UnixPath):
        connecting = loop.create_unix_connection(factory, endpoint.path)
    else:
        connecting = loop.create_connection(factory, endpoint.host, endpoint.port)
    try:
        return await asyncio.wait_for(connecting, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"connect to {endpoint} timed out after {timeout:g} s") from None
    except OSError as exc:
        # asyncio's own text ("Connect call failed (...)") hides the errno's meaning.
        raise type(exc)(exc.errno, f"connect to {endpoint} failed: {describe(exc)}") from exc


def dialer(
    default: SocketAddress | None,
    ruleset: Callable[[], RuleSet],
    timeout: float,
    on_connected: OnConnected | None = None,
) -> Callable[..., Awaitable[tuple[asyncio.BaseTransport, asyncio.Protocol]]]:
    """A session's Dial: an OPEN without a target goes to ``default`` (None: refused),
    one with a target goes there if ``ruleset()`` allows it. ``ruleset`` is called per
    stream, so that a reload's new rules apply to the next stream."""

    async def dial(
        factory: Callable[[], asyncio.Protocol], origin: str, target: str = ""
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        if not target:
            if default is None:
                raise TargetRefused("this tunnel has no target of its own: the OPEN must name one")
            endpoint = default
        else:
            try:
                wanted = parse_socket_address(target)
            except AddressError as exc:
                raise ValueError(f"bad target: {exc}") from None
            endpoint = await check_target(ruleset(), wanted, timeout)
        if on_connected is None:
            return await open_endpoint(factory, endpoint, timeout)

        def connected_first() -> asyncio.Protocol:
            # Run inside connection_made, before the stream's OPEN_OK: nothing tunneled
            # can reach the socket ahead of what on_connected writes.
            protocol = factory()
            protocol.before_open = lambda transport: on_connected(transport, origin)  # type: ignore[attr-defined]
            return protocol

        return await open_endpoint(connected_first, endpoint, timeout)

    return dial


def proxy_protocol(version: str | None) -> OnConnected | None:
    """What writes a PROXY protocol header (``v1``/``v2``) to each new backend connection,
    from the OPEN's origin to the backend as dialed; None for no header."""
    if not version:
        return None

    def write(transport: asyncio.BaseTransport, origin: str) -> None:
        peer = transport.get_extra_info("peername")
        transport.write(proxyproto.header(version, origin, peer))  # type: ignore[attr-defined]

    return write
