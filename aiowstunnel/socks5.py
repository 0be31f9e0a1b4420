"""The SOCKS5 proxy's side of RFC 1928 (CONNECT) and RFC 1929 (username/password), sans-I/O.

:class:`Socks5Server` takes the bytes a SOCKS client sends and answers with the bytes to
send back and, once the request is complete, the target it names; it never touches a
socket, so it is tested and fuzzed with plain byte strings. A target named by domain is
kept as the name (socks5h): the dialing side resolves it, under its own rules.

Only CONNECT is offered: BIND and UDP ASSOCIATE are answered 0x07 (command not supported).
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import struct
from dataclasses import dataclass

from .addresses import Address, host_port

VERSION = 5
AUTH_VERSION = 1  # RFC 1929's sub-negotiation version

NO_AUTH = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHOD = 0xFF

CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04


class Reply(enum.IntEnum):
    """RFC 1928, section 6: the REP field."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # "connection not allowed by ruleset"
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


#: The cause word an OPEN_FAIL reason starts with (protocol.md, OPEN_FAIL; the dialing
#: side's stream_open_failures label) -> the reply a SOCKS client gets.
CAUSE_REPLIES = {
    "forbidden": Reply.NOT_ALLOWED,
    "refused": Reply.CONNECTION_REFUSED,
    "unreachable": Reply.HOST_UNREACHABLE,
    "timeout": Reply.HOST_UNREACHABLE,
    "dns": Reply.HOST_UNREACHABLE,
}


def reply_for(open_fail_reason: str) -> Reply:
    """The SOCKS reply for the other side's OPEN_FAIL reason (``cause: words``)."""
    cause = open_fail_reason.partition(":")[0].strip()
    return CAUSE_REPLIES.get(cause, Reply.GENERAL_FAILURE)


def reply(code: Reply) -> bytes:
    """A reply with BND.ADDR 0.0.0.0:0: the bound address is on the other side of the
    tunnel, and clients (curl, ssh, browsers) do not use it for CONNECT."""
    return bytes((VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0))


class SocksError(Exception):
    """The client broke the protocol or was refused. ``answer`` goes back before closing."""

    def __init__(self, message: str, answer: bytes = b"") -> None:
        super().__init__(message)
        self.answer = answer


@dataclass(frozen=True)
class Credentials:
    """RFC 1929's username and password; compared in constant time."""

    username: str
    password: str

    def check(self, username: bytes, password: bytes) -> bool:
        ok_user = hmac.compare_digest(username, self.username.encode())
        ok_password = hmac.compare_digest(password, self.password.encode())
        return ok_user and ok_password


