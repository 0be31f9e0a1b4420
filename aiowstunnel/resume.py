"""Session resumption's core, sans-I/O: what lets a session outlive its WebSocket (protocol.md,
Resumption): the replay log, the receive counter and the frames.

This module owns the bookkeeping; the session owns the sockets and the clock, and
``resumeauth`` the credentials and proofs. It holds:

- :class:`ReplayLog`: every message this side sent that the peer has not confirmed, so
  that a resume resends exactly what the peer did not get;
- :class:`ReceiveCounter`: how many messages this side received, and when it owes the peer
  a confirmation (an ACK);
- the codec of the frames resumption adds on stream 0 (ACK, RESUME, RESUMED) and of the
  12-byte WINDOW that carries a received count; wire.py adopts them, so nothing here
  imports it (the header layout is repeated, and a test holds the two equal);
- the close codes of a refusal after the upgrade.

Why one sequence per session direction, not per stream: every message a side sends
(DATA, OPEN, FIN, RST, WINDOW, FLOW_OPEN, ...: all but ACK, RESUME and RESUMED, which only
restate counts, and DATAGRAM, which may be lost) takes the next number of its direction,
so one counter keeps the order across streams and between DATA and control frames (an OPEN
before its DATA, a FIN after the last DATA) and covers control frames without a case for
each. The memory bound still follows
from flow control: the receiver's count rides on every WINDOW it sends, and a WINDOW only
returns credit for bytes in messages it counts, so the DATA bytes a sender holds
unconfirmed never exceed the credit not yet returned: one window per stream per direction.
The receiver also sends an ACK after :data:`ACK_EVERY` messages or :data:`ACK_BYTES` bytes
without having stated its count, so control frames, WINDOWs and data a slow local socket
has not taken are confirmed too, and a log holds about what is in flight.

Every number a peer sends (a count in ACK, WINDOW, RESUME or RESUMED) is checked against
our own counters before it is used, and never sizes a buffer or picks a resend range by
itself (the lesson of OpenSSH roaming, CVE-2016-0777): :meth:`ReplayLog.replay` resends
only messages it holds, after a claim between what the peer confirmed and what we sent.
"""

from __future__ import annotations

import enum
import math
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ProtocolViolation, ResumeRefused

PROOF_SIZE = 32  # HMAC-SHA256 (resumeauth.proof)

# -- frames (protocol.md, Frames and Resumption) -------------------------------------------

#: "type (1 byte) | stream id (4 bytes, big-endian) | payload", as wire.HEADER
HEADER = struct.Struct("!BI")
HEADER_SIZE = HEADER.size
_U64 = struct.Struct("!Q")
_RESUME = struct.Struct(f"!{PROOF_SIZE}sQ")
_WINDOW = struct.Struct("!IQ")
MAX_COUNT = 2**64 - 1
#: as wire.MAX_WINDOW: a window or an increment is 1..2**31 - 1
MAX_WINDOW = 2**31 - 1
WINDOW_TYPE = 5  # wire.FrameType.WINDOW
#: wire.FrameType.DATAGRAM: lossy by contract (protocol.md, Resumption), so neither logged
#: nor counted: a resume never replays a datagram
DATAGRAM_TYPE = 13


class ResumeFrameType(enum.IntEnum):
    """The frames resumption adds, all on stream 0 and none of them sequenced."""

    ACK = 9
    RESUME = 10
    RESUMED = 11


#: the types that take no sequence number: they only restate counts, which a resume
#: restates again, so losing one in a cut loses nothing
UNSEQUENCED = frozenset(int(t) for t in ResumeFrameType)

# -- bounds ---------------------------------------------------------------------------------

