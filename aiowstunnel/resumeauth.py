"""Resumption's credentials and proofs (protocol.md, Resumption): the session id and the
resume secret the server issues in the 101 of a fresh resumable session, the
challenge-response proof of the secret (HMAC-SHA256), its rotation after each resume
(:class:`ServerSecret` on the server), the check of a resume's first message, and the
strict parsers of the upgrade's resumption headers. The frames they ride in are
``resume``'s.
"""

from __future__ import annotations

import hmac
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from .errors import ProtocolViolation, ResumeRefused
from .resume import Resume, Resumed, check_count, encode_resume, parse_resume_frame

# -- headers of the upgrade (protocol.md, Resumption) -------------------------------------

#: client -> server, fresh session: "1" asks for a resumable session ("0" or absent: no)
HEADER_RESUMABLE = "X-Aiowstunnel-Resumable"
#: server -> client, 101 of a fresh resumable session: the session id and the resume secret
HEADER_SESSION = "X-Aiowstunnel-Session"
HEADER_SECRET = "X-Aiowstunnel-Resume-Secret"
#: client -> server, resume: the session id to resume (with the full authentication)
HEADER_RESUME = "X-Aiowstunnel-Resume"
#: server -> client, 101 of a resume: the challenge the client's proof must answer
HEADER_CHALLENGE = "X-Aiowstunnel-Challenge"
#: server -> client, a resume refused before the upgrade: the refusal's code
HEADER_REFUSED = "X-Aiowstunnel-Resume-Refused"

SESSION_ID_SIZE = 16
SECRET_SIZE = 32
CHALLENGE_SIZE = 32
_PROOF_LABEL = b"aiowstunnel resume"
_ROTATE_LABEL = b"aiowstunnel rotate"
_U64 = struct.Struct("!Q")


# -- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the server issues at a fresh resumable session, and the client keeps."""

    session_id: bytes
    secret: bytes

    def headers(self) -> list[tuple[str, str]]:
        """The 101 response headers that carry them (the only time the secret is sent)."""
        return [(HEADER_SESSION, self.session_id.hex()), (HEADER_SECRET, self.secret.hex())]

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Credentials | None:
        """Read them from a 101 response; None when the server made no resumable session.

        Raises:
            ProtocolViolation: one header without the other, or a malformed value.
        """
        sid, secret = headers.get(HEADER_SESSION), headers.get(HEADER_SECRET)
        if sid is None and secret is None:
            return None
        if sid is None or secret is None:
            missing = HEADER_SESSION if sid is None else HEADER_SECRET
            raise ProtocolViolation(f"resumable session without its {missing} header")
        return cls(parse_session_id(sid), parse_hex(secret, SECRET_SIZE, HEADER_SECRET))

    def rotated(self, challenge: bytes) -> Credentials:
        """The client's credentials after a resume answered with ``challenge`` (RESUMED)."""
        return Credentials(self.session_id, rotate(self.secret, challenge))

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"Credentials(session_id={self.session_id.hex()!r}, secret=<hidden>)"


def new_session_credentials() -> Credentials:
    return Credentials(os.urandom(SESSION_ID_SIZE), os.urandom(SECRET_SIZE))


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_SIZE)


def proof(secret: bytes, session_id: bytes, challenge: bytes, received: int) -> bytes:
    """HMAC-SHA256(secret, label | session id | challenge | received count (u64)).

    The fields have fixed sizes, so the concatenation is unambiguous; the count is covered
    so that it cannot be changed on the way.
    """
    message = _PROOF_LABEL + session_id + challenge + _U64.pack(check_count(received, "proof"))
    return hmac.digest(secret, message, "sha256")


def verify(
    secret: bytes, session_id: bytes, challenge: bytes, received: int, proof_: bytes
) -> bool:
    """True when ``proof_`` is the proof of ``secret``; compared in constant time."""
    return hmac.compare_digest(proof(secret, session_id, challenge, received), proof_)


def rotate(secret: bytes, challenge: bytes) -> bytes:
    """The secret after a resume answered with ``challenge``: a captured proof is stale."""
    return hmac.digest(secret, _ROTATE_LABEL + challenge, "sha256")