class _Step(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    DONE = "done"


class Socks5Server:
    """One SOCKS5 client's negotiation, from its greeting to its CONNECT request.

    Feed it the bytes as they come (:meth:`receive`); it returns the bytes to send. Once
    :attr:`target` is set the request is complete: the caller opens the stream, and sends
    :func:`reply` with the outcome. :attr:`rest` holds any bytes the client sent after its
    request (its first data, if it did not wait for the reply).

    Raises SocksError (with the answer to send, if any) for anything malformed or refused.
    """

    #: The longest message of the negotiation is the request with a 255-byte name (262
    #: bytes), or the RFC 1929 request (513): a client that sends more before its request
    #: is complete is not speaking SOCKS.
    MAX_PENDING = 1024

    def __init__(self, credentials: Credentials | None = None) -> None:
        self.credentials = credentials
        self.step = _Step.GREETING
        self.buffer = b""
        self.target: Address | None = None
        self.rest = b""
        self.username = ""  # who authenticated (RFC 1929), for logs

    @property
    def done(self) -> bool:
        return self.step is _Step.DONE

    def receive(self, data: bytes) -> bytes:
        if self.step is _Step.DONE:
            raise RuntimeError("the negotiation is over; the rest is the stream's")
        self.buffer += data
        out = b""
        while not self.done:  # (each step moves self.step on)
            if self.step is _Step.GREETING:
                answer = self._greeting()
            elif self.step is _Step.AUTH:
                answer = self._auth()
            else:
                answer = self._request()
            if answer is None:  # incomplete: wait for more
                if len(self.buffer) > self.MAX_PENDING:
                    raise SocksError(f"{len(self.buffer)} bytes without a complete message")
                break
            out += answer
        if self.done:
            self.rest, self.buffer = self.buffer, b""
        return out

    def _take(self, n: int) -> bytes:
        head, self.buffer = self.buffer[:n], self.buffer[n:]
        return head

    def _greeting(self) -> bytes | None:
        # VER | NMETHODS | METHODS
        if len(self.buffer) < 2:
            return None
        if self.buffer[0] != VERSION:
            raise SocksError(f"not SOCKS5: version byte {self.buffer[0]:#04x}")
        count = self.buffer[1]
        if count == 0:
            raise SocksError("greeting offers no method", bytes((VERSION, NO_ACCEPTABLE_METHOD)))
        if len(self.buffer) < 2 + count:
            return None
        methods = set(self._take(2 + count)[2:])
        wanted = USERNAME_PASSWORD if self.credentials is not None else NO_AUTH
        if wanted not in methods:
            need = "username/password" if self.credentials is not None else "no authentication"
            raise SocksError(
                f"the client does not offer {need}", bytes((VERSION, NO_ACCEPTABLE_METHOD))
            )
        self.step = _Step.AUTH if self.credentials is not None else _Step.REQUEST
        return bytes((VERSION, wanted))

    def _auth(self) -> bytes | None:
        # RFC 1929: VER | ULEN | UNAME | PLEN | PASSWD
        buf = self.buffer
        if len(buf) < 2:
            return None
        if buf[0] != AUTH_VERSION:
            raise SocksError(f"username/password version {buf[0]:#04x}, expected 0x01")
        ulen = buf[1]
        if len(buf) < 2 + ulen + 1:
            return None
        plen = buf[2 + ulen]
        if len(buf) < 3 + ulen + plen:
            return None
        message = self._take(3 + ulen + plen)
        username, password = message[2 : 2 + ulen], message[3 + ulen :]
        assert self.credentials is not None
        if not self.credentials.check(username, password):
            raise SocksError(
                f"wrong username or password (user {username.decode('utf-8', 'replace')!r})",
                bytes((AUTH_VERSION, 0x01)),
            )
        self.username = username.decode("utf-8", "replace")
        self.step = _Step.REQUEST
        return bytes((AUTH_VERSION, 0x00))

    def _request(self) -> bytes | None:
        # VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT
        buf = self.buffer
        if len(buf) < 4:
            return None
        if buf[0] != VERSION:
            raise SocksError(f"request version {buf[0]:#04x}, expected 0x05")
        atyp = buf[3]
        if atyp == ATYP_IPV4:
            size = 4 + 4 + 2
        elif atyp == ATYP_IPV6:
            size = 4 + 16 + 2
        elif atyp == ATYP_DOMAIN:
            if len(buf) < 5:
                return None
            size = 4 + 1 + buf[4] + 2
        else:
            raise SocksError(
                f"address type {atyp:#04x} is not supported",
                reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        if len(buf) < size:
            return None
        message = self._take(size)
        if message[1] != CMD_CONNECT:
            raise SocksError(
                f"command {message[1]:#04x} is not supported (only CONNECT)",
                reply(Reply.COMMAND_NOT_SUPPORTED),
            )
        (port,) = struct.unpack("!H", message[-2:])
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(message[4:8]))
        elif atyp == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(message[4:20]))
        else:
            host = self._domain(message[5:-2])
        if port == 0:
            raise SocksError(
                f"port 0 is not a target ({host_port(host, 0)})", reply(Reply.GENERAL_FAILURE)
            )
        self.target = Address(host, port)
        self.step = _Step.DONE
        return b""

    @staticmethod
    def _domain(raw: bytes) -> str:
        try:
            name = raw.decode("ascii")
            Address.parse(host_port(name, 1))  # a name or an IP literal, nothing else
        except (UnicodeDecodeError, ValueError):
            raise SocksError(
                f"not a host name: {raw[:64]!r}", reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)
            ) from None
        if not name:
            raise SocksError("an empty host name", reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
        return name


def client_request(target: Address, credentials: Credentials | None = None) -> bytes:
    """What a SOCKS5 client sends, greeting to request in one go (tests use it)."""
    method = USERNAME_PASSWORD if credentials else NO_AUTH
    out = bytes((VERSION, 1, method))
    if credentials is not None:
        user, password = credentials.username.encode(), credentials.password.encode()
        out += bytes((AUTH_VERSION, len(user))) + user + bytes((len(password),)) + password
    try:
        ip = ipaddress.ip_address(target.host)
    except ValueError:
        name = target.host.encode("ascii")
        address = bytes((ATYP_DOMAIN, len(name))) + name
    else:
        kind = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
        address = bytes((kind,)) + ip.packed
    return out + bytes((VERSION, CMD_CONNECT, 0)) + address + struct.pack("!H", target.port)
