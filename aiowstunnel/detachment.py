"""A resumable session's time without a link (protocol.md, Resumption): why and since when
it is detached, the deadline that expires it, what its last resume replayed, and the event
the client's resume loop waits on. The session owns the phase; this owns the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Detachment:
    """The detached state of one session (``session.Session.detachment``).

    Args:
        loop: the clock, and where the expiry timer runs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reason = ""  # why the link was lost, for the logs
        self.since = 0.0  # loop time of the last detach (or of the link a resume replaced)
        self.replayed = 0  # bytes resent by the last resume
        self.replaced = False  # the last resume replaced a link not yet lost here
        self.changed = asyncio.Event()  # set while detached, and once the session ended
        self._expiry: asyncio.TimerHandle | None = None

    def begin(self, reason: str, timeout: float, expire: Callable[[], None]) -> None:
        """The link is lost: ``expire`` is called unless a resume comes within ``timeout``
        seconds (:meth:`resumed`)."""
        self.reason, self.since = reason, self.loop.time()
        self._expiry = self.loop.call_later(timeout, expire)
        self.changed.set()

    def resumed(self, replayed: int, replaced: bool) -> None:
        """A resume carried the session on; ``replaced``: its link was still attached."""
        self._cancel()
        self.replayed, self.replaced = replayed, replaced
        if replaced:  # never detached here: no time without a link
            self.since = self.loop.time()
        self.changed.clear()

    def ended(self) -> None:
        """The session ended (expired, or closed): no expiry, and waiters wake."""
        self._cancel()
        self.changed.set()

    def _cancel(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
