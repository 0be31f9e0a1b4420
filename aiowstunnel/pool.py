"""A tunnel's sessions, one per server it lists (``server`` as an array), and their drain.

Each server of a tunnel has its own member (a :class:`~client.Client`: its connection
attempts, backoff, resumption and affinity); the :class:`ServerPool` is what they share:

- whether the tunnel is up (any member's session open) or detached (none open, one being
  resumed), for the shared counters and :meth:`~client.Client.wait_up`;
- the session each new local connection goes to (CONNECT: the open one with the fewest
  streams, each in turn among equals; a detached one only when none is open: the
  connection then waits for the resume);
- the local connections accepted while no session can take them, for HOLD_WINDOW after a
  session ended or went away (held.py), and the streams a server refused because it goes
  away (nothing of them reached a target), opened again on the next session;
- the sessions whose server sent GOAWAY: they drain on while their member opens the next
  one at once, and are resumed in the background should their link break meanwhile.

Each member resumes its own session: a resume goes to the server that issued it (behind a
balancer, with that session's affinity), never to another member's.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from .clientlisten import Refuse
from .held import HeldConnection
from .resets import Abortable
from .session import Phase, Session
from .stats import TunnelStats

#: After a session ends or goes away, a local connection that finds no open session is
#: held this long at most for the next one, across a failed first attempt and the
#: backoff's first retries, instead of being refused at once.
HOLD_WINDOW = 2.0
#: A session that was up and ended (GOAWAY, or lost for good) is replaced at once, without
#: a backoff, at most once per this many seconds per server; the backoff applies otherwise.
AT_ONCE_PERIOD = 1.0


class End(enum.Enum):
    """How a member stops serving a session."""

    GOAWAY = "goaway"  # its server goes away: it drains on, the next session opens now
    DETACHED = "detached"  # its link broke: resume it
    CLOSED = "closed"  # it ended


class Member(Protocol):
    """What the pool reads of each server's client."""

    session: Session | None


M = TypeVar("M", bound=Member)


