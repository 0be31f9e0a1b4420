"""The server's admission: the places a connection takes before it is served, and the time
it has to take them.

A connection takes a handshake slot (in total and per source address) when it is accepted,
and must complete TLS and the upgrade within ``handshake_timeout``; a request that passes
authentication takes its session slot (in total and per client entry) before the first
await of its checks; each stream takes a stream slot (in total and per client entry) from
the session's SessionGuard. All of them count in ``limits.Slots`` shared by the server's
sessions (docs/reliability.md, Limits); a hit is counted and logged rate-limited.
"""

from __future__ import annotations

import asyncio
import logging

from .handshake import Refusal, RequestRefused
from .limits import QuietLog, ServerLimits, SessionGuard, Slot, Slots
from .policy import ClientPolicy
from .session import Phase, Session
from .stats import LimitStats, ServerStats

log = logging.getLogger("aiowstunnel.server")
#: Limit hits and dropped handshakes: a flood of them costs a few lines per period, each
#: saying how many were left out (the counters have them all).
quiet = QuietLog(log)
#: A limit hit during the handshake -> the ``reason`` of server_rejected_total.
_HANDSHAKE_LIMITS = {
    "handshakes": "too_many_handshakes",
    "handshakes_per_address": "too_many_handshakes",
    "handshake_bytes": "handshake_too_large",
}


class Admission:
    """One server's counts of what its connections hold, and where their hits go.

    Args:
        limits: resolved (:meth:`ServerLimits.resolve`): every bound a number.
        stats: the server's counters (``rejected`` by reason).
        limit_stats: where limit hits are counted.
    """

    def __init__(self, limits: ServerLimits, stats: ServerStats, limit_stats: LimitStats) -> None:
        assert limits.max_handshakes and limits.max_sessions_total and limits.max_streams_total
        assert limits.max_client_streams and limits.max_handshakes_per_address
        self.limits = limits
        self.stats = stats
        self.limit_stats = limit_stats
        self.handshakes = Slots(limits.max_handshakes)
        self.handshakes_per_address = Slots(limits.max_handshakes_per_address)
        #: over the per-address limit, told to come back later (each keeping its handshake
        #: slot for at most BUSY_LINGER): an eighth of the slots, so that one address holds
        #: at most half of them in progress and an eighth lingering
        self.busy = Slots(max(1, limits.max_handshakes // 8))
        self.sessions_total = Slots(limits.max_sessions_total)
        self.client_sessions = Slots(0)  # by client name; the bound is each max_sessions
        self.streams_total = Slots(limits.max_streams_total)
        self.client_streams = Slots(limits.max_client_streams)

    def guard(self) -> SessionGuard:
        """The limits as a new connection's session sees them (its handshake slot is taken
        now, before TLS)."""
        return SessionGuard(
            self.limits,
            self.handshakes,
            self.handshakes_per_address,
            self.streams_total,
            self.client_streams,
            self.limit_hit,
            self.busy,
        )

    def watch(self, session: Session, timeout: float) -> None:
        """Drop ``session``'s connection if its handshake is not complete in ``timeout``."""
        deadline = asyncio.get_running_loop().call_later(
            timeout, self._handshake_deadline, session, timeout
        )
        if session.guard is not None:
            session.guard.deadline = deadline

    def reserve(self, client: ClientPolicy) -> Slot:
        """The session slot of an authenticated request of ``client``, or the refusal.

        Synchronous: taken before the request's checks await anything, so that concurrent
        requests count each other. The caller releases it unless the session starts.
        """
        if self.client_sessions.full(client.name, client.max_sessions):
            active = self.client_sessions.by_key.get(client.name, 0)
            raise RequestRefused(
                Refusal.TOO_MANY_SESSIONS,
                f"client {client.name!r} already has {active} sessions (max {client.max_sessions})",
            )
        if self.sessions_total.full():
            self.limit_hit("sessions", "")
            raise RequestRefused(
                Refusal.SERVER_FULL,
                f"the server has its maximum of {self.sessions_total.limit} sessions",
            )
        return Slot((self.sessions_total, None), (self.client_sessions, client.name))

    def limit_hit(self, limit: str, peer: str) -> None:
        self.limit_stats.hits[limit] += 1
        reason = _HANDSHAKE_LIMITS.get(limit)
        if reason is not None:
            self.stats.rejected[reason] += 1
        quiet.warning(
            ("limit", limit),
            "limit %s reached: refused or closed a connection from %s",
            limit,
            peer,
            extra={"peer": peer},
        )

    def _handshake_deadline(self, session: Session, timeout: float) -> None:
        if session.guard is not None and session.transport is None:
            session.guard.answered()  # the TLS handshake failed: no connection_lost comes
        # transport None: the TLS handshake failed and asyncio already dropped the socket.
        if session.phase is Phase.HANDSHAKE and session.transport and not session.closed.done():
            self.stats.rejected["handshake_timeout"] += 1
            quiet.warning(
                "handshake_timeout",
                "dropping the connection: no complete handshake within %g s",
                timeout,
                extra={"peer": session.peer},
            )
            session.abort(f"handshake timeout ({timeout:g} s)")
