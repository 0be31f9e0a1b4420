"""The client's side of a detached session (protocol.md, Resumption): reconnect attempts
to resume it, backed off but capped so that several fit within resume_timeout (a busy
server's Retry-After is waited, jittered), until it is resumed, refused or ended; the log
line and the counters of each outcome.

A resume goes to the server that holds the session: the client's own URL, and behind a
balancer the affinity of the session's 101 (affinity.py), whichever member of a pool of
servers (pool.py) it belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable
from typing import Protocol

from .affinity import Affinity
from .backoff import Backoff, BackoffPolicy, asked_delay
from .clientconnect import TunnelSide, open_session
from .errors import HandshakeRefused, ResumeRefused, describe
from .logs import TunnelLogger
from .resets import Cut
from .session import Phase, Session


class Resumed(enum.Enum):
    """How resuming a detached session ended."""

    RESUMED = "resumed"  # serve on
    UNKNOWN = "unknown"  # the server refused it (it knows it no more): a fresh one, now
    ENDED = "ended"  # expired, closed, revoked, or the client stops


class Resuming(TunnelSide, Protocol):
    last_error: str


async def resume(
    side: Resuming,
    session: Session,
    route: Affinity,
    log: TunnelLogger,
    random: Callable[[], float],
    stopping: Callable[[], bool],
) -> Resumed:
    """Reconnect to resume the detached ``session`` (to its server: ``route``) until
    resumed, refused or ended; ``stopping`` says the client closes (no more attempts)."""
    loop = asyncio.get_running_loop()
    resumption = session.resumption
    assert resumption is not None
    timeout = resumption.timeout
    log.warning(
        "tunnel detached: %s; %s kept, resuming within %g s",
        session.detachment.reason,
        count_streams(len(session.streams), "open"),
        timeout,
    )
    cap = max(0.05, timeout / 8)
    backoff = Backoff(BackoffPolicy(initial=min(0.1, cap), max=cap), random)
    stats = side.stats
    while session.phase is Phase.DETACHED and not stopping():
        asked: float | None = None  # a busy server's Retry-After
        try:
            await open_session(side, resume_of=session, route=route)
        except ResumeRefused as refused:
            stats.resumes[refused.code] += 1
            log.warning(
                "the server refused to resume the session (%s): its streams are reset; "
                "opening a fresh session",
                refused,
            )
            session.expire(Cut.RESUME_REFUSED, f"resume refused: {refused}")
            return Resumed.UNKNOWN
        except HandshakeRefused as exc:
            if exc.status in (401, 403):  # token revoked or rule narrowed: never resumes
                stats.connect_failures["bad_token" if exc.status == 401 else "forbidden"] += 1
                side.last_error = f"server refused the resume: {exc}"
                log.error("%s", side.last_error)
                session.expire(Cut.RESUME_REFUSED, f"resume refused: {exc}")
                return Resumed.ENDED
            side.last_error = f"resume failed: {exc}"
            asked = exc.retry_after
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            side.last_error = f"resume failed: {describe(exc)}"
        else:
            stats.resumes["ok"] += 1
            stats.replayed_bytes += session.detachment.replayed
            log.info(
                "tunnel resumed after %.1f s: %d bytes replayed; %s",
                loop.time() - session.detachment.since,
                session.detachment.replayed,
                count_streams(len(session.streams), "open"),
            )
            return Resumed.RESUMED
        delay = backoff.next_delay()
        if asked is not None:  # busy: not sooner than it asked, jittered (an expiry ends it)
            delay = max(delay, asked_delay(asked, random))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(session.closed), delay)
    return Resumed.ENDED


def count_streams(n: int, what: str) -> str:
    """``"1 stream reset"``, ``"3 streams reset"``."""
    return f"{n} stream{'' if n == 1 else 's'} {what}"