class ServerSecret:
    """The server's resume secret of one session, rotated at each resume.

    The server rotates when it sends RESUMED, the client when it receives it; a cut
    between the two would leave them with different secrets and the session lost. So the
    server keeps the secret before a resume until the client shows it has rotated (its
    first message after RESUMED arrives, :meth:`confirmed`), and until then accepts a
    proof of either.
    """

    __slots__ = ("_current", "_pending")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_SIZE:
            raise ValueError(f"a resume secret is {SECRET_SIZE} bytes, got {len(secret)}")
        self._current = secret
        self._pending: bytes | None = None  # rotated, not yet known to be rotated by the client

    def check(self, session_id: bytes, challenge: bytes, resume: Resume) -> None:
        """Check a RESUME's proof; on success, rotate (pending until :meth:`confirmed`).

        Raises:
            ResumeRefused: ``bad_proof``.
        """
        candidates = [self._current] if self._pending is None else [self._pending, self._current]
        # Every candidate is compared, so the time does not depend on which one matches.
        matches = [
            verify(s, session_id, challenge, resume.received, resume.proof) for s in candidates
        ]
        if not any(matches):
            raise ResumeRefused("bad_proof", "the proof does not match the session's secret")
        matched = candidates[matches.index(True)]
        self._current, self._pending = matched, rotate(matched, challenge)

    def confirmed(self) -> None:
        """The client has rotated (it sent a message after RESUMED): forget the old secret."""
        if self._pending is not None:
            self._current, self._pending = self._pending, None

    def __repr__(self) -> str:
        return "ServerSecret(<hidden>)"


def resume_message(credentials: Credentials, challenge: bytes, received: int) -> bytes:
    """The client's first message on a resumed WebSocket: RESUME(proof, received count)."""
    return encode_resume(
        proof(credentials.secret, credentials.session_id, challenge, received), received
    )


def check_resume(
    message: bytes | bytearray | memoryview,
    secret: ServerSecret,
    session_id: bytes,
    challenge: bytes,
) -> int:
    """The server's check of the client's first message; returns the client's received count.

    The count is verified by the proof only; :meth:`ReplayLog.replay` checks it against the
    log before anything is resent.

    Raises:
        ResumeRefused: ``malformed`` (not a well-formed RESUME) or ``bad_proof``.
    """
    frame = _first_message(message, Resume, "a RESUME")
    secret.check(session_id, challenge, frame)
    return frame.received


def check_resumed(message: bytes | bytearray | memoryview) -> int:
    """The client's check of the server's first message; returns the server's count.

    Raises:
        ResumeRefused: ``malformed`` (not a well-formed RESUMED).
    """
    return _first_message(message, Resumed, "RESUMED").received


_First = TypeVar("_First", Resume, Resumed)


def _first_message(
    message: bytes | bytearray | memoryview, kind: type[_First], what: str
) -> _First:
    """The first message of a resume, which must be ``kind``; else a ``malformed`` refusal."""
    try:
        frame = parse_resume_frame(message)
    except ProtocolViolation as exc:
        raise ResumeRefused("malformed", f"first message is not {what}: {exc}") from None
    if not isinstance(frame, kind):
        raise ResumeRefused("malformed", f"first message is {type(frame).__name__.upper()}")
    return frame


# -- header values ------------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]*")


def parse_hex(text: str, size: int, what: str) -> bytes:
    """Exactly ``size`` bytes written as ``2 * size`` lowercase hex digits, nothing else.

    (``bytes.fromhex`` alone would accept spaces and capitals.)

    Raises:
        ProtocolViolation: naming the header and what was wrong with it.
    """
    if len(text) != 2 * size:
        raise ProtocolViolation(f"{what} is {len(text)} characters, expected {2 * size} hex digits")
    if not _HEX.fullmatch(text):
        raise ProtocolViolation(f"{what} is not lowercase hex")
    return bytes.fromhex(text)


def parse_session_id(text: str) -> bytes:
    return parse_hex(text, SESSION_ID_SIZE, HEADER_SESSION)


def parse_resume_request(headers: Mapping[str, str]) -> bytes | None:
    """The session id a client asks to resume (``X-Aiowstunnel-Resume``), or None."""
    text = headers.get(HEADER_RESUME)
    return None if text is None else parse_hex(text, SESSION_ID_SIZE, HEADER_RESUME)


def parse_challenge(headers: Mapping[str, str]) -> bytes:
    """The challenge of a resume's 101 response.

    Raises:
        ProtocolViolation: missing or malformed.
    """
    text = headers.get(HEADER_CHALLENGE)
    if text is None:
        raise ProtocolViolation(f"resume answered without a {HEADER_CHALLENGE} header")
    return parse_hex(text, CHALLENGE_SIZE, HEADER_CHALLENGE)


def parse_resumable(text: str | None) -> bool:
    """The client's ``X-Aiowstunnel-Resumable``: ``1`` yes, ``0`` or absent no.

    Raises:
        ProtocolViolation: any other value.
    """
    if text is None or text == "0":
        return False
    if text == "1":
        return True
    raise ProtocolViolation(f"{HEADER_RESUMABLE} is {text[:40]!r}, expected 0 or 1")


def refusal_from_header(value: str, text: str = "") -> ResumeRefused:
    """The refusal of a resume refused before the upgrade (``X-Aiowstunnel-Resume-Refused``).

    Raises:
        ProtocolViolation: a value that is not one of the fixed codes.
    """
    if value not in ResumeRefused.CODES:
        raise ProtocolViolation(f"{HEADER_REFUSED} is {value[:40]!r}, not a refusal code")
    return ResumeRefused(value, text)