#: the receiver confirms (ACK) after this many messages without stating its count ...
ACK_EVERY = 32
#: ... or this many bytes of them
ACK_BYTES = 512 * 1024
#: a log holding this many bytes or messages is full: the session stops reading its local
#: sockets until confirmations arrive (as when the WebSocket's write buffer is full), so an
#: honest session is slowed, never closed. 8 MiB is twice what Linux lets one TCP
#: connection keep unacknowledged by default (tcp_wmem's 4 MiB): room for what is in
#: flight and for the count's way back, so a long path is not slowed. It is the ceiling of
#: the log's :attr:`~ReplayLog.limit`, which starts lower and grows only while the
#: confirmations say the path needs it (:func:`paced_limit`).
DEFAULT_MAX_LOG_BYTES = 8 * 1024 * 1024
#: where the log's limit starts and the least it comes down to: one default window
#: (wire.DEFAULT_WINDOW), so the log never stops one stream before its credit does
DEFAULT_MIN_LOG_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_LOG_MESSAGES = 65_536


def is_sequenced(message: bytes | bytearray | memoryview) -> bool:
    """True for a message that takes a sequence number (all but ACK, RESUME, RESUMED and
    DATAGRAM)."""
    return not message or (message[0] not in UNSEQUENCED and message[0] != DATAGRAM_TYPE)


def unmeasured() -> float:
    """The round trip of a link that has none measured (see :class:`ReplayLog`)."""
    return math.inf


