"""The server's side of resumption: its resumable sessions by id, and the resume handshake.

A fresh session that asks for resumption is offered it here (:meth:`ResumeRegistry.offer`:
its credentials in the 101, its :class:`Resumption` with the server's secret); a resume
request, once the server has authenticated it again, finds its session here, is checked
to be the same client entry's and tunnel, and gets a challenge (:meth:`~ResumeRegistry.resume`);
refusals, detaches and resumes are counted and logged here, and the detached sessions are
held to their limits (:class:`DetachedLimits`). The sessions stay the server's (its grants
and slots); this registry only finds them by id.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping

from websockets.http11 import Request

from .errors import ResumeRefused
from .handshake import Refusal, TunnelRequest
from .limits import QuietLog, ServerLimits
from .logs import escape
from .policy import ClientPolicy, Policy
from .resets import Cut
from .resumeauth import (
    HEADER_CHALLENGE,
    HEADER_REFUSED,
    ServerSecret,
    new_challenge,
    new_session_credentials,
)
from .resumption import ResumeHandshake, Resumption
from .serveraccess import Grant, same_tunnel, still_allowed
from .session import Session
from .settings import SessionSettings
from .stats import LimitStats, ServerStats

#: the server's logger: these lines are the server's, as before the registry had a module
log = logging.getLogger("aiowstunnel.server")
quiet = QuietLog(log)
#: sessions expired early by a limit whose id is remembered, so that their client's resume
#: is told why ("limit") rather than "unknown_session"; the oldest are forgotten first
REMEMBERED_LIMITED = 4096


class DetachedLimits:
    """The detached sessions, oldest first, held to max_detached_sessions (in total),
    max_detached_per_client (of one client entry) and max_detached_bytes (what they keep
    for replay, in total). Over a limit, the oldest detached session of that client entry
    (or of all, for the totals) is expired early: its streams reset (``detached_limit``),
    the hit counted (``limit_hits_total``) and logged.

    Args:
        limits: the server's limits (the three max_detached_* are read).
        limit_stats: where hits are counted.
    """

    def __init__(self, limits: ServerLimits, limit_stats: LimitStats) -> None:
        self.limits = limits
        self.limit_stats = limit_stats
        #: each detached session and the replay bytes it held when it detached
        self.held: OrderedDict[Session, int] = OrderedDict()
        self.bytes = 0
        #: session id -> (client entry, why) of those expired by a limit
        self.expired: OrderedDict[bytes, tuple[str, str]] = OrderedDict()

    def add(self, session: Session) -> None:
        """``session`` detached: counted, then every limit enforced."""
        assert session.resumption is not None
        held = session.resumption.log.bytes_held
        self.held[session] = held
        self.bytes += held
        session.stats.detached_bytes += held
        self._enforce(session.client or "")

    def remove(self, session: Session) -> None:
        """``session`` resumed or ended: no longer detached."""
        held = self.held.pop(session, None)
        if held is not None:
            self.bytes -= held
            session.stats.detached_bytes -= held

    def _enforce(self, client: str) -> None:
        lim = self.limits
        while True:
            mine = [s for s in self.held if (s.client or "") == client]
            if len(mine) > lim.max_detached_per_client:
                victim, limit = mine[0], "detached_per_client"
                what = f"more than max_detached_per_client ({lim.max_detached_per_client})"
            elif len(self.held) > lim.max_detached_sessions:
                victim, limit = next(iter(self.held)), "detached_sessions"
                what = f"more than max_detached_sessions ({lim.max_detached_sessions})"
            elif self.bytes > lim.max_detached_bytes:
                victim, limit = next(iter(self.held)), "detached_bytes"
                what = f"more than max_detached_bytes ({lim.max_detached_bytes})"
            else:
                return
            self._expire(victim, limit, what)

    def _expire(self, victim: Session, limit: str, what: str) -> None:
        self.limit_stats.hits[limit] += 1
        reason = f"detached limit: {what}"
        assert victim.resumption is not None
        self.expired[victim.resumption.session_id] = (victim.client or "", reason)
        while len(self.expired) > REMEMBERED_LIMITED:
            self.expired.popitem(last=False)
        quiet.warning(
            ("detached-limit", limit),
            "expiring the oldest detached session early: %s; %s reset",
            what,
            _streams(len(victim.streams)),
            extra=victim.log_extra(),
        )
        self.remove(victim)  # before it ends: the loop above must see it gone
        victim.expire(Cut.DETACHED_LIMIT, reason)


class ResumeRegistry:
    """The server's resumable sessions by session id, attached or detached (each still
    holds its place in max_sessions and max_sessions_total, and the detached ones are held
    to their own limits: :class:`DetachedLimits`).

    Args:
        settings: the server's session settings: resume_timeout, seconds a session whose
            connection broke is kept, and handshake_timeout, seconds a resume has to prove
            itself after its 101.
        stats: the server's counters (``resumes`` by outcome).
        limits, limit_stats: the detached sessions' limits, and where their hits count.
    """

    def __init__(
        self,
        settings: SessionSettings,
        stats: ServerStats,
        limits: ServerLimits,
        limit_stats: LimitStats,
    ) -> None:
        self.timeout = settings.resume_timeout
        self.stats = stats
        self.handshake_timeout = settings.handshake_timeout
        self.sessions: dict[bytes, Session] = {}
        self.detached = DetachedLimits(limits, limit_stats)

    def offer(self, session: Session, headers: dict[str, str]) -> None:
        """Make a fresh session resumable: its credentials go into the 101's ``headers``."""
        credentials = new_session_credentials()
        headers.update(credentials.headers())
        session.resumption = Resumption(
            credentials.session_id,
            self.timeout,
            secret=ServerSecret(credentials.secret),
            path_delay=session.round_trip,
        )
        self.sessions[credentials.session_id] = session
        session.on_detach.append(self._detached)
        session.on_resume.append(self._resumed)

    def forget(self, session: Session) -> None:
        """The session ended: it can no longer be resumed."""
        if session.resumption is not None:
            self.sessions.pop(session.resumption.session_id, None)
        self.detached.remove(session)

    def resume(
        self,
        session: Session,
        request: Request,
        resume_id: bytes,
        client: ClientPolicy,
        tunnel: TunnelRequest,
        grants: Mapping[Session, Grant],
        policy: Policy,
    ) -> None:
        """A resume request, authenticated again (``client``, ``tunnel``): the session it
        names, which must be this client entry's (of ``grants``, as ``policy`` still
        allows) and the same tunnel; the 101 carries a challenge, else the refusal.
        """
        target = self.sessions.get(resume_id)
        grant = grants.get(target) if target is not None else None
        try:
            limited = self.detached.expired.get(resume_id)
            if target is None and limited is not None and limited[0] == client.name:
                raise ResumeRefused("limit", limited[1])
            if target is None or grant is None or target.closed.done():
                raise ResumeRefused(
                    "unknown_session", "no such session here: it expired, or the server restarted"
                )
            if not same_tunnel(grant, client, tunnel):
                raise ResumeRefused(
                    "wrong_client", "the session is another client's or another tunnel's"
                )
            reason = still_allowed(policy, grant)
            if reason:
                raise ResumeRefused("wrong_client", reason)
        except ResumeRefused as refused:
            self._refused(session.peer, client.name, refused)
            session.server_link.reject(
                Refusal.RESUME_REFUSED.status,
                str(refused),
                {HEADER_REFUSED: refused.code},
                label=Refusal.RESUME_REFUSED.label,
            )
            return
        if not session.server_link.check_upgrade(request):
            self.stats.rejected["bad_upgrade"] += 1
            return
        assert target.resumption is not None
        # The link is the target's once the client's RESUME proves the secret.
        link, challenge = session.server_link, new_challenge()
        handshake = ResumeHandshake(link, target, challenge, self.handshake_timeout)
        session.hand_over()
        link.accept(request, {HEADER_CHALLENGE: challenge.hex()})

        def finished(done: asyncio.Future[None]) -> None:
            error = None if done.cancelled() else done.exception()
            if isinstance(error, ResumeRefused):
                self._refused(session.peer, client.name, error)
            elif error is not None:
                target.stats.resumes["failed"] += 1

        handshake.done.add_done_callback(finished)

    def _refused(self, peer: str, entry: str, refused: ResumeRefused) -> None:
        self.stats.resumes[refused.code] += 1
        quiet.warning(
            ("resume-refused", refused.code),
            "refused to resume a session: %s",
            escape(str(refused)),
            extra={"peer": peer, "client": entry or None},
        )

    def _detached(self, session: Session) -> None:
        assert session.resumption is not None
        session.stats.sessions_detached += 1
        log.info(
            "session detached: %s; %s kept for %g s",
            escape(session.detachment.reason),
            _streams(len(session.streams)),
            session.resumption.timeout,
            extra=session.log_extra(),
        )
        self.detached.add(session)

    def _resumed(self, session: Session) -> None:
        self.detached.remove(session)
        stats = session.stats
        if not session.detachment.replaced:  # (one still attached here was never counted)
            stats.sessions_detached -= 1
        stats.resumes["ok"] += 1
        stats.replayed_bytes += session.detachment.replayed
        self.stats.resumes["ok"] += 1
        log.info(
            "session resumed after %.1f s: %d bytes replayed; %s",
            session.loop.time() - session.detachment.since,
            session.detachment.replayed,
            _streams(len(session.streams)),
            extra=session.log_extra(),
        )


def _streams(n: int) -> str:
    return f"{n} stream{'' if n == 1 else 's'}"
