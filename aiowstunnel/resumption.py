"""The session's side of resumption (protocol.md, Resumption): what a resumable session
logs, counts and checks so that it can outlive its link, and the owner of a new link
until its resume is proven.

:class:`Resumption` wraps the pure core (``resume``) for one session: every sequenced
message sent goes into its :class:`~resume.ReplayLog` (a WINDOW first gets this side's
received count), every one received is counted (:class:`~resume.ReceiveCounter`), and the
peer's counts (in ACK and WINDOW) confirm what the log may forget. :class:`ResumeHandshake`
owns a resume's link from its 101 until the first message proves the secret (RESUME, on
the server) or answers it (RESUMED, on the client); only then is the link handed to the
session, so a forged or replayed resume never touches it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from websockets.http11 import Request

from . import resume, resumeauth, wsframe
from .errors import ProtocolViolation, ResumeRefused
from .link import Link, Message
from .wire import HEADER_SIZE, FrameType

log = logging.getLogger("aiowstunnel.session")

_WINDOW = FrameType.WINDOW
_UNSEQUENCED = resume.UNSEQUENCED
_FRAMED = 0x82  # a logged DATA frame's first byte: FIN + BINARY


class Resumption:
    """One resumable session's counters, log and secret.

    Args:
        session_id: issued by the server in the fresh session's 101.
        timeout: seconds the session is kept once its link is lost (resume_timeout).
        credentials: the client's (session id and secret, rotated at each resume).
        secret: the server's (:class:`~resumeauth.ServerSecret`).
        path_delay: the round trip of the session's link now (``Session.round_trip``),
            which lets the log's limit grow on a long path (:func:`~resume.paced_limit`);
            without it the limit stays at its floor.
    """

    def __init__(
        self,
        session_id: bytes,
        timeout: float,
        *,
        credentials: resumeauth.Credentials | None = None,
        secret: resumeauth.ServerSecret | None = None,
        path_delay: Callable[[], float] = resume.unmeasured,
    ) -> None:
        self.session_id = session_id
        self.timeout = timeout
        self.credentials = credentials
        self.secret = secret
        self.log = resume.ReplayLog(path_delay=path_delay)
        self.counter = resume.ReceiveCounter()
        self.resumes = 0
        self.replayed_bytes = 0  # in all resumes, for the metric
        self._rotation_pending = False  # server: the client has not yet shown it rotated
        self._told_full = False  # what the streams were last told of the log (full_changed)

    @property
    def id_hex(self) -> str:
        return self.session_id.hex()

    # -- sending ---------------------------------------------------------------------

    def sent(self, message: bytes) -> bytes:
        """A sequenced message about to be sent: logged; a WINDOW gets our received count
        (so credit coming back confirms everything before it). Returns what to send."""
        if message[0] == _WINDOW:  # Mux's 4-byte WINDOW: the same, with the count added
            message = message + self.counter.state().to_bytes(8, "big")
        self.log.append(message)
        return message

    def send_data(
        self, link: Link, stream_id: int, data: memoryview, attached: bool, stop: Callable[[], None]
    ) -> None:
        """DATA: framed once by ``link`` (:meth:`~link.Link.frame_data`), the frames logged
        as they are and sent if ``attached``; ``stop`` is called when the log becomes
        :attr:`full` (the streams stop reading). A logged frame starts with FIN + BINARY
        (0x82), which no message type does; a replay reads its message back.

        Raises:
            ResumeRefused: ``log_overflow`` (:meth:`~resume.ReplayLog.append`).
        """
        frames = link.frame_data(stream_id, data)
        log = self.log
        for frame in frames:
            log.append(*frame)
        if attached:
            link.send_frames(frames)
        if log.full is not self._told_full and self.full_changed():  # (once per DATA)
            stop()

    @property
    def full(self) -> bool:
        """The log holds its limit: the streams stop reading until confirmations come."""
        return self.log.full

    def full_changed(self) -> bool:
        """Whether :attr:`full` changed since the streams were last told (they are to be
        told now: every append and confirmation may change it, a control message or a
        lower limit as well as DATA)."""
        if self.log.full is self._told_full:
            return False
        self._told_full = self.log.full
        return True

    # -- receiving -------------------------------------------------------------------

    def received(self, message: Message, room: Callable[[], None]) -> Message | None:
        """A message from the peer, before the Mux sees it. Returns what the Mux gets (a
        WINDOW in its 4-byte form), or None for an ACK, which only confirms; ``room`` is
        called when a confirmation made room in a log that was :attr:`full`.

        Raises:
            ProtocolViolation: a malformed ACK or WINDOW, RESUME or RESUMED outside a
                resume, or a count beyond what we sent (the session closes with 1002).
        """
        if self._rotation_pending:  # the client sent after RESUMED: it has rotated
            assert self.secret is not None
            self.secret.confirmed()
            self._rotation_pending = False
        code = message[0] if message else 0
        if code in _UNSEQUENCED:
            frame = resume.parse_resume_frame(message)
            if not isinstance(frame, resume.Ack):
                raise ProtocolViolation(f"{type(frame).__name__.upper()} outside a resume")
            self._confirm(frame.received, room)
            return None
        if code == resume.DATAGRAM_TYPE:  # not counted: a datagram is never replayed
            return message
        self.counter.received(len(message))
        if code == _WINDOW:
            increment, count = resume.parse_window(memoryview(message)[HEADER_SIZE:])
            self._confirm(count, room)
            return bytes(message[:HEADER_SIZE]) + increment.to_bytes(4, "big")
        return message

    def _confirm(self, count: int, room: Callable[[], None]) -> None:
        self.log.confirm(count)
        if self.full_changed():
            room()

    # -- a resume --------------------------------------------------------------------

    def replay(self, claimed: int) -> list[bytes]:
        """What to resend after the peer said it received ``claimed`` messages.

        Raises:
            ResumeRefused: ``bad_claim``, the claim contradicts our counters.
        """
        messages = [
            wsframe.frame_message([prefix, payload])  # DATA, logged as its frame
            if prefix[0] == _FRAMED
            else bytes(prefix) + bytes(payload)
            for prefix, payload in self.log.replay(claimed)
        ]
        self.resumes += 1
        self.replayed_bytes += sum(len(m) for m in messages)
        return messages

    def resume_message(self, challenge: bytes) -> bytes:
        """The client's RESUME for a resume answered with ``challenge``."""
        assert self.credentials is not None
        return resumeauth.resume_message(self.credentials, challenge, self.counter.state())

    def check_resume(self, message: Message, challenge: bytes) -> int:
        """The server's check of a RESUME; returns the client's received count. The
        secret's rotation is pending (:class:`~resumeauth.ServerSecret`) until :meth:`resumed`
        and the client's next message."""
        assert self.secret is not None
        return resumeauth.check_resume(message, self.secret, self.session_id, challenge)

    def resumed(self, challenge: bytes) -> None:
        """The resume succeeded. Client: rotate the secret, as the server did. Server: the
        client's next message on the resumed link shows it rotated (only a message after
        a resume that succeeded: a proof followed by a refused claim rotates nothing)."""
        if self.credentials is not None:
            self.credentials = self.credentials.rotated(challenge)
        else:
            self._rotation_pending = True