def paced_limit(
    limit: int, delay: float, path_delay: float, blocked: bool, floor: int, ceiling: int
) -> int:
    """The log's next limit, from one timed message (a probe) confirmed ``delay`` seconds
    after it was logged. ``path_delay`` is the link's round trip without queues (its
    quickest pong: ``link.Link.round_trip``), ``blocked`` whether the log was full since
    the probe was logged.

    - Confirmed at about the path's pace (within 3/2 of its round trip: the peer confirms
      every ACK_BYTES, which adds a little) while the log held the streams back: the path
      has room the log does not let them use, and the limit doubles. A probe takes a round
      trip, so a long path reaches the ceiling in a few.
    - Confirmed late (over three round trips): the bytes wait in buffers on the way
      (loopback, a busy peer, a bloated queue), where a larger log only holds more of what
      waits; the limit comes down by a quarter, to the floor at least.
    - Otherwise, or with no round trip measured yet, it stays. (TCP Vegas's reasoning,
      applied to the log's limit.)
    """
    if path_delay == math.inf:
        return limit
    if delay > 3.0 * path_delay:
        return max(floor, limit - limit // 4)
    if blocked and delay * 2.0 <= path_delay * 3.0:
        return min(ceiling, 2 * limit)
    return limit


# -- the replay log ---------------------------------------------------------------------------

Buffer = bytes | bytearray | memoryview
#: one logged message, as wsframe.binary_frame takes it: (prefix, payload)
Entry = tuple[Buffer, Buffer]


class ReplayLog:
    """The messages this side sent and the peer has not confirmed, in order.

    Message ``n`` (1, 2, ...) is the n-th sequenced message this side sent on the session;
    it is held until the peer's received count reaches ``n``. A message is kept as the
    objects given to :meth:`append`, never copied: the caller passes objects it will not
    change (a view of the session's reused read buffer must be copied first).

    The log is :attr:`full` at :attr:`limit` bytes, which follows the pace of the
    confirmations (:func:`paced_limit`): one message at a time is timed from its append to
    its confirmation, and each such probe sets the limit anew, between ``min_bytes`` and
    ``max_bytes``. A resume starts it again from ``min_bytes`` (a new link may take
    another path).

    Args:
        max_bytes, max_messages: the ceiling of :attr:`limit`, and the messages at which
            the log is :attr:`full` (the session stops reading its local sockets); past 5/4
            of either, :meth:`append` refuses (the peer does not confirm: the session
            closes without resume).
        min_bytes: the floor of :attr:`limit`, and where it starts (at most ``max_bytes``).
        clock: seconds, monotonic; the probes' timer.
        path_delay: the round trip of the link the session has now, in seconds, on the
            clock's scale (``inf`` while none was measured: the limit stays).
    """

    __slots__ = (
        "_blocked",
        "_clock",
        "_entries",
        "_path_delay",
        "_probe",
        "_probe_at",
        "bytes_held",
        "confirmed",
        "full",
        "hard_bytes",
        "hard_messages",
        "limit",
        "max_bytes",
        "max_messages",
        "min_bytes",
        "sent",
    )

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_LOG_BYTES,
        max_messages: int = DEFAULT_MAX_LOG_MESSAGES,
        min_bytes: int = DEFAULT_MIN_LOG_BYTES,
        clock: Callable[[], float] = time.monotonic,
        path_delay: Callable[[], float] = unmeasured,
    ) -> None:
        if max_bytes < 1 or max_messages < 1 or min_bytes < 1:
            raise ValueError(
                f"log limits must be positive, got {max_bytes}, {max_messages}, {min_bytes}"
            )
        # made on the first message and dropped once all are confirmed: an empty deque is
        # 0.76 KiB, kept by every idle session otherwise
        self._entries: deque[Entry] | None = None
        self.sent = 0  # sequence number of the last message appended
        self.confirmed = 0  # the peer's received count: messages 1..confirmed are gone
        self.bytes_held = 0
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.hard_bytes = max_bytes + max_bytes // 4
        self.hard_messages = max_messages + max_messages // 4
        self.min_bytes = min(min_bytes, max_bytes)
        #: the bytes at which the log is full now (paced_limit)
        self.limit = self.min_bytes
        self._clock = clock
        self._path_delay = path_delay
        self._probe = 0  # sequence number of the message being timed, 0 for none
        self._probe_at = 0.0  # when it was logged
        self._blocked = False  # the log was full since the probe was logged
        #: the log holds its limit (of bytes or messages): the session stops reading its
        #: local sockets. It stays full until 3/4 of the limit is left, so that a session
        #: with many streams does not pause and resume them all at every confirmation.
        self.full = False

    @property
    def messages_held(self) -> int:
        return self.sent - self.confirmed

    def append(self, prefix: Buffer, payload: Buffer = b"") -> int:
        """Log one message sent (``prefix + payload``); returns its sequence number.

        Raises:
            ResumeRefused: ``log_overflow``, the peer has left more than 5/4 of the limits
                unconfirmed. Nothing is logged; the session must close without resume.
        """
        size = len(prefix) + len(payload)
        held = self.sent - self.confirmed
        if self.bytes_held + size > self.hard_bytes or held + 1 > self.hard_messages:
            raise ResumeRefused(
                "log_overflow",
                f"the peer left {held} messages ({self.bytes_held} bytes) "
                f"unconfirmed, the limit is {self.hard_messages} ({self.hard_bytes} bytes)",
            )
        entries = self._entries
        if entries is None:
            entries = self._entries = deque()
        entries.append((prefix, payload))
        self.sent += 1
        if not self._probe:  # time this one
            self._probe = self.sent
            self._probe_at = self._clock()
            self._blocked = False
        self.bytes_held += size
        # (the common case, under both limits and not full, without a call: once per DATA)
        if (
            self.full
            or self.bytes_held >= self.limit
            or self.sent - self.confirmed >= self.max_messages
        ):
            self._set_full()
        return self.sent

    def confirm(self, count: int) -> int:
        """The peer has received ``count`` messages: forget those. Returns how many went.

        A count below :attr:`confirmed` changes nothing: a WINDOW resent by a resume
        carries the count of its first sending, older than the RESUME's.

        Raises:
            ProtocolViolation: ``count`` is beyond what was sent (a session-level fault).
        """
        if count > self.sent:
            raise ProtocolViolation(
                f"peer confirmed {count} messages received, only {self.sent} were sent"
            )
        released = count - self.confirmed
        if released <= 0:
            return 0
        entries = self._entries
        assert entries is not None  # released > 0: something was appended
        freed = 0
        for _ in range(released):
            prefix, payload = entries.popleft()
            freed += len(prefix) + len(payload)
        self.bytes_held -= freed
        self.confirmed = count
        if count == self.sent:
            self._entries = None
        if self._probe and count >= self._probe:
            self.limit = paced_limit(
                self.limit,
                self._clock() - self._probe_at,
                self._path_delay(),
                self._blocked,
                self.min_bytes,
                self.max_bytes,
            )
            self._probe = 0
        self._set_full()  # fewer held, or a new limit (maybe below what is held)
        return released

    def _set_full(self) -> None:
        """Set :attr:`full` from what is held: full at a limit, and once full, until no
        more than 3/4 of both is left. Only the byte limit holds the streams back in the
        sense of paced_limit (``_blocked``): a larger byte limit cannot help the message
        count."""
        limit, most = self.limit, self.max_messages
        if self.full:
            limit, most = limit - limit // 4 + 1, most - most // 4 + 1
        over_bytes = self.bytes_held >= limit
        self.full = over_bytes or self.sent - self.confirmed >= most
        if over_bytes:
            self._blocked = True

    def replay(self, claimed: int) -> list[Entry]:
        """The messages to resend after the peer says it received ``claimed``, in order.

        ``claimed`` is checked against our own counters, never trusted: it must lie between
        what the peer confirmed before and what we sent. The entries stay logged until a
        later confirmation (the new WebSocket may break too), and come back as the objects
        :meth:`append` was given.

        Raises:
            ResumeRefused: ``bad_claim``, with both numbers.
        """
        if claimed > self.sent:
            raise ResumeRefused(
                "bad_claim", f"claimed {claimed} messages received, only {self.sent} were sent"
            )
        if claimed < self.confirmed:
            raise ResumeRefused(
                "bad_claim",
                f"claimed {claimed} messages received, {self.confirmed} were confirmed before",
            )
        # a new link, maybe another path: the limit starts again (nothing timed across the
        # outage)
        self._probe = 0
        self.limit = self.min_bytes
        self.full = False
        self._set_full()
        self.confirm(claimed)
        return list(self._entries or ())


