"""The tunnel request carried by the WebSocket upgrade, and the server's refusals.

The client says in HTTP headers which tunnel it wants (mode and one address) and who it
is (``Authorization: Bearer``); the server answers with 101, or with a status and a plain
text reason before any upgrade (protocol.md, Handshake). Pure: headers in, objects out.
"""

from __future__ import annotations

import base64
import enum
import http
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .addresses import SocketAddress, UnixPath, parse_socket_address
from .errors import AddressError, TunnelError

HEADER_MODE = "X-Aiowstunnel-Mode"
HEADER_ADDRESS = "X-Aiowstunnel-Address"
HEADER_TUNNEL = "X-Aiowstunnel-Tunnel"
#: connect / socks5: the server writes a PROXY protocol header (v1 or v2) to each backend
HEADER_PROXY_PROTOCOL = "X-Aiowstunnel-Proxy-Protocol"
PROXY_PROTOCOL_VERSIONS = ("v1", "v2")
#: reverse-socks5: the RFC 1929 username and password the server's SOCKS proxy asks for, as
#: ``base64(username) base64(password)`` (a secret, like the token: wss:// keeps it)
HEADER_SOCKS_AUTH = "X-Aiowstunnel-Socks-Auth"
#: What the session carries (protocol.md, Handshake): absent means "tcp", so a client of
#: an older version asks for what it always did. The 101 repeats it when it is not "tcp";
#: a server that does not know the header would not, and the client stops there.
HEADER_PROTOCOL = "X-Aiowstunnel-Protocol"
#: LISTEN with UDP: the server opens the flows, and ends each after this many idle seconds
#: (the tunnel's udp_idle_timeout; 0 = never).
HEADER_UDP_IDLE = "X-Aiowstunnel-Udp-Idle-Timeout"
#: On a refused upgrade: the refusal's label (Refusal.label, the ``reason`` of the metrics),
#: so that a client tells apart the refusals that share a status (503: shutting down, full)
HEADER_REFUSAL = "X-Aiowstunnel-Refusal"
#: both ways (the request and the 101): how many bytes of DATA the sender takes on each
#: stream its peer opens, before its OPEN_OK (protocol.md, Early data); absent = none
HEADER_EARLY_DATA = "X-Aiowstunnel-Early-Data"
#: The longest idle timeout a client may ask for (a day); 0 (never) is allowed too: the
#: flows are bounded by the stream limits either way.
MAX_UDP_IDLE = 86_400.0
DEFAULT_UDP_IDLE = 60.0
#: A tunnel's name becomes a metric label and a log field on the server: bounded in length
#: and charset (a library client's default name, e.g. ``connect:[::1]:0``, fits).
TUNNEL_NAME = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,128}")
DEFAULT_PATH = "/aiowstunnel"


class Mode(enum.Enum):
    """CONNECT: the client listens, the server dials. LISTEN: the server listens, the
    client dials. The side that owns the listener opens the streams.

    SOCKS5 and REVERSE_SOCKS5 are CONNECT and LISTEN whose listener is a SOCKS5 proxy:
    each stream's OPEN names its own target, which the dialing side checks (socks.py,
    destinations.py); the session has no target of its own.
    """

    CONNECT = "connect"
    LISTEN = "listen"
    SOCKS5 = "socks5"
    REVERSE_SOCKS5 = "reverse-socks5"

    def __str__(self) -> str:
        return self.value

    @property
    def server_listens(self) -> bool:
        """The server owns the listener (and the client dials)."""
        return self in (Mode.LISTEN, Mode.REVERSE_SOCKS5)

    @property
    def socks(self) -> bool:
        """The listener is a SOCKS5 proxy: each stream names its target."""
        return self in (Mode.SOCKS5, Mode.REVERSE_SOCKS5)


CONNECT = Mode.CONNECT
LISTEN = Mode.LISTEN
SOCKS5 = Mode.SOCKS5
REVERSE_SOCKS5 = Mode.REVERSE_SOCKS5


