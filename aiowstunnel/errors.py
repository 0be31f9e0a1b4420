"""One exception root for the package (:class:`TunnelError`), split by who broke the rules.

- :class:`ProtocolViolation`: the peer sent something the protocol forbids. It is answered
  (RST for a stream, close 1002 for the session), logged once, and never reaches the caller.
- :class:`LocalProtocolError`: this side asked for something the protocol does not allow
  it now (a stream after GOAWAY, past the last stream id). The peer did nothing wrong, so
  it is never answered as a violation: the caller decides (h11 splits its errors the same
  way, into Local- and RemoteProtocolError).
- :class:`ConfigError`: the configuration is wrong; the message names the key and the file.
- :class:`AddressError`: an address, rule or URL does not parse.
- :class:`HandshakeRefused`: the server said no before the upgrade (401, 403, ...), and
  ``handshake.RequestRefused``: the server's side of it, raised while checking a request.
- :class:`ResumeRefused`: a session cannot be resumed.
Anything else is our own bug and is left to surface. :func:`describe` is the one way an
exception (an OS error above all) is worded in a log line, a reason or a config error.
"""

from __future__ import annotations

import os


class TunnelError(Exception):
    """Root of every error this package raises on purpose."""


class ProtocolViolation(TunnelError):
    """The peer broke the wire protocol (docs/protocol.md).

    Attributes:
        stream_id: the stream at fault, or ``None`` for a session-level fault.
    """

    def __init__(self, message: str, stream_id: int | None = None) -> None:
        super().__init__(message)
        self.stream_id = stream_id


class LocalProtocolError(TunnelError):
    """This side broke the wire protocol's rules for itself (docs/protocol.md): opening a
    stream after GOAWAY, or past the last stream id. Not the peer's fault, never answered
    with an RST or a close 1002."""


class AddressError(TunnelError, ValueError):
    """An address or address rule does not parse (``host:port``, ``[v6]:port``, CIDR, range)."""


class ConfigError(TunnelError):
    """The configuration is invalid. ``errors`` holds every problem found, one line each."""

    def __init__(self, errors: list[str], source: str = "<config>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__("\n".join(f"{source}: {e}" for e in self.errors))


class HandshakeRefused(TunnelError):
    """The tunnel server refused the WebSocket upgrade.

    Attributes:
        status: the HTTP status (401 bad token, 403 not allowed, 409 cannot listen, ...).
        reason: the plain-text reason the server gave.
        retry_after: seconds the server asked the client to wait (a busy server's 503
            ``Retry-After``, checked), or None.
        named: the refusal's label as the server named it (``X-Aiowstunnel-Refusal``,
            unchecked: handshake.refusal_label reads it), or None.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        retry_after: float | None = None,
        named: str | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.named = named


#: How asyncio words OS errors of its own making; uvloop says only the errno's text, as
#: libuv words it (lowercase, "address not available"). The errno's text is used instead of
#: both, so that one failure reads the same on both event loops.
_ASYNCIO_WORDING = ("Connect call failed", "error while attempting to bind")


def describe(exc: BaseException) -> str:
    """One line for a log, a reason or a config error: the error's own words, never a
    traceback and never ``[Errno N]``.

    The same failure reads the same whatever the event loop: "Connection refused", never
    asyncio's "Connect call failed ('127.0.0.1', 80)"; "Address already in use", never
    asyncio's "error while attempting to bind on address ...". A message we wrote ourselves
    around an errno ("connect to db:5432 failed: Connection refused") and TLS errors
    ("[SSL] PEM lib") are kept as they are.
    """
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        # (TLS errors' words start "[SSL...": never taken for the event loop's.)
        from_loop = text.startswith(_ASYNCIO_WORDING) or (text.islower() and ":" not in text)
        if exc.errno and exc.errno > 0 and from_loop:
            return os.strerror(exc.errno)
        return text
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class ResumeRefused(TunnelError):
    """A session cannot be resumed (docs/protocol.md, Resumption).

    Attributes:
        code: one of :attr:`CODES`, a fixed set so that it can label a metric.
        detail: what exactly did not add up, for the log line (may be empty).
    """

    #: unknown_session: no such session here (expired and gone, or the server restarted);
    #: wrong_client: the resume is not from the session's owner, or asks for another tunnel;
    #: bad_proof: the proof of the resume secret is wrong; malformed: the resume handshake
    #: itself is broken; bad_claim: a received count that our own counters contradict;
    #: log_overflow: the peer left too much unconfirmed; expired: the detach outlived
    #: resume_timeout; limit: too many detached sessions or bytes held. New codes go at
    #: the end: a code's place gives its close code (resume.CLOSE_CODES).
    CODES = (
        "unknown_session",
        "wrong_client",
        "bad_proof",
        "malformed",
        "bad_claim",
        "log_overflow",
        "expired",
        "limit",
    )

    def __init__(self, code: str, detail: str = "") -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown resume refusal code {code!r}")
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