class ReceiveCounter:
    """The messages this side received and processed, and when it owes an ACK.

    The session calls :meth:`received` for every sequenced message it processed, and
    :meth:`state` whenever it puts the count in a frame (a WINDOW, an ACK, RESUME or
    RESUMED); :attr:`ack_due` says that enough has arrived since to send an ACK now.
    """

    __slots__ = ("_bytes", "_messages", "ack_bytes", "ack_due", "ack_every", "count")

    def __init__(self, ack_every: int = ACK_EVERY, ack_bytes: int = ACK_BYTES) -> None:
        if ack_every < 1 or ack_bytes < 1:
            raise ValueError(f"ACK thresholds must be positive, got {ack_every}, {ack_bytes}")
        self.count = 0
        self.ack_every = ack_every
        self.ack_bytes = ack_bytes
        self._messages = 0  # received since the count was last stated
        self._bytes = 0
        #: enough arrived since the count was last stated: send an ACK now
        self.ack_due = False

    def received(self, size: int) -> bool:
        """Count one message of ``size`` bytes; returns :attr:`ack_due`."""
        self.count += 1
        self._messages += 1
        self._bytes += size
        due = self.ack_due = self._messages >= self.ack_every or self._bytes >= self.ack_bytes
        return due

    @property
    def unstated(self) -> int:
        """Messages received since the count was last stated to the peer."""
        return self._messages

    def state(self) -> int:
        """The count, for a frame about to be sent; the peer will know it from then on."""
        self._messages = self._bytes = 0
        self.ack_due = False
        return self.count

    def ack(self) -> bytes:
        """An ACK stating the count (sent when :attr:`ack_due`)."""
        return encode_ack(self.state())


# -- frames -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    received: int


@dataclass(frozen=True, slots=True)
class Resume:
    proof: bytes
    received: int


@dataclass(frozen=True, slots=True)
class Resumed:
    received: int


ResumeFrame = Ack | Resume | Resumed


def check_count(value: int, what: str) -> int:
    """``value``, checked to fit a count field (u64); else a ValueError naming ``what``."""
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{what} count {value} out of range 0..{MAX_COUNT}")
    return value


def encode_ack(received: int) -> bytes:
    return HEADER.pack(ResumeFrameType.ACK, 0) + _U64.pack(check_count(received, "ACK"))