class ServerPool(Generic[M]):
    """The members of one tunnel, the first of which owns the local listener.

    Args:
        first: the tunnel's first server's member (it starts, stops and drains the others).
        stats: the tunnel's counters, shared by every member.
        refuse: resets a local connection accepted while down (counted and logged).
        stream_for: the protocol of a local connection given to a session.
        holds: whether local connections may be held (a plain CONNECT stream; a SOCKS
            negotiation is refused instead).
    """

    def __init__(
        self,
        first: M,
        stats: TunnelStats,
        refuse: Callable[[Abortable], None],
        stream_for: Callable[[Session], asyncio.BaseProtocol],
        holds: bool,
    ) -> None:
        self.members: list[M] = [first]
        self.stats = stats
        self.up = asyncio.Event()  # any member's session is open
        self.closing = False
        #: sessions whose server sent GOAWAY, draining, and the member they belong to
        self.draining: dict[Session, M] = {}
        self._refuse = refuse
        self._stream_for = stream_for
        self._holds = holds
        self._turn = 0
        self._hold_until = 0.0
        self._held: set[HeldConnection] = set()
        self._at_once_at: dict[int, float] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._datagrams: Session | None = None  # where the UDP datagrams went last

    @property
    def first(self) -> M:
        return self.members[0]

    def led_by(self, member: M) -> list[M]:
        """What ``member`` starts and stops: every member for the first, else itself."""
        return list(self.members) if member is self.first else [member]

    # -- state ----------------------------------------------------------------------

    @property
    def any_up(self) -> bool:
        return any(_phase(m.session) is Phase.OPEN for m in self.members)

    @property
    def detached(self) -> bool:
        """None open, and one being resumed (its local connections wait for it)."""
        phases = [_phase(m.session) for m in self.members]
        return Phase.OPEN not in phases and Phase.DETACHED in phases

    def update(self, counts: bool = True) -> None:
        """After a member's session changed phase; ``counts``: in the shared counters too
        (False for a replaced instance: its successor shares them and may be up)."""
        up = self.any_up
        if counts:
            self.stats.up, self.stats.detached = up, self.detached
        if up:
            self.up.set()
        else:
            self.up.clear()

    def sessions_of(self, member: M) -> list[Session]:
        """``member``'s sessions: the one it serves and those draining."""
        own = [s for s, m in self.draining.items() if m is member]
        return own + ([member.session] if member.session is not None else [])

    def own_streams(self, member: M) -> int:
        return sum(len(s.streams) for s in self.sessions_of(member))

    def at_once(self, member: M) -> bool:
        """Whether ``member``, whose session ended, opens the next without a backoff."""
        now = asyncio.get_running_loop().time()
        if self.closing or now - self._at_once_at.get(id(member), -AT_ONCE_PERIOD) < AT_ONCE_PERIOD:
            return False
        self._at_once_at[id(member)] = now
        return True

    # -- a member's session ---------------------------------------------------------

    async def wait_end(self, session: Session) -> End:
        """Until ``session``'s server sends GOAWAY, its link breaks or it ends. From a
        GOAWAY or an end on, local connections are held for the next session (set in the
        same turn: an OPEN_FAIL that came with the GOAWAY is reopened and held at once)."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[End] = loop.create_future()

        def on(end: End) -> Callable[[Session], None]:
            def fire(_: Session) -> None:
                if end is not End.DETACHED:
                    self.hold()
                if not ended.done():
                    ended.set_result(end)

            return fire

        hooks = [
            (session.on_goaway, on(End.GOAWAY)),
            (session.on_detach, on(End.DETACHED)),
            (session.on_close, on(End.CLOSED)),
        ]
        for callbacks, fire in hooks:
            callbacks.append(fire)
        try:
            if session.closed.done():
                return End.CLOSED
            if session.phase is Phase.DRAINING:  # GOAWAY came before a detach and resume
                return End.GOAWAY
            if session.phase is Phase.DETACHED:
                return End.DETACHED
            return await ended
        finally:
            for callbacks, fire in hooks:
                callbacks.remove(fire)

    def drain(
        self,
        member: M,
        session: Session,
        resume: Callable[[], Coroutine[Any, Any, object]],
    ) -> None:
        """``member``'s server sent GOAWAY on ``session``: its streams finish on it while
        the member opens its next session; a break of its link is resumed (``resume``)
        in the background, to the same server."""
        self.draining[session] = member
        session.on_close.append(self._drained)
        session.on_detach.append(lambda _: self._spawn(resume()))

    def _drained(self, session: Session) -> None:
        self.draining.pop(session, None)

    def _spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- local connections ----------------------------------------------------------

    def pick(self) -> Session | None:
        """The session for a new local connection, or None if none takes one."""
        sessions = [m.session for m in self.members if m.session is not None]
        live = [s for s in sessions if s.phase is Phase.OPEN]
        live = live or [s for s in sessions if s.accepting]  # detached: waits for its resume
        if len(live) <= 1:
            return live[0] if live else None
        self._turn += 1
        n = len(live)
        return min((live[(self._turn + i) % n] for i in range(n)), key=lambda s: len(s.streams))

    def datagram_session(self) -> Session | None:
        """The session the local UDP socket's datagrams go to. A source's flow lives in one
        session, so they stay on the one they went to while it is open; else they go to
        the first open one in the servers' order (a cut, a GOAWAY or a server down moves
        them, and they stay there), else to the first member's session (detached or
        none: dropped, and counted, until one is open)."""
        current = self._datagrams
        if _phase(current) is not Phase.OPEN:
            live = (m.session for m in self.members if _phase(m.session) is Phase.OPEN)
            current = self._datagrams = next(live, None)
        return current if current is not None else self.first.session

    def local_stream(self) -> asyncio.BaseProtocol:
        """The protocol of a connection the local listener accepted."""
        session = self.pick()
        if session is not None:
            return self._stream_for(session)
        left = self.hold_left()
        if left > 0 and self._holds:
            return HeldConnection(self._refuse, left, self._place, self._held.discard)
        return Refuse(self._refuse)

    def hold(self) -> None:
        """A session ended or goes away: hold local connections for HOLD_WINDOW."""
        if not self.closing:
            self._hold_until = asyncio.get_running_loop().time() + HOLD_WINDOW

    def hold_left(self) -> float:
        return max(0.0, self._hold_until - asyncio.get_running_loop().time())

    def opened(self, session: Session) -> None:
        """``session`` is open (fresh or resumed): the held connections go to it."""
        for held in list(self._held):
            held.attach(session.new_stream())

    def expire_held(self) -> None:
        """A connection attempt failed: once the hold is over, what waits is reset."""
        if self.hold_left() <= 0:
            for held in list(self._held):
                held.refuse()

    def reopen(self, session: Session, stream_id: int) -> bool:
        """A stream the server refused because it goes away (its OPEN crossed the
        GOAWAY): nothing of it reached the target, so it is opened again on another
        session, or held for the next one. False if it cannot move (it is reset)."""
        taken = session.streams.release(stream_id)
        if taken is None:
            return False
        transport, data, eof = taken
        held = HeldConnection(
            self._refuse, max(self.hold_left(), 0.05), self._place, self._held.discard
        )
        held.adopt(transport, data, eof)
        return True

    def _place(self, held: HeldConnection) -> None:
        """A held connection is made: to a session if one takes it by now, kept while a
        replacement is under way, else reset as accepted while down."""
        session = self.pick()
        if session is not None:
            held.attach(session.new_stream())
        elif self.hold_left() > 0:
            self._held.add(held)
        else:
            held.refuse()

    def close(self) -> None:
        """The tunnel stops: nothing is held any more, background resumes end."""
        self.closing = True
        for held in list(self._held):
            held.refuse()
        for task in list(self._tasks):
            task.cancel()


def _phase(session: Session | None) -> Phase | None:
    return session.phase if session is not None else None
