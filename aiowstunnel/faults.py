"""What a session does about a peer that breaks the rules (protocol.md, Errors): every
violation counted, a few of them logged (rate-limited across sessions), and past a limit
the session closed with 1002, counted as the ``violations`` limit hit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from websockets.frames import CloseCode

from .errors import ProtocolViolation
from .limits import DEFAULT_MAX_VIOLATIONS, LOGGED_VIOLATIONS, QuietLog, SessionGuard
from .logs import escape

#: Lines a peer can cause go through here: a flood of frames costs a few lines per period.
quiet = QuietLog(logging.getLogger("aiowstunnel.session"))


class Offended(Protocol):
    """The session, as its :class:`PeerFaults` sees it."""

    @property
    def peer(self) -> str: ...

    def log_extra(self) -> dict[str, str | None]: ...

    def fail(self, code: int, reason: str) -> None: ...

    def abort(self, reason: str) -> None: ...


class PeerFaults:
    """One session's account of its peer's violations.

    Args:
        session: what is closed (and named in the log lines).
        guard: server side: the limits (max_violations, and where a hit is reported).
        can_send: whether the session can still send (a close is begun only once).
    """

    def __init__(
        self, session: Offended, guard: SessionGuard | None, can_send: Callable[[], bool]
    ) -> None:
        self.session = session
        self.guard = guard
        self.can_send = can_send
        self.violations = 0
        self.max_violations = guard.max_violations if guard else DEFAULT_MAX_VIOLATIONS

    def session_violation(self, exc: ProtocolViolation) -> None:
        """A session-level violation: logged, and the session closes with 1002."""
        session = self.session
        quiet.warning("violation", "protocol violation: %s", escape(exc), extra=session.log_extra())
        session.fail(CloseCode.PROTOCOL_ERROR, str(exc))

    def stream_violation(self, stream_id: int, reason: str) -> None:
        """A stream-level violation (answered with RST): counted; the first few logged;
        past max_violations the session closes with 1002."""
        self.violations += 1
        if self.violations <= LOGGED_VIOLATIONS:
            more = (
                " (further ones are counted, not logged)"
                if self.violations == LOGGED_VIOLATIONS
                else ""
            )
            quiet.warning(
                "stream-violation",
                "stream %d: protocol violation: %s%s",
                stream_id,
                escape(reason),
                more,
                extra=self.session.log_extra(),
            )
        if self.violations >= self.max_violations and self.can_send():
            self.abuse("violations", f"too many protocol violations ({self.violations})")

    def abuse(self, key: str, reason: str, drop: bool = False) -> None:
        """Close with 1002 for a peer past a violation limit (counted as the
        ``violations`` limit hit, logged rate-limited); ``drop``: without waiting for the
        closing handshake."""
        session = self.session
        if self.guard is not None:
            self.guard.hit("violations", session.peer)
        quiet.warning(key, "closing the session: %s", reason, extra=session.log_extra())
        session.fail(CloseCode.PROTOCOL_ERROR, reason)
        if drop:
            session.abort(reason)
