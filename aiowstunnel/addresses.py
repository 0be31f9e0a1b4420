"""Addresses and address rules, as written in configs and handshakes.

``host:port`` with IPv6 in brackets (``[::1]:9000``); rules add CIDR hosts and port ranges
(``10.0.0.0/8:22``, ``srv:8000-8100``, ``*:443``). A unix socket is ``unix:/abs/path``,
anywhere a ``host:port`` may be (a :data:`SocketAddress`) and as a rule (matching that path
exactly). A tunnel server's ``ws[s]://`` URL is an :class:`Endpoint`. Pure: no I/O, no DNS.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass, replace
from urllib.parse import quote, urlsplit

from .errors import AddressError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 host in brackets: the one way addresses are printed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_host(peer: object) -> str:
    """The host of a socket address (``get_extra_info("peername")``), anything else as a
    string: what the per-address handshake limit counts by."""
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def format_peer(peer: object) -> str:
    """A socket address (``get_extra_info("peername")``: a ``(host, port, ...)`` tuple) as
    ``host:port``; anything else (a string, None) as it is."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return host_port(str(peer[0]), peer[1])
    return str(peer or "")


def _split(text: str) -> tuple[str, str]:
    """Split ``host:port`` / ``[v6]:port`` / ``:port`` into host and port text."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise AddressError(f"{text!r}: expected '[ipv6]:port'")
        return text[1:end], text[end + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError(f"{text!r}: expected 'host:port'")
    if ":" in host:
        raise AddressError(f"{text!r}: an IPv6 address must be in brackets, as '[::1]:9000'")
    return host, port


def _port(text: str, where: str, allow_zero: bool = False) -> int:
    # ASCII digits only: str.isdigit() also accepts '²' and other scripts' digits.
    if not re.fullmatch(r"[0-9]+", text):
        raise AddressError(f"{where!r}: port {text!r} is not a number")
    port = int(text) if len(text) <= 5 else 65536  # no int() of a 5000-digit string
    if port > 65535:
        raise AddressError(f"{where!r}: port {text} is out of range")
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise AddressError(f"{where!r}: port {port} is out of range")
    return port


@dataclass(frozen=True)
class Address:
    """A TCP endpoint. ``host`` is a name or an IP literal (no brackets); ``""`` = all."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, allow_zero_port: bool = False) -> Address:
        """Parse ``host:port``.

        Args:
            text: the address as written; an empty host (``":9100"``) means all interfaces.
            allow_zero_port: accept port 0 (let the OS choose), for listeners.

        Raises:
            AddressError: with the offending text.
        """
        host, port = _split(text)
        if host and ip_or_none(host) is None and not _is_hostname(host):
            raise AddressError(f"{text!r}: not a host: {host!r} is neither a name nor an IP")
        return cls(host, _port(port, text, allow_zero_port))

    def __str__(self) -> str:
        return host_port(self.host, self.port)

    @property
    def bind_host(self) -> str | None:
        """The host as asyncio's ``create_server`` wants it (``None`` = all interfaces)."""
        return self.host or None


#: Characters with a meaning in a URL, kept as they are when an IRI's path is encoded.
_URL_DELIMS = ":/?#[]@!$&'()*+,;="


