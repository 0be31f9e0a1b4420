"""PROXY protocol headers, v1 (text) and v2 (binary), as HAProxy's specification defines them.

The dialing side writes one before any tunneled byte when a tunnel has
``proxy_protocol = "v1"`` or ``"v2"``, so that the backend (nginx ``listen ... proxy_protocol``,
HAProxy ``accept-proxy``, Postfix, ...) sees the original client's address rather than the
tunnel's. The source is the OPEN's origin: the peer that the listening side accepted. The
destination is the backend's address as dialed. An origin that is not an IP address and
port (a unix socket's peer) gives the header's "unknown" form: v1 ``PROXY UNKNOWN``, v2 the
LOCAL command, which tell the backend to use the connection's own addresses. Pure.
"""

from __future__ import annotations

import ipaddress
import struct

from .addresses import Address, IPAddress, ip_or_none
from .errors import AddressError

VERSIONS = ("v1", "v2")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_TCP4 = 0x11  # AF_INET, STREAM
_TCP6 = 0x21  # AF_INET6, STREAM

Peer = tuple[IPAddress, int]


def peer_of(text: str) -> Peer | None:
    """``host:port`` with an IP host, as an (address, port) pair; None for anything else."""
    try:
        address = Address.parse(text)
    except AddressError:
        return None
    ip = ip_or_none(address.host)
    return (ip, address.port) if ip is not None else None


def _same_family(source: Peer, destination: Peer | None) -> tuple[Peer, Peer]:
    """Both ends in one family (the header has one): IPv4 becomes v4-mapped IPv6 beside an
    IPv6 end; an unknown destination is the unspecified address of the source's family."""
    src_ip, src_port = source
    if destination is None:
        zero = ipaddress.ip_address("0.0.0.0" if src_ip.version == 4 else "::")
        return source, (zero, 0)
    dst_ip, dst_port = destination
    if src_ip.version == dst_ip.version:
        return source, destination

    def mapped(ip: IPAddress) -> ipaddress.IPv6Address:
        return (
            ip if isinstance(ip, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{ip}")
        )

    return (mapped(src_ip), src_port), (mapped(dst_ip), dst_port)


def v1_header(source: Peer | None, destination: Peer | None) -> bytes:
    """``PROXY TCP4 src dst sport dport\\r\\n`` (or TCP6, or ``PROXY UNKNOWN\\r\\n``)."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    (src, sport), (dst, dport) = _same_family(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def v2_header(source: Peer | None, destination: Peer | None) -> bytes:
    """The binary header: signature, PROXY command, TCP over IPv4/IPv6, both addresses."""
    if source is None:
        return V2_SIGNATURE + bytes((_V2_LOCAL, 0x00)) + struct.pack("!H", 0)
    (src, sport), (dst, dport) = _same_family(source, destination)
    family = _TCP4 if src.version == 4 else _TCP6
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes((_V2_PROXY, family)) + struct.pack("!H", len(body)) + body


def header(version: str, origin: str, destination: object) -> bytes:
    """The header for a stream from ``origin`` (the OPEN's) to ``destination`` (a socket's
    peername: a ``(host, port, ...)`` tuple, or anything else for unknown)."""
    source = peer_of(origin)
    dest: Peer | None = None
    if isinstance(destination, tuple) and len(destination) >= 2:
        ip = ip_or_none(str(destination[0]).partition("%")[0])
        if ip is not None:
            dest = (ip, int(destination[1]))
    if version == "v1":
        return v1_header(source, dest)
    if version == "v2":
        return v2_header(source, dest)
    raise ValueError(f"unknown PROXY protocol version {version!r}: expected v1 or v2")


def parse_v2_addresses(data: bytes) -> tuple[Peer, Peer] | None:
    """The (source, destination) of a v2 PROXY header (tests read back what was sent)."""
    if not data.startswith(V2_SIGNATURE) or data[12] != _V2_PROXY:
        return None
    family = data[13]
    body = data[16 : 16 + struct.unpack("!H", data[14:16])[0]]
    size = 4 if family == _TCP4 else 16
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return (src, sport), (dst, dport)