class ResumeTarget(Protocol):
    """The session a :class:`ResumeHandshake` resumes (``session.Session``)."""

    resumption: Resumption | None

    def resume(self, link: Link, claimed: int) -> None:
        """Carry on over ``link``; the peer received ``claimed`` messages.

        Raises:
            ResumeRefused: ``bad_claim``.
        """
        ...


class ResumeHandshake:
    """The owner of a resume's link until the resume is proven, then the session's.

    Server side: created at the resume's 101 with its ``challenge``; the client's first
    message must be a RESUME proving the secret. Client side: :meth:`start` sends the
    RESUME once the 101 (and its challenge) came; the server's first message must be
    RESUMED. Either way the link then goes to ``target`` (:meth:`ResumeTarget.resume`) and
    :attr:`done` resolves; a refusal closes the link with the refusal's close code (and
    :attr:`done` raises it), leaving the session as it was.

    Args:
        link: the new link (its owner becomes this object).
        target: the session to resume.
        challenge: the server's challenge (None on the client until :meth:`start`).
        timeout: seconds the peer has for its first message.
    """

    def __init__(
        self,
        link: Link,
        target: ResumeTarget,
        challenge: bytes | None,
        timeout: float,
    ) -> None:
        self.link = link
        self.target = target
        self.challenge = challenge
        link.owner = self
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._timer = loop.call_later(timeout, self._timeout, timeout)

    def start(self, challenge: bytes) -> None:
        """Client: the 101 came with ``challenge``: send the RESUME (the first message)."""
        assert self.target.resumption is not None
        self.challenge = challenge
        self.link.send_message(self.target.resumption.resume_message(challenge))
        self.link.flush()

    def _refuse(self, refused: ResumeRefused) -> None:
        """Close the link with the refusal's code; the session stays as it was."""
        self._finish(refused)
        self.link.fail(resume.CLOSE_CODES[refused.code], str(refused)[:120])

    def _finish(self, error: BaseException | None) -> None:
        self._timer.cancel()
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    def _timeout(self, timeout: float) -> None:
        if not self.done.done():
            self._finish(TimeoutError(f"no resume within {timeout:g} s"))
            self.link.abort(f"no resume within {timeout:g} s")

    # -- LinkOwner -------------------------------------------------------------------

    def link_request(self, request: Request) -> None:  # pragma: no cover - never: after 101
        self.link.abort("unexpected upgrade request")

    def link_open(self) -> None:
        pass  # the client sends its RESUME from start(), once it has read the challenge

    def link_message(self, message: Message) -> None:
        resumption = self.target.resumption
        if self.done.done() or resumption is None or self.challenge is None:
            raise ProtocolViolation("message before the resume was answered")
        try:
            if self.link.client_side:
                claimed = resumeauth.check_resumed(message)
            else:
                claimed = resumption.check_resume(message, self.challenge)
            self.target.resume(self.link, claimed)  # the link is the session's from here
            resumption.resumed(self.challenge)
        except ResumeRefused as refused:
            self._refuse(refused)
            return
        self._finish(None)

    def link_violation(self, exc: ProtocolViolation) -> None:
        self._refuse(ResumeRefused("malformed", str(exc)))

    def link_abuse(self, key: str, reason: str, drop: bool) -> None:
        self._finish(ConnectionError(reason))
        self.link.abort(reason)

    def link_paused(self, paused: bool) -> None:
        pass

    def link_closing(self) -> None:
        rcvd = self.link.ws.close_rcvd
        refused = resume.refusal_from_close(rcvd.code, rcvd.reason) if rcvd else None
        self._finish(refused or ConnectionError(self.link.close_reason or "closed by peer"))

    def link_lost(self, reason: str) -> None:
        self._finish(ConnectionError(reason))


class Discarded:
    """The owner of a link its session dropped (a resume replaced it): ignores it."""

    def link_request(self, request: Request) -> None:
        pass

    def link_open(self) -> None:
        pass

    def link_message(self, message: Message) -> None:
        pass

    def link_violation(self, exc: ProtocolViolation) -> None:
        pass

    def link_abuse(self, key: str, reason: str, drop: bool) -> None:
        pass

    def link_paused(self, paused: bool) -> None:
        pass

    def link_closing(self) -> None:
        pass

    def link_lost(self, reason: str) -> None:
        pass
