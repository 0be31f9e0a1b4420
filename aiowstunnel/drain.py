"""GOAWAY and the drain (protocol.md, GOAWAY): the stop sequence of both ends, bounded.

A side that sent GOAWAY keeps a session with no stream open for up to GOAWAY_LINGER after
it, for the peer to close first: an OPEN the peer sent before it saw the GOAWAY is then
answered (OPEN_FAIL "going away", which a client opens again on another session) instead
of being lost with the session. The peer closes at once when idle, so this rarely waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from websockets.frames import CloseCode

from .link import CLOSE_TIMEOUT
from .resets import Cut
from .streams import StreamTable

GOAWAY_LINGER = 1.0


class Linger:
    """When this side sent GOAWAY, and what is left of GOAWAY_LINGER since."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sent_at: float | None = None

    def sent(self) -> None:
        self.sent_at = self.loop.time()

    def left(self) -> float:
        """Of GOAWAY_LINGER since this side's GOAWAY, what is left (0 without one)."""
        if self.sent_at is None:
            return 0.0
        return max(0.0, self.sent_at + GOAWAY_LINGER - self.loop.time())

    def then(self, close: Callable[[str], None], reason: str) -> None:
        """``close(reason)`` once the linger is over (at once without our GOAWAY)."""
        left = self.left()
        if left > 0:
            self.loop.call_later(left, self.then, close, reason)
        else:
            close(reason)


class Drainable(Protocol):
    """What the stop sequence needs of a session."""

    linger: Linger
    drain_cut: int
    closed: asyncio.Future[str]
    table: StreamTable

    def goaway(self, reason: str) -> None: ...
    def reset_streams(self, cause: Cut, reason: str) -> int: ...
    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None: ...
    def abort(self, reason: str) -> None: ...


async def shutdown(session: Drainable, reason: str, timeout: float) -> None:
    """GOAWAY, let open streams finish for up to ``timeout`` (then reset them, counted
    in ``drain_cut``), give the peer the rest of the linger to close, close; bounded."""
    session.goaway(reason)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(session.table.idle.wait(), timeout)
    if len(session.table):
        session.drain_cut += session.reset_streams(
            Cut.DRAIN_TIMEOUT, f"{reason}: not finished within {timeout:g} s"
        )
    linger = min(session.linger.left(), timeout)
    if linger > 0 and not session.closed.done():  # the peer closes first, as a rule
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(session.closed), linger)
    session.close(CloseCode.GOING_AWAY, reason)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(session.closed), CLOSE_TIMEOUT)
    if not session.closed.done():
        session.abort(reason)
