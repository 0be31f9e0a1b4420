"""The tunnel request carried by the WebSocket upgrade, and the server's refusals.

The client says in HTTP headers which tunnel it wants (mode and one address) and who it
is (``Authorization: Bearer``); the server answers with 101, or with a status and a plain
text reason before any upgrade (protocol.md, Handshake). Pure: headers in, objects out.
"""

from __future__ import annotations

import enum
import http
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .addresses import Address
from .errors import AddressError, TunnelError

HEADER_MODE = "X-Aiowstunnel-Mode"
HEADER_ADDRESS = "X-Aiowstunnel-Address"
HEADER_TUNNEL = "X-Aiowstunnel-Tunnel"
#: What the session carries (protocol.md, Handshake): absent means "tcp", so a client of
#: an older version asks for what it always did. The 101 repeats it when it is not "tcp";
#: a server that does not know the header would not, and the client stops there.
HEADER_PROTOCOL = "X-Aiowstunnel-Protocol"
#: LISTEN with UDP: the server opens the flows, and ends each after this many idle seconds
#: (the tunnel's udp_idle_timeout; 0 = never).
HEADER_UDP_IDLE = "X-Aiowstunnel-Udp-Idle-Timeout"
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
    client dials. The side that owns the listener opens the streams."""

    CONNECT = "connect"
    LISTEN = "listen"

    def __str__(self) -> str:
        return self.value


CONNECT = Mode.CONNECT
LISTEN = Mode.LISTEN


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

    @property
    def status(self) -> http.HTTPStatus:
        return self.value[0]

    @property
    def label(self) -> str:
        return self.value[1]


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

    ``address`` is the target the server dials (CONNECT) or the address it binds (LISTEN).
    """

    mode: Mode
    address: Address
    token: str | None = field(default=None, repr=False)
    tunnel: str = ""  # the client's name for the tunnel ("" when it sent none)
    protocol: TunnelProtocol = TunnelProtocol.TCP
    #: LISTEN with UDP: how long the server keeps an idle flow (0 = never)
    udp_idle_timeout: float = DEFAULT_UDP_IDLE

    def headers(self) -> list[tuple[str, str]]:
        headers = [(HEADER_MODE, self.mode.value), (HEADER_ADDRESS, str(self.address))]
        if self.tunnel:
            headers.append((HEADER_TUNNEL, self.tunnel))
        if self.protocol is not TunnelProtocol.TCP:
            headers.append((HEADER_PROTOCOL, self.protocol.value))
            if self.mode is Mode.LISTEN:
                headers.append((HEADER_UDP_IDLE, f"{self.udp_idle_timeout:g}"))
        if self.token is not None:
            headers.append(("Authorization", f"Bearer {self.token}"))
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> TunnelRequest:
        """Read the request out of the upgrade's headers.

        Raises:
            RequestRefused: 400 with what is missing or malformed.
        """
        once = (HEADER_MODE, HEADER_ADDRESS, HEADER_PROTOCOL, HEADER_UDP_IDLE, "Authorization")
        for name in once:
            if len(_all(headers, name)) > 1:
                raise RequestRefused(Refusal.BAD_REQUEST, f"duplicate {name} header")
        mode_text = headers.get(HEADER_MODE)
        if mode_text is None:
            raise RequestRefused(Refusal.BAD_REQUEST, f"missing {HEADER_MODE} header")
        try:
            mode = Mode(mode_text.strip().lower())
        except ValueError:
            raise RequestRefused(
                Refusal.BAD_REQUEST, f"{HEADER_MODE}: {mode_text!r} is not 'connect' or 'listen'"
            ) from None
        address_text = headers.get(HEADER_ADDRESS)
        if address_text is None:
            raise RequestRefused(Refusal.BAD_REQUEST, f"missing {HEADER_ADDRESS} header")
        try:
            address = Address.parse(address_text, allow_zero_port=mode is Mode.LISTEN)
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
        protocol, idle = _protocol(headers)
        token = bearer_token(headers.get("Authorization"))
        return cls(mode, address, token, tunnel, protocol, idle)


def _protocol(headers: Mapping[str, str]) -> tuple[TunnelProtocol, float]:
    """The request's protocol and UDP idle timeout (defaults when absent).

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
