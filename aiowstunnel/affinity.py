"""What routes a later request of a session back to the server that holds it (pure).

Behind one balancer address, a tunnel's sessions land on any of the servers behind it. The
server names itself in its 101 (``X-Aiowstunnel-Server``), and a balancer in front may set
a cookie in that 101 (HAProxy: ``cookie SRV insert indirect nocache``). The client keeps
both, per session, as an :class:`Affinity`, and sends the cookies back with a request that
must reach the same server (a resume): the balancer routes on them and, with ``indirect``,
strips them before the server sees the request. A fresh session sends none, so the
balancer's own choice (``leastconn``) decides.

What the 101 says is checked before it is kept: a name is a plain bounded token, and at
most :data:`MAX_COOKIES` cookies of at most :data:`MAX_COOKIE_BYTES` each are kept, so
neither a balancer nor a server can make a client store or resend much.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_COOKIES",
    "MAX_COOKIE_BYTES",
    "SERVER_HEADER",
    "SERVER_NAME",
    "Affinity",
    "default_server_name",
    "server_name",
]

#: The 101's header with the server's name (``[server] name``, default the host name).
SERVER_HEADER = "X-Aiowstunnel-Server"
#: A server name as sent and as kept: it shows in logs, STATUS= and /healthz.
SERVER_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
#: Cookies kept per session, and the size of each (name=value): RFC 6265's minimums a
#: user agent must support are 50 per domain and 4096 bytes each; a balancer sets one.
MAX_COOKIES = 8
MAX_COOKIE_BYTES = 4096
# RFC 6265 4.1.1: a cookie name is an HTTP token; a value is cookie-octets, maybe quoted.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r'"?[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"?')
_MAX_AGE = re.compile(r"\s*max-age\s*=\s*(-?\d+)\s*", re.IGNORECASE)


def server_name(value: str | None) -> str:
    """The name a 101 gave (``X-Aiowstunnel-Server``), or "" when absent or not a plain
    name (it is shown, never trusted: a bad one is dropped, not escaped)."""
    if value is None:
        return ""
    value = value.strip()
    return value if SERVER_NAME.fullmatch(value) else ""


def default_server_name() -> str:
    """This host's name as a server name (:data:`SERVER_NAME`), or "aiowstunnel"."""
    name = socket.gethostname()
    return name if SERVER_NAME.fullmatch(name) else "aiowstunnel"


@dataclass(frozen=True)
class Affinity:
    """One session's way back to its server: the server's name, the balancer's cookies."""

    server: str = ""
    cookies: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_response(cls, server: str | None, set_cookies: Iterable[str]) -> Affinity:
        """What a 101 response says.

        Args:
            server: its ``X-Aiowstunnel-Server`` header (None when absent).
            set_cookies: its ``Set-Cookie`` headers, in order.

        Returns:
            The affinity: a later cookie of the same name replaces an earlier one, one
            with ``Max-Age`` <= 0 deletes it, a malformed or oversized one is skipped.
        """
        jar: dict[str, str] = {}
        for header in set_cookies:
            pair, _, attributes = header.partition(";")
            name, equals, value = pair.partition("=")
            name, value = name.strip(), value.strip()
            if not equals or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
                continue
            if len(name) + 1 + len(value) > MAX_COOKIE_BYTES:
                continue
            if any(_expires_now(a) for a in attributes.split(";")):
                jar.pop(name, None)
                continue
            if name not in jar and len(jar) >= MAX_COOKIES:
                continue
            jar[name] = value
        return cls(server_name(server), tuple(jar.items()))

    def cookie_header(self) -> str | None:
        """The ``Cookie`` header that sends the balancer's cookies back; None if none."""
        if not self.cookies:
            return None
        return "; ".join(f"{name}={value}" for name, value in self.cookies)

    def headers(self) -> dict[str, str]:
        """The headers to add to a request that must reach this session's server."""
        cookie = self.cookie_header()
        return {"Cookie": cookie} if cookie is not None else {}


def _expires_now(attribute: str) -> bool:
    match = _MAX_AGE.fullmatch(attribute)
    return match is not None and int(match.group(1)) <= 0