@dataclass(frozen=True)
class Endpoint:
    """A tunnel server's URL, parsed once: ``ws[s]://host[:port][/path][?query]``.

    ``path`` is the request target the upgrade asks for (the path, and ``?query`` if any);
    ``port`` is always set (80 for ws://, 443 for wss:// when the URL has none).
    """

    secure: bool
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str, default_path: str) -> Endpoint:
        """Parse a ``ws://`` or ``wss://`` URL.

        Args:
            text: the URL as written.
            default_path: the path when the URL has none.

        Raises:
            AddressError: with the URL and what is wrong with it.
        """
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise AddressError(f"{text!r}: {exc}") from None
        problem = None
        if parts.scheme not in ("ws", "wss"):
            problem = "expected a ws:// or wss:// URL"
        elif not parts.hostname:
            problem = "the URL has no host"
        elif port == 0:
            problem = "port 0 is not a server port"
        elif parts.username is not None or parts.password is not None:
            # URLs end up in logs: credentials belong in token_file.
            problem = "no credentials in the URL: use token_file"
        elif parts.fragment:
            problem = "a WebSocket URL has no #fragment"
        if problem:
            raise AddressError(f"{text!r}: {problem}")
        secure = parts.scheme == "wss"
        host, path, query = parts.hostname, parts.path or default_path, parts.query
        assert host  # checked above
        if not text.isascii():
            # An IRI: made a URI as websockets does (IDNA host, percent-encoded path), so
            # that the Host header and the request line stay ASCII.
            try:
                host = host.encode("idna").decode()
            except UnicodeError:
                raise AddressError(f"{text!r}: {host!r} is not a valid host name") from None
            path, query = quote(path, safe=_URL_DELIMS), quote(query, safe=_URL_DELIMS)
        target = path + (f"?{query}" if query else "")
        return cls(secure, host, port or (443 if secure else 80), target)

    @property
    def scheme(self) -> str:
        return "wss" if self.secure else "ws"

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)

    @property
    def url(self) -> str:
        """The URL, port included: ``ws://[::1]:9000/aiowstunnel``."""
        return f"{self.scheme}://{self.address}{self.path}"

    def __str__(self) -> str:
        return self.url


UNIX_SCHEME = "unix:"
#: sun_path holds 108 bytes with its terminating NUL (Linux).
MAX_UNIX_PATH = 107


@dataclass(frozen=True)
class UnixPath:
    """A unix stream socket, ``unix:/abs/path``: an endpoint anywhere a TCP one may be."""

    path: str

    @classmethod
    def parse(cls, text: str) -> UnixPath:
        """Parse ``unix:/abs/path``.

        Raises:
            AddressError: not absolute, too long for a socket address, or holding a NUL.
        """
        path = text.strip()[len(UNIX_SCHEME) :]
        if not path.startswith("/"):
            raise AddressError(f"{text!r}: a unix socket path must be absolute (unix:/run/x.sock)")
        if "\x00" in path or len(path.encode("utf-8", "surrogateescape")) > MAX_UNIX_PATH:
            raise AddressError(f"{text!r}: not a unix socket path (at most {MAX_UNIX_PATH} bytes)")
        return cls(posixpath.normpath(path))

    def __str__(self) -> str:
        return UNIX_SCHEME + self.path


#: Where a socket listens or connects: ``host:port``, or a unix socket path.
SocketAddress = Address | UnixPath


def parse_socket_address(text: str, allow_zero_port: bool = False) -> SocketAddress:
    """``unix:/path`` or ``host:port`` (see :meth:`Address.parse`)."""
    if text.strip().startswith(UNIX_SCHEME):
        return UnixPath.parse(text)
    return Address.parse(text, allow_zero_port=allow_zero_port)


def socket_address(host: str, port: int | str) -> SocketAddress:
    """The seed's (host, port) pair, or a unix socket given as host ``unix:/path``."""
    if host.startswith(UNIX_SCHEME):
        return UnixPath.parse(host)
    return Address(host, int(port))