class TunnelProtocol(enum.Enum):
    """What a tunnel carries: TCP streams, UDP datagram flows, or both on one address
    (DNS: the same port over UDP and TCP)."""

    TCP = "tcp"
    UDP = "udp"
    BOTH = "tcp+udp"

    @property
    def tcp(self) -> bool:
        return self is not TunnelProtocol.UDP

    @property
    def udp(self) -> bool:
        return self is not TunnelProtocol.TCP

    @property
    def names(self) -> tuple[str, ...]:
        """The protocols one by one: ("tcp",), ("udp",) or ("tcp", "udp")."""
        return tuple(name for name in ("tcp", "udp") if getattr(self, name))

    @property
    def note(self) -> str:
        """For a log line: ``""`` for TCP, else `` (udp)`` or `` (tcp+udp)``."""
        return "" if self is TunnelProtocol.TCP else f" ({self.value})"

    def __str__(self) -> str:
        return self.value


class Refusal(enum.Enum):
    """Why a server refuses an upgrade: the HTTP status, and the metric's ``reason``."""

    BAD_REQUEST = (http.HTTPStatus.BAD_REQUEST, "bad_request")
    BAD_TOKEN = (http.HTTPStatus.UNAUTHORIZED, "bad_token")
    FORBIDDEN = (http.HTTPStatus.FORBIDDEN, "forbidden")
    NOT_FOUND = (http.HTTPStatus.NOT_FOUND, "bad_path")
    LISTEN_FAILED = (http.HTTPStatus.CONFLICT, "listen_failed")
    TOO_MANY_SESSIONS = (http.HTTPStatus.TOO_MANY_REQUESTS, "too_many_sessions")
    SHUTTING_DOWN = (http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting_down")
    SERVER_FULL = (http.HTTPStatus.SERVICE_UNAVAILABLE, "server_full")
    #: a resume refused before the upgrade; its code is in X-Aiowstunnel-Resume-Refused
    RESUME_REFUSED = (http.HTTPStatus.GONE, "resume_refused")

    @property
    def status(self) -> http.HTTPStatus:
        return self.value[0]

    @property
    def label(self) -> str:
        return self.value[1]


def refusal_label(status: int, named: str | None) -> str:
    """The label of a refusal the client got: the server's ``X-Aiowstunnel-Refusal``
    (``named``) when it is a refusal of that status, else the first refusal listed with
    the status (503 without it: ``shutting_down``), else ``http_<status>``."""
    fits = [refusal.label for refusal in Refusal if refusal.status == status]
    if named in fits:
        return named
    return fits[0] if fits else f"http_{status}"


class RequestRefused(TunnelError):
    """Raised while checking a tunnel request; becomes the HTTP refusal (the client sees
    it as :class:`~aiowstunnel.errors.HandshakeRefused`)."""

    def __init__(self, refusal: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.refusal = refusal
        self.reason = reason


@dataclass(frozen=True)
class TunnelRequest:
    """What a client asks of the server.

    ``address`` is the target the server dials (CONNECT) or the address it binds (LISTEN,
    REVERSE_SOCKS5); None in SOCKS5, where each stream names its own.
    """

    mode: Mode
    address: SocketAddress | None  # host:port, or unix:/path
    token: str | None = field(default=None, repr=False)
    tunnel: str = ""  # the client's name for the tunnel ("" when it sent none)
    proxy_protocol: str = ""  # "v1", "v2": the server sends that header to each backend
    #: reverse-socks5: (username, password) the server's SOCKS listener asks for
    socks_auth: tuple[str, str] | None = field(default=None, repr=False)
    protocol: TunnelProtocol = TunnelProtocol.TCP
    #: LISTEN with UDP: how long the server keeps an idle flow (0 = never)
    udp_idle_timeout: float = DEFAULT_UDP_IDLE
    #: the early data the client takes on each stream the server opens (0 = none)
    early_data: int = 0

    def headers(self) -> list[tuple[str, str]]:
        headers = [(HEADER_MODE, self.mode.value)]
        if self.address is not None:
            headers.append((HEADER_ADDRESS, str(self.address)))
        if self.tunnel:
            headers.append((HEADER_TUNNEL, self.tunnel))
        if self.proxy_protocol:
            headers.append((HEADER_PROXY_PROTOCOL, self.proxy_protocol))
        if self.socks_auth is not None:
            user, password = (base64.b64encode(p.encode()).decode() for p in self.socks_auth)
            headers.append((HEADER_SOCKS_AUTH, f"{user} {password}"))
        if self.protocol is not TunnelProtocol.TCP:
            headers.append((HEADER_PROTOCOL, self.protocol.value))
            if self.mode is Mode.LISTEN:
                headers.append((HEADER_UDP_IDLE, f"{self.udp_idle_timeout:g}"))
        if self.early_data:
            headers.append((HEADER_EARLY_DATA, str(self.early_data)))
        if self.token is not None:
            headers.append(("Authorization", f"Bearer {self.token}"))
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> TunnelRequest:
        """Read the request out of the upgrade's headers.

        Raises:
            RequestRefused: 400 with what is missing or malformed.
        """
        once = (
            HEADER_MODE,
            HEADER_ADDRESS,
            HEADER_PROTOCOL,
            HEADER_UDP_IDLE,
            HEADER_EARLY_DATA,
            "Authorization",
        )
        for name in once:
            if len(_all(headers, name)) > 1:
                raise RequestRefused(Refusal.BAD_REQUEST, f"duplicate {name} header")
        mode_text = headers.get(HEADER_MODE)
        if mode_text is None:
            raise RequestRefused(Refusal.BAD_REQUEST, f"missing {HEADER_MODE} header")
        try:
            mode = Mode(mode_text.strip().lower())
        except ValueError:
            modes = ", ".join(repr(m.value) for m in Mode)
            raise RequestRefused(
                Refusal.BAD_REQUEST, f"{HEADER_MODE}: {mode_text!r} is not one of {modes}"
            ) from None
        address_text = headers.get(HEADER_ADDRESS)
        address: SocketAddress | None = None
        if mode is Mode.SOCKS5:
            if address_text is not None:
                raise RequestRefused(
                    Refusal.BAD_REQUEST, f"{HEADER_ADDRESS}: a socks5 session has no target"
                )
        elif address_text is None:
            raise RequestRefused(Refusal.BAD_REQUEST, f"missing {HEADER_ADDRESS} header")
        else:
            try:
                address = parse_socket_address(address_text, allow_zero_port=mode.server_listens)
            except AddressError as exc:
                raise RequestRefused(Refusal.BAD_REQUEST, f"{HEADER_ADDRESS}: {exc}") from None
        tunnel = headers.get(HEADER_TUNNEL, "").strip()
        if tunnel and not TUNNEL_NAME.fullmatch(tunnel):
            shown = tunnel if len(tunnel) <= 40 else tunnel[:40] + "..."
            raise RequestRefused(
                Refusal.BAD_REQUEST,
                f"{HEADER_TUNNEL}: {shown!r}: use at most 128 letters, digits, "
                "'_', '.', ':', '[', ']' and '-'",
            )
        proxy_protocol = headers.get(HEADER_PROXY_PROTOCOL, "").strip().lower()
        if proxy_protocol and proxy_protocol not in PROXY_PROTOCOL_VERSIONS:
            raise RequestRefused(
                Refusal.BAD_REQUEST,
                f"{HEADER_PROXY_PROTOCOL}: {proxy_protocol[:20]!r} is not 'v1' or 'v2'",
            )
        if proxy_protocol and mode.server_listens:
            raise RequestRefused(
                Refusal.BAD_REQUEST,
                f"{HEADER_PROXY_PROTOCOL}: in {mode} mode the client dials and sends it itself",
            )
        token = bearer_token(headers.get("Authorization"))
        socks_auth = _socks_auth(headers.get(HEADER_SOCKS_AUTH), mode)
        protocol, idle = _protocol(headers, mode, address)
        try:
            early = parse_early_data(headers.get(HEADER_EARLY_DATA))
        except ValueError as exc:
            raise RequestRefused(Refusal.BAD_REQUEST, str(exc)) from None
        return cls(mode, address, token, tunnel, proxy_protocol, socks_auth, protocol, idle, early)


def parse_early_data(value: str | None) -> int:
    """The peer's X-Aiowstunnel-Early-Data: bytes it takes before its OPEN_OK, 0 when absent.

    Raises:
        ValueError: not a whole number of bytes in 0..2**31 - 1 (the range of a window).
    """
    if value is None:
        return 0
    text = value.strip()
    if len(text) > 10 or not (text.isascii() and text.isdigit()) or int(text) > 2**31 - 1:
        raise ValueError(
            f"{HEADER_EARLY_DATA}: {value[:20]!r} is not a number of bytes in 0..2147483647"
        )
    return int(text)


def _socks_auth(value: str | None, mode: Mode) -> tuple[str, str] | None:
    """The username and password of X-Aiowstunnel-Socks-Auth (never quoted in a reason)."""
    if value is None:
        return None
    if mode is not Mode.REVERSE_SOCKS5:
        raise RequestRefused(
            Refusal.BAD_REQUEST, f"{HEADER_SOCKS_AUTH}: only used in reverse-socks5 mode"
        )
    try:
        user, password = (
            base64.b64decode(part, validate=True).decode() for part in value.split(" ")
        )
    except ValueError:  # wrong count, not base64, not UTF-8
        raise RequestRefused(
            Refusal.BAD_REQUEST, f"{HEADER_SOCKS_AUTH}: expected 'base64(user) base64(password)'"
        ) from None
    if not (0 < len(user.encode()) <= 255 and 0 < len(password.encode()) <= 255):
        raise RequestRefused(
            Refusal.BAD_REQUEST, f"{HEADER_SOCKS_AUTH}: each must be 1 to 255 bytes (RFC 1929)"
        )
    return user, password


def _protocol(
    headers: Mapping[str, str], mode: Mode, address: SocketAddress | None
) -> tuple[TunnelProtocol, float]:
    """The request's protocol and UDP idle timeout (defaults when absent). UDP is for
    the connect and listen modes, on a host and port.

    Raises:
        RequestRefused: 400 naming the header that is malformed.
    """
    text = headers.get(HEADER_PROTOCOL, "tcp").strip().lower()
    try:
        protocol = TunnelProtocol(text)
    except ValueError:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise RequestRefused(
            Refusal.BAD_REQUEST, f"{HEADER_PROTOCOL}: {shown!r} is not 'tcp', 'udp' or 'tcp+udp'"
        ) from None
    if protocol.udp and (mode.socks or isinstance(address, UnixPath)):
        where = f"{mode} mode" if mode.socks else "a unix socket"
        raise RequestRefused(
            Refusal.BAD_REQUEST, f"{HEADER_PROTOCOL}: {protocol}: UDP is not carried in {where}"
        )
    idle_text = headers.get(HEADER_UDP_IDLE)
    if idle_text is None:
        return protocol, DEFAULT_UDP_IDLE
    idle_text = idle_text.strip()
    try:
        # ASCII digits and one dot only: float() would also take "nan", "1e400" or the
        # digits of other scripts.
        if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6})?", idle_text):
            raise ValueError
        idle = float(idle_text)
        if idle > MAX_UDP_IDLE:
            raise ValueError
    except ValueError:
        shown = idle_text if len(idle_text) <= 20 else idle_text[:20] + "..."
        raise RequestRefused(
            Refusal.BAD_REQUEST,
            f"{HEADER_UDP_IDLE}: {shown!r} is not a number of seconds 0..{MAX_UDP_IDLE:g}",
        ) from None
    return protocol, idle


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of header ``name`` (websockets' Headers may hold several)."""
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:
        return list(get_all(name))
    value = headers.get(name)
    return [] if value is None else [value]


def bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