def encode_resume(proof_: bytes, received: int) -> bytes:
    if len(proof_) != PROOF_SIZE:
        raise ValueError(f"a proof is {PROOF_SIZE} bytes, got {len(proof_)}")
    return HEADER.pack(ResumeFrameType.RESUME, 0) + _RESUME.pack(
        proof_, check_count(received, "RESUME")
    )


def encode_resumed(received: int) -> bytes:
    return HEADER.pack(ResumeFrameType.RESUMED, 0) + _U64.pack(check_count(received, "RESUMED"))


def parse_resume_frame(message: bytes | bytearray | memoryview) -> ResumeFrame:
    """Decode an ACK, RESUME or RESUMED message (exact lengths, stream 0).

    Raises:
        ProtocolViolation: a session-level fault (close 1002), naming what was wrong.
    """
    if len(message) < HEADER_SIZE:
        raise ProtocolViolation(f"truncated frame: {len(message)} bytes, header is {HEADER_SIZE}")
    code, stream_id = HEADER.unpack_from(message)
    try:
        kind = ResumeFrameType(code)
    except ValueError:
        raise ProtocolViolation(f"frame type {code} is not ACK, RESUME or RESUMED") from None
    if stream_id != 0:
        raise ProtocolViolation(f"{kind.name} on stream {stream_id}, must be 0")
    size = len(message) - HEADER_SIZE
    if kind is ResumeFrameType.RESUME:
        if size != _RESUME.size:
            raise ProtocolViolation(f"RESUME payload is {size} bytes, expected {_RESUME.size}")
        proof_, received = _RESUME.unpack_from(message, HEADER_SIZE)
        return Resume(proof_, received)
    if size != _U64.size:
        raise ProtocolViolation(f"{kind.name} payload is {size} bytes, expected {_U64.size}")
    (received,) = _U64.unpack_from(message, HEADER_SIZE)
    return Ack(received) if kind is ResumeFrameType.ACK else Resumed(received)


def encode_window(stream_id: int, increment: int, received: int) -> bytes:
    """A WINDOW of a resumable session: increment (u32) + the sender's received count (u64)."""
    if not 0 < stream_id <= 0xFFFFFFFF:
        raise ValueError(f"WINDOW stream id {stream_id} out of range 1..{0xFFFFFFFF}")
    if not 0 < increment <= MAX_WINDOW:
        raise ValueError(f"WINDOW increment {increment} out of range 1..{MAX_WINDOW}")
    return HEADER.pack(WINDOW_TYPE, stream_id) + _WINDOW.pack(
        increment, check_count(received, "WINDOW")
    )


def parse_window(payload: bytes | bytearray | memoryview) -> tuple[int, int]:
    """The (increment, received count) of a resumable session's WINDOW payload.

    Raises:
        ProtocolViolation: a payload that is not exactly 12 bytes, or an increment out of
            range (the caller makes it a stream fault, as wire.py does for WINDOW).
    """
    if len(payload) != _WINDOW.size:
        raise ProtocolViolation(f"WINDOW payload is {len(payload)} bytes, expected {_WINDOW.size}")
    increment, received = _WINDOW.unpack_from(payload)
    if not 0 < increment <= MAX_WINDOW:
        raise ProtocolViolation(f"WINDOW window {increment} out of range 1..{MAX_WINDOW}")
    return increment, received


# -- refusals -------------------------------------------------------------------------------------

#: a refusal after the upgrade closes the WebSocket with its own code (4000-4999: private
#: use, RFC 6455 7.4.2) and the reason ``code: detail``
CLOSE_CODES: dict[str, int] = {code: 4001 + i for i, code in enumerate(ResumeRefused.CODES)}
_CODE_OF_CLOSE = {close: code for code, close in CLOSE_CODES.items()}


def refusal_from_close(close_code: int, reason: str) -> ResumeRefused | None:
    """The refusal a peer's close frame carries, or None for another close."""
    code = _CODE_OF_CLOSE.get(close_code)
    if code is None:
        return None
    prefix = code + ": "
    return ResumeRefused(code, reason[len(prefix) :] if reason.startswith(prefix) else reason)
