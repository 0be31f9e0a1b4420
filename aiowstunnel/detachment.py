"""A resumable session's time without a link (protocol.md, Resumption): why and since when
it is detached, the deadline that expires it, the event the client's resume loop waits on,
and the resume that ends it (the link replaced, what the peer lacks resent, the phase back).
The session decides when; this does it, through :class:`Detachable`.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Protocol

from .errors import ResumeRefused
from .lazyevent import LazyEvent
from .link import Link
from .resets import Cut
from .resume import encode_resumed
from .resumption import Discarded, Resumption
from .streams import StreamTable


class Phase(enum.Enum):
    """A session's one phase (session.Session.phase)."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    DRAINING = "draining"  # GOAWAY sent or received: no new streams
    DETACHED = "detached"  # resumable, its link lost: kept until resumed or expired
    CLOSED = "closed"


class Detachable(Protocol):
    """What a :class:`Detachment` needs of its session (``session.Session``)."""

    phase: Phase
    link: Link
    resumption: Resumption | None
    closed: asyncio.Future[str]
    close_reason: str
    client_side: bool
    table: StreamTable

    def attach(self, link: Link) -> None: ...
    def expire(self, cause: Cut, reason: str) -> None: ...
    def detached(self) -> None: ...  # tell the session's on_detach callbacks
    def resumed(self) -> None: ...  # tell the session's on_resume callbacks


class Detachment:
    """The detached state of one session (``session.Session.detachment``).

    Args:
        session: the session it belongs to; its loop is the clock of the expiry.
    """

    def __init__(self, session: Detachable, loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.loop = loop
        self.reason = ""  # why the link was lost, for the logs
        self.since = 0.0  # loop time of the last detach (or of the link a resume replaced)
        self.replayed = 0  # bytes resent by the last resume
        self.replaced = False  # the last resume replaced a link not yet lost here
        self.before = Phase.OPEN  # the phase to go back to once resumed
        self.changed = LazyEvent()  # set while detached, and once the session ended
        self._expiry: asyncio.TimerHandle | None = None

    def detach(self, reason: str) -> None:
        """The link is lost: keep the streams (they stop reading) for resume_timeout."""
        session = self.session
        assert session.resumption is not None
        self.before, session.phase = session.phase, Phase.DETACHED
        self.reason, self.since = reason, self.loop.time()
        timeout = session.resumption.timeout
        why = f"not resumed within {timeout:g} s"
        self._expiry = self.loop.call_later(timeout, session.expire, Cut.EXPIRED, why)
        self.changed.set()
        session.table.update_all()
        session.detached()

    def resume(self, link: Link, claimed: int) -> None:
        """Carry the session on over ``link`` (its resume proven); the peer received
        ``claimed`` messages: what it lacks is resent, after RESUMED on the server.

        A resume for a session still attached (the client saw the break first) replaces
        its link: only one link is attached at a time.

        Raises:
            ResumeRefused: ``expired``; ``bad_claim``: the claim contradicts our counters.
        """
        session = self.session
        resumption = session.resumption
        assert resumption is not None
        if session.closed.done():  # expired (or closed) while the resume was on its way
            raise ResumeRefused("expired", f"the session ended: {session.close_reason}")
        replay = resumption.replay(claimed)
        self._cancel()
        self.replaced = session.phase is not Phase.DETACHED
        if self.replaced:  # never detached here: no time without a link
            old, self.before, self.since = session.link, session.phase, self.loop.time()
            old.owner = Discarded()
            old.abort("replaced by a resumed link")
        session.attach(link)
        if not session.client_side:
            link.send_message(encode_resumed(resumption.counter.state()))
        for message in replay:
            link.send_message(message)
        self.replayed = sum(len(m) for m in replay)
        session.phase = self.before
        self.changed.clear()
        session.table.update_all()
        link.flush()
        session.resumed()

    async def wait(self) -> bool:
        """Until the link is lost: True if the session is detached (resumable), False if
        it ended."""
        await self.changed.wait()
        return self.session.phase is Phase.DETACHED

    def ended(self) -> None:
        """The session ended (expired, or closed): no expiry, and waiters wake."""
        self._cancel()
        self.changed.set()

    def _cancel(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
