"""Who may use the tunnel server, and for what (default deny).

A :class:`ClientPolicy` is one client entry: a token (kept only as its SHA-256) and the
addresses it may CONNECT to or LISTEN on. :class:`Policy` finds the entry for a presented
token in constant time and answers whether a request is allowed, with a reason when not.
Pure: name resolution for CIDR rules is done by the caller (the server) and passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .addresses import Address, AddressRule, IPAddress, SocketAddress, UnixPath, ip_or_none


def token_digest(token: str | bytes) -> bytes:
    """The SHA-256 of a token, the only form in which the server keeps it."""
    if isinstance(token, str):
        # Header values arrive decoded with surrogateescape: any str must encode, and a
        # token that is not plain ASCII simply matches nothing.
        token = token.encode("utf-8", "surrogatepass")
    return hashlib.sha256(token).digest()


@dataclass(frozen=True)
class ClientPolicy:
    """One ``[[server.client]]`` entry.

    Args:
        name: the client's name, used in logs and as the metrics ``tunnel`` label.
        token_sha256: SHA-256 digest (32 bytes) of the client's token.
        allow_connect: targets this client may have the server dial (CONNECT mode).
        allow_listen: addresses this client may have the server bind (LISTEN mode).
        max_sessions: tunnels this client may have up at once.
    """

    name: str
    token_sha256: bytes = field(repr=False)
    allow_connect: tuple[AddressRule, ...] = ()
    allow_listen: tuple[AddressRule, ...] = ()
    max_sessions: int = 16

    def __post_init__(self) -> None:
        if len(self.token_sha256) != 32:
            raise ValueError(f"client {self.name!r}: token_sha256 must be 32 bytes")

    # ``protocol``: "tcp" or "udp"; only the rules of that protocol count (a TCP rule
    # never grants UDP, and the other way round).

    def may_connect(self, target: SocketAddress, protocol: str = "tcp") -> bool:
        """True when a rule allows the target as written (name, IP literal, unix path)."""
        return allows(self.allow_connect, target, protocol)

    def may_connect_ip(self, ip: IPAddress, port: int, protocol: str = "tcp") -> bool:
        """True when a resolved address is allowed by an IP/CIDR rule."""
        return allows_ip(self.allow_connect, ip, port, protocol)

    def may_listen(self, address: SocketAddress, protocol: str = "tcp") -> bool:
        if isinstance(address, UnixPath):
            return allows(self.allow_listen, address, protocol)
        host = address.host or "0.0.0.0"
        rules = self.allow_listen
        return any(r.protocol == protocol and r.matches(host, address.port) for r in rules)

    def needs_resolution(self, target: SocketAddress, protocol: str = "tcp") -> bool:
        """True when the target is a name that no name rule allows but a CIDR rule might."""
        return isinstance(target, Address) and needs_resolution(
            self.allow_connect, target, protocol
        )


# The decisions over one rule list, shared by a client entry's allow_connect and a
# tunnel's own (reverse-socks5: the client decides what its streams may reach).


def allows(rules: Iterable[AddressRule], target: SocketAddress, protocol: str = "tcp") -> bool:
    """True when a rule of ``protocol`` allows the target as written (name, IP literal,
    unix path)."""
    return any(rule.protocol == protocol and rule.matches_address(target) for rule in rules)


def allows_ip(
    rules: Iterable[AddressRule], ip: IPAddress, port: int, protocol: str = "tcp"
) -> bool:
    """True when a resolved address is allowed by an IP/CIDR (or any-host) rule."""
    return any(rule.protocol == protocol and rule.matches_ip(ip, port) for rule in rules)


def needs_resolution(rules: Sequence[AddressRule], target: Address, protocol: str = "tcp") -> bool:
    """True when the target is a name that no name rule allows but a CIDR rule might."""
    return (
        ip_or_none(target.host) is None
        and not allows(rules, target, protocol)
        and any(
            r.protocol == protocol
            and r.network is not None
            and r.port_low <= target.port <= r.port_high
            for r in rules
        )
    )


#: The policy of a ``Server`` created without one: anyone, anything (the seed's behaviour).
OPEN_RELAY = ClientPolicy(
    "anonymous",
    token_digest(b""),
    (AddressRule.parse("*:*"), AddressRule.parse("udp:*:*")),
    (AddressRule.parse("*:*"), AddressRule.parse("udp:*:*")),
    max_sessions=1_000_000,
)


class Policy:
    """The server's client entries. ``None`` entries means an open relay (seed behaviour)."""

    def __init__(self, clients: Iterable[ClientPolicy] | None) -> None:
        self.open_relay = clients is None
        self.clients: Sequence[ClientPolicy] = tuple(clients or ())
        names = [c.name for c in self.clients]
        if len(set(names)) != len(names):
            raise ValueError("client names must be unique")

    def authenticate(self, token: str | None) -> ClientPolicy | None:
        """The entry whose token this is, or None.

        Every entry is compared, with ``hmac.compare_digest``, whatever matched first, so
        the time taken tells nothing about which entry or how many bytes matched.
        """
        if self.open_relay:
            return OPEN_RELAY
        if token is None:
            return None
        digest = token_digest(token)
        found = None
        for client in self.clients:
            if hmac.compare_digest(digest, client.token_sha256):
                found = client
        return found