def ip_or_none(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class AddressRule:
    """One ``allow_connect`` / ``allow_listen`` entry: a protocol, a host, CIDR or ``*``,
    and ports.

    A name matches only the same name (case-insensitive): a rule never makes the server
    resolve names to decide. A CIDR (or a bare IP) matches IP addresses inside it. A rule
    is for one protocol, TCP unless it starts with ``udp:``: a TCP rule never grants UDP.
    """

    text: str
    hostname: str | None  # set for a DNS name rule; None for IP/CIDR/any
    network: IPNetwork | None  # set for an IP/CIDR rule
    port_low: int
    port_high: int
    unix_path: str | None = None  # set for a ``unix:/path`` rule, which matches only it
    protocol: str = "tcp"  # "tcp" or "udp"

    @classmethod
    def parse(cls, text: str) -> AddressRule:
        """Parse ``host:port``, ``cidr:port``, ``host:low-high``, ``*:port`` or ``unix:/path``,
        the first four optionally after ``tcp:`` or ``udp:`` (``udp:127.0.0.1:53``).

        Raises:
            AddressError: naming the rule.
        """
        protocol, body = rule_protocol(text)
        if body.startswith(UNIX_SCHEME):
            if protocol == "udp":
                raise AddressError(f"{text!r}: a udp rule names a host and ports, not a path")
            return cls(text, None, None, 0, -1, UnixPath.parse(body).path)
        rule = cls._parse(text, body)
        return rule if protocol == "tcp" else replace(rule, protocol=protocol)

    @classmethod
    def _parse(cls, text: str, body: str) -> AddressRule:
        host, ports = _split(body)
        if ports == "*":
            low, high = 0, 65535  # 0 too: a LISTEN on port 0 asks for any free port
        elif "-" in ports:
            a, _, b = ports.partition("-")
            low, high = _port(a, text), _port(b, text)
            if low > high:
                raise AddressError(f"{text!r}: port range {low}-{high} is empty")
        else:
            low = high = _port(ports, text)
        if host in ("*", ""):
            return cls(text, None, None, low, high)
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            network = None
        if network is not None:
            return cls(text, None, network, low, high)
        if "/" in host or not _is_hostname(host):
            raise AddressError(f"{text!r}: {host!r} is neither a host name, an IP nor a CIDR")
        return cls(text, host.lower().rstrip("."), None, low, high)

    @property
    def any_host(self) -> bool:
        return self.hostname is None and self.network is None and self.unix_path is None

    def matches_address(self, endpoint: SocketAddress) -> bool:
        """:meth:`matches` for TCP; a unix path matches only a rule naming that path."""
        if isinstance(endpoint, UnixPath):
            return self.unix_path == endpoint.path
        return self.matches(endpoint.host, endpoint.port)

    def matches(self, host: str, port: int) -> bool:
        """True when ``host:port`` falls under this rule (``host`` as the peer wrote it)."""
        if not self.port_low <= port <= self.port_high:
            return False
        if self.any_host:
            return True
        ip = ip_or_none(host)
        if ip is None:
            return self.hostname is not None and host.lower().rstrip(".") == self.hostname
        if self.network is not None:
            return _in_network(ip, self.network)
        return False

    def matches_ip(self, ip: IPAddress, port: int) -> bool:
        """True when a resolved address is covered by an IP/CIDR (or any-host) rule."""
        if not self.port_low <= port <= self.port_high:
            return False
        if self.any_host:
            return True
        return self.network is not None and _in_network(ip, self.network)

    def __str__(self) -> str:
        return self.text


def rule_protocol(text: str) -> tuple[str, str]:
    """A rule's protocol prefix and the rest: ``("udp", "127.0.0.1:53")``.

    ``tcp:`` or ``udp:`` is a prefix only when an address follows it (a colon or a
    bracket after it): ``udp:53`` stays the host ``udp``, port 53, as it always was.
    """
    stripped = text.strip()
    for name in ("tcp", "udp"):
        rest = stripped[len(name) + 1 :]
        if stripped[: len(name) + 1].lower() == f"{name}:" and (":" in rest or rest[:1] == "["):
            return name, rest
    return "tcp", stripped


def _in_network(ip: IPAddress, network: IPNetwork) -> bool:
    if ip.version != network.version:
        # ::ffff:10.0.0.1 is 10.0.0.1 for the purpose of a rule.
        mapped = getattr(ip, "ipv4_mapped", None)
        return mapped is not None and mapped in network
    return ip in network


def _is_hostname(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63
        and all(c.isalnum() or c in "-_" for c in label)
        and not label.startswith("-")
        for label in labels
    )


#: the port of an ``http://host`` proxy URL that names none
DEFAULT_PROXY_PORT = 3128


def parse_proxy_url(text: str) -> Address:
    """An HTTP proxy's ``http://host[:port]`` (the tunnel's ``proxy``), as the address to
    reach it at; the one parse of it, for the config's check and the client alike.

    Raises:
        AddressError: not an http://host:port URL (names what is wrong).
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise AddressError(f"{text!r}: {exc}") from None
    problem = None
    if parts.scheme != "http":
        problem = "expected an http://host:port URL"
    elif not parts.hostname:
        problem = "the URL has no host"
    elif port == 0:
        problem = "port 0 is not a proxy port"
    elif parts.username is not None or parts.password is not None:
        problem = "proxy credentials are not supported"
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        problem = "expected http://host:port, with no path"
    if problem:
        raise AddressError(f"{text!r}: {problem}")
    assert parts.hostname is not None
    return Address(parts.hostname, port or DEFAULT_PROXY_PORT)
