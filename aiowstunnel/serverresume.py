"""The server's side of resumption: its resumable sessions by id, and the resume handshake.

A fresh session that asks for resumption is offered it here (:meth:`ResumeRegistry.offer`:
its credentials in the 101, its :class:`Resumption` with the server's secret); a resume
request, once the server has authenticated it again, finds its session here, is checked
to be the same client entry's and tunnel, and gets a challenge (:meth:`~ResumeRegistry.resume`);
refusals, detaches and resumes are counted and logged here. The sessions stay the
server's (its grants and slots); this registry only finds them by id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from websockets.http11 import Request

from .errors import ResumeRefused
from .handshake import Refusal, TunnelRequest
from .limits import QuietLog
from .logs import escape
from .policy import ClientPolicy, Policy
from .resumeauth import HEADER_REFUSED, ServerSecret, new_challenge, new_session_credentials
from .resumption import Resumption
from .serveraccess import Grant, same_tunnel, still_allowed
from .session import Session
from .stats import ServerStats

#: the server's logger: these lines are the server's, as before the registry had a module
log = logging.getLogger("aiowstunnel.server")
quiet = QuietLog(log)


class ResumeRegistry:
    """The server's resumable sessions by session id, attached or detached (each still
    holds its place in max_sessions and max_sessions_total: that bounds them).

    Args:
        timeout: resume_timeout, seconds a session whose connection broke is kept.
        stats: the server's counters (``resumes`` by outcome).
        handshake_timeout: seconds a resume has to prove itself after its 101.
    """

    def __init__(self, timeout: float, stats: ServerStats, handshake_timeout: float) -> None:
        self.timeout = timeout
        self.stats = stats
        self.handshake_timeout = handshake_timeout
        self.sessions: dict[bytes, Session] = {}

    def offer(self, session: Session, headers: dict[str, str]) -> None:
        """Make a fresh session resumable: its credentials go into the 101's ``headers``."""
        credentials = new_session_credentials()
        headers.update(credentials.headers())
        session.resumption = Resumption(
            credentials.session_id,
            self.timeout,
            secret=ServerSecret(credentials.secret),
        )
        self.sessions[credentials.session_id] = session
        session.on_detach.append(self._detached)
        session.on_resume.append(self._resumed)

    def forget(self, session: Session) -> None:
        """The session ended: it can no longer be resumed."""
        if session.resumption is not None:
            self.sessions.pop(session.resumption.session_id, None)

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
            if target is None or grant is None or target.closed.done():
                raise ResumeRefused("unknown_session", "no such session here: it expired, "
                                    "or the server restarted")
            if not same_tunnel(grant, client, tunnel):
                raise ResumeRefused("wrong_client", "the session is another client's or "
                                    "another tunnel's")
            reason = still_allowed(policy, grant)
            if reason:
                raise ResumeRefused("wrong_client", reason)
        except ResumeRefused as refused:
            self._refused(session.peer, client.name, refused)
            session.reject(
                Refusal.RESUME_REFUSED.status,
                str(refused),
                {HEADER_REFUSED: refused.code},
            )
            return
        if not session.check_upgrade(request):
            self.stats.rejected["bad_upgrade"] += 1
            return
        assert target.resumption is not None
        handshake = session.accept_resume(
            request, target, new_challenge(), self.handshake_timeout
        )

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
            escape(session.detach_reason),
            _streams(len(session.streams)),
            session.resumption.timeout,
            extra=session.log_extra(),
        )

    def _resumed(self, session: Session) -> None:
        stats = session.stats
        if not session.resumed_attached:  # (one still attached here was never counted)
            stats.sessions_detached -= 1
        stats.resumes["ok"] += 1
        stats.replayed_bytes += session.last_replayed
        self.stats.resumes["ok"] += 1
        log.info(
            "session resumed after %.1f s: %d bytes replayed; %s",
            session.loop.time() - session.detached_at,
            session.last_replayed,
            _streams(len(session.streams)),
            extra=session.log_extra(),
        )

def _streams(n: int) -> str:
    return f"{n} stream{'' if n == 1 else 's'}"
