"""The tunnel wire protocol, version 1, sans-I/O (docs/protocol.md).

This module owns the bytes inside the WebSocket messages: frame encoding, each stream's
state machine and credit windows, stream-id allocation. It takes messages and returns
events and messages to send; it never touches asyncio or a socket, so it is tested and
fuzzed with plain byte strings.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .errors import ProtocolViolation

VERSION = 1
SUBPROTOCOL = "aiowstunnel.v1"

#: "type (1 byte) | stream id (4 bytes, big-endian) | payload" (protocol.md, Frames)
HEADER = struct.Struct("!BI")
HEADER_SIZE = HEADER.size
_U32 = struct.Struct("!I")

DEFAULT_WINDOW = 256 * 1024
#: protocol.md: "a window never exceeds 2**31 - 1" (as in HTTP/2)
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_DATA = 128 * 1024
MAX_REASON = 512
DEFAULT_MAX_STREAMS = 10_000


class FrameType(enum.IntEnum):
    OPEN = 1
    OPEN_OK = 2
    OPEN_FAIL = 3
    DATA = 4
    WINDOW = 5
    FIN = 6
    RST = 7
    GOAWAY = 8


def _reason(payload: bytes | memoryview, what: str) -> str:
    if len(payload) > MAX_REASON:
        raise ProtocolViolation(f"{what} reason longer than {MAX_REASON} bytes")
    return bytes(payload).decode("utf-8", "replace")


def _encode_reason(reason: str) -> bytes:
    data = reason.encode("utf-8", "replace")[:MAX_REASON]
    return data.decode("utf-8", "ignore").encode()


def _window(payload: bytes | memoryview, what: str) -> int:
    if len(payload) < 4:
        raise ProtocolViolation(f"{what} frame too short for its window")
    (value,) = _U32.unpack_from(payload)
    if not 0 < value <= MAX_WINDOW:
        raise ProtocolViolation(f"{what} window {value} out of range 1..{MAX_WINDOW}")
    return value


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of the frame classes; ``serialize`` gives one WebSocket message."""

    stream_id: int

    type = FrameType.DATA  # overridden by each subclass (a class attribute, not a field)

    def payload(self) -> bytes:
        return b""

    def serialize(self) -> bytes:
        return HEADER.pack(self.type, self.stream_id) + self.payload()

    def __str__(self) -> str:
        return f"{self.type.name}[{self.stream_id}]"


#: Between an OPEN's origin and its target (protocol.md, Frames): a NUL never occurs in an
#: address, and a peer that knows no targets reads it as part of the origin, a log field.
TARGET_MARK = b"\x00"


@dataclass(frozen=True, slots=True)
class Open(Frame):
    """Ask the peer to open a stream. ``window``: what the opener may receive at once.

    ``target``: where this stream goes (``host:port``, ``[v6]:port``, ``unix:/path``), or
    ``""`` for the session's own target. The dialing side checks it against its rules.
    """

    window: int = DEFAULT_WINDOW
    origin: str = ""  # the TCP peer that caused this stream, for the other side's logs
    target: str = ""

    type = FrameType.OPEN

    def payload(self) -> bytes:
        head = _U32.pack(self.window) + _encode_reason(self.origin.replace("\x00", ""))
        if not self.target:
            return head
        return head + TARGET_MARK + _encode_reason(self.target)

    def __str__(self) -> str:
        target = f" target={self.target!r}" if self.target else ""
        return f"OPEN[{self.stream_id}] window={self.window} origin={self.origin!r}{target}"


@dataclass(frozen=True, slots=True)
class OpenOk(Frame):
    window: int = DEFAULT_WINDOW
    type = FrameType.OPEN_OK

    def payload(self) -> bytes:
        return _U32.pack(self.window)


@dataclass(frozen=True, slots=True)
class OpenFail(Frame):
    reason: str = ""
    type = FrameType.OPEN_FAIL

    def payload(self) -> bytes:
        return _encode_reason(self.reason)

    def __str__(self) -> str:
        return f"OPEN_FAIL[{self.stream_id}] {self.reason!r}"


@dataclass(frozen=True, slots=True)
class Data(Frame):
    data: bytes | memoryview = b""
    type = FrameType.DATA

    def payload(self) -> bytes:
        return bytes(self.data)

    def __str__(self) -> str:
        head = bytes(self.data[:16])
        more = "..." if len(self.data) > 16 else ""
        return f"DATA[{self.stream_id}] {len(self.data)} bytes {head!r}{more}"


@dataclass(frozen=True, slots=True)
class WindowUpdate(Frame):
    increment: int = 0
    type = FrameType.WINDOW

    def payload(self) -> bytes:
        return _U32.pack(self.increment)

    def __str__(self) -> str:
        return f"WINDOW[{self.stream_id}] +{self.increment}"


@dataclass(frozen=True, slots=True)
class Fin(Frame):
    type = FrameType.FIN


@dataclass(frozen=True, slots=True)
class Rst(Frame):
    reason: str = ""
    type = FrameType.RST

    def payload(self) -> bytes:
        return _encode_reason(self.reason)

    def __str__(self) -> str:
        return f"RST[{self.stream_id}] {self.reason!r}"


@dataclass(frozen=True, slots=True)
class GoAway(Frame):
    reason: str = ""
    type = FrameType.GOAWAY

    def payload(self) -> bytes:
        return _encode_reason(self.reason)

    def __str__(self) -> str:
        return f"GOAWAY {self.reason!r}"


def data_header(stream_id: int) -> bytes:
    """The 5 bytes before a DATA payload, for senders that avoid building a Data object."""
    return HEADER.pack(FrameType.DATA, stream_id)


def parse_frame(message: bytes | bytearray | memoryview) -> Frame:
    """Decode one WebSocket message into a frame.

    Raises:
        ProtocolViolation: for a truncated header, an unknown type or a malformed payload
            (session-level faults: protocol.md answers them with close code 1002).
    """
    if len(message) < HEADER_SIZE:
        raise ProtocolViolation(f"truncated frame: {len(message)} bytes, header is {HEADER_SIZE}")
    code, stream_id = HEADER.unpack_from(message)
    payload = memoryview(message)[HEADER_SIZE:]
    if code == FrameType.DATA and stream_id != 0:  # the hot path first
        return Data(stream_id, payload)
    try:
        kind = FrameType(code)
    except ValueError:
        raise ProtocolViolation(f"unknown frame type {code}") from None
    if kind is FrameType.GOAWAY:
        if stream_id != 0:
            raise ProtocolViolation(f"GOAWAY on stream {stream_id}, must be 0")
        return GoAway(0, _reason(payload, "GOAWAY"))
    if stream_id == 0:
        raise ProtocolViolation(f"{kind.name} on stream 0, which is reserved for the session")
    if kind is FrameType.OPEN:
        window = _window(payload, "OPEN")
        rest = bytes(payload[4:])
        origin, mark, target = rest.partition(TARGET_MARK)
        if mark and not target:
            raise ProtocolViolation("OPEN with an empty target")
        return Open(
            stream_id,
            window,
            _reason(origin, "OPEN origin"),
            _reason(target, "OPEN target") if mark else "",
        )
    if kind is FrameType.OPEN_OK:
        if len(payload) != 4:
            raise ProtocolViolation(f"OPEN_OK payload is {len(payload)} bytes, expected 4")
        return OpenOk(stream_id, _window(payload, "OPEN_OK"))
    if kind is FrameType.WINDOW:
        if len(payload) != 4:
            raise ProtocolViolation(f"WINDOW payload is {len(payload)} bytes, expected 4")
        return WindowUpdate(stream_id, _window(payload, "WINDOW"))
    if kind is FrameType.FIN:
        if payload:
            raise ProtocolViolation(f"FIN with a {len(payload)}-byte payload")
        return Fin(stream_id)
    if kind is FrameType.OPEN_FAIL:
        return OpenFail(stream_id, _reason(payload, "OPEN_FAIL"))
    return Rst(stream_id, _reason(payload, "RST"))


class Window:
    """A credit window (as h2's): how many bytes one side may still send on a stream."""

    __slots__ = ("available",)

    def __init__(self, size: int) -> None:
        self.available = size

    def consume(self, n: int) -> None:
        if n > self.available:
            raise ProtocolViolation(f"window overflow: {n} bytes sent with {self.available} credit")
        self.available -= n

    def grant(self, n: int) -> None:
        if self.available + n > MAX_WINDOW:
            raise ProtocolViolation(f"window overflow: credit would exceed {MAX_WINDOW}")
        self.available += n


class StreamState(enum.Enum):
    OPENING = "opening"  # OPEN sent or received, no answer yet
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"  # we sent FIN
    HALF_CLOSED_REMOTE = "half-closed (remote)"  # we received FIN
    CLOSED = "closed"

    # Members are singletons compared by identity, so the identity hash is consistent;
    # Enum's own __hash__ is Python code, and TRANSITIONS is looked up per DATA frame.
    __hash__ = object.__hash__


class Move(enum.Enum):
    """What happens to a stream: a frame sent (SEND_*) or received (RECV_*)."""

    SEND_OPEN_OK = enum.auto()
    RECV_OPEN_OK = enum.auto()
    SEND_DATA = enum.auto()
    RECV_DATA = enum.auto()
    SEND_FIN = enum.auto()
    RECV_FIN = enum.auto()
    CLOSE = enum.auto()  # RST or OPEN_FAIL, either way: always legal, always ends it

    __hash__ = object.__hash__  # as StreamState's


S, M = StreamState, Move
#: The one transition table (protocol.md, Stream states). A move not listed for a state is
#: a protocol violation by whoever made it.
TRANSITIONS: dict[tuple[StreamState, Move], StreamState] = {
    (S.OPENING, M.SEND_OPEN_OK): S.OPEN,
    (S.OPENING, M.RECV_OPEN_OK): S.OPEN,
    (S.OPEN, M.SEND_DATA): S.OPEN,
    (S.OPEN, M.RECV_DATA): S.OPEN,
    (S.OPEN, M.SEND_FIN): S.HALF_CLOSED_LOCAL,
    (S.OPEN, M.RECV_FIN): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_LOCAL, M.RECV_DATA): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, M.RECV_FIN): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, M.SEND_DATA): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_REMOTE, M.SEND_FIN): S.CLOSED,
}
for _state in StreamState:
    TRANSITIONS[(_state, M.CLOSE)] = S.CLOSED
del S, M, _state


#: the states in which DATA from the peer is legal (the RECV_DATA moves of TRANSITIONS)
_RECEIVES_DATA = frozenset(state for state, move in TRANSITIONS if move is Move.RECV_DATA)
#: the states in which we may send DATA. Neither data move changes a stream's state
#: (tests/test_wire.py holds that), so the per-message paths only check membership.
_SENDS_DATA = frozenset(state for state, move in TRANSITIONS if move is Move.SEND_DATA)
#: the states in which credit is of no more use to the peer (it sent FIN, or all is over)
_PEER_SENDS_NO_MORE = frozenset((StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED))


class StreamMachine:
    """The protocol state of one stream: its state and both credit windows."""

    __slots__ = ("pending_grant", "recv_window", "send_window", "state", "stream_id", "window")

    def __init__(self, stream_id: int, window: int) -> None:
        self.stream_id = stream_id
        self.state = StreamState.OPENING
        self.window = window  # our receive window size, as announced
        self.recv_window = Window(window)  # what the peer may still send us
        self.send_window = Window(0)  # what we may still send; set by OPEN / OPEN_OK
        self.pending_grant = 0  # bytes consumed locally, not yet returned to the peer

    def move(self, move: Move, by_peer: bool) -> None:
        new = TRANSITIONS.get((self.state, move))
        if new is None:
            who = "peer" if by_peer else "local side"
            raise ProtocolViolation(
                f"{move.name} is illegal in state {self.state.value} ({who})", self.stream_id
            )
        self.state = new


# Events returned by Mux.receive (one class per thing the session must act on).


@dataclass(frozen=True, slots=True)
class StreamRequested:
    stream_id: int
    origin: str
    target: str = ""  # the OPEN's own target; "" for the session's


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamRefused:
    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class CreditGranted:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer sent FIN: it will send no more (a TCP half-close)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamViolated:
    """The peer broke the rules on one stream; ``Mux`` already queued the RST answer."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamLimited:
    """The peer asked for more streams than max_streams; Mux already queued OPEN_FAIL."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    reason: str


Event = (
    StreamRequested
    | StreamAccepted
    | StreamRefused
    | DataReceived
    | CreditGranted
    | StreamEnded
    | StreamReset
    | StreamViolated
    | StreamLimited
    | GoAwayReceived
)


class Mux:
    """The protocol state of one session: every stream, both directions.

    Send methods return the messages (bytes) to send; :meth:`receive` takes one message and
    returns events, queueing any protocol answer (RST) in :attr:`outbox`.

    Args:
        client_side: True on the WebSocket client. Client-opened streams have odd ids,
            server-opened even ids, so ids never collide (protocol.md, Stream ids).
        window: our receive window per stream (announced in OPEN / OPEN_OK).
        max_data: the largest DATA payload we send.
        max_streams: streams the peer may have open with us at once.
    """

    def __init__(
        self,
        client_side: bool,
        window: int = DEFAULT_WINDOW,
        max_data: int = DEFAULT_MAX_DATA,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"window {window} out of range 1..{MAX_WINDOW}")
        self.client_side = client_side
        self.window = window
        self.max_data = max_data
        self.max_streams = max_streams
        self.streams: dict[int, StreamMachine] = {}
        self._next_id = 1 if client_side else 2
        self._peer_last_id = 0  # highest stream id the peer opened
        self.outbox: list[bytes] = []
        self.goaway_sent = False
        self.goaway_received = False
        # A grant is sent once a quarter of the window is consumed: the peer then always
        # keeps at least 3/4 of its credit, so a steady stream never stalls on WINDOW.
        self._grant_threshold = max(1, window // 4)

    # -- helpers ---------------------------------------------------------------------

    def _ours(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == self.client_side

    def _seen(self, stream_id: int) -> bool:
        """True when this id was opened once (it may be closed now)."""
        if self._ours(stream_id):
            return stream_id < self._next_id
        return stream_id <= self._peer_last_id

    def _end(self, machine: StreamMachine) -> None:
        if machine.state is StreamState.CLOSED:
            self.streams.pop(machine.stream_id, None)

    def take_outbox(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out

    # -- sending -------------------------------------------------------------------

    def open_stream(self, origin: str = "", target: str = "") -> tuple[int, bytes]:
        """Allocate a stream id and build its OPEN (``target``: see :class:`Open`).
        Returns (stream id, message)."""
        if self.goaway_received or self.goaway_sent:
            raise ProtocolViolation("no new streams after GOAWAY")
        if self._next_id > 0xFFFFFFFF:
            raise ProtocolViolation("stream ids exhausted")
        stream_id = self._next_id
        self._next_id += 2
        self.streams[stream_id] = StreamMachine(stream_id, self.window)
        return stream_id, Open(stream_id, self.window, origin, target).serialize()

    def accept_stream(self, stream_id: int) -> bytes:
        machine = self.streams[stream_id]
        machine.move(Move.SEND_OPEN_OK, by_peer=False)
        return OpenOk(stream_id, self.window).serialize()

    def refuse_stream(self, stream_id: int, reason: str) -> bytes:
        return self._close_locally(stream_id, OpenFail(stream_id, reason))

    def reset_stream(self, stream_id: int, reason: str) -> bytes:
        return self._close_locally(stream_id, Rst(stream_id, reason))

    def _close_locally(self, stream_id: int, frame: Frame) -> bytes:
        machine = self.streams.pop(stream_id, None)
        if machine is not None:
            machine.move(Move.CLOSE, by_peer=False)
        return frame.serialize()

    def credit(self, stream_id: int) -> int:
        machine = self.streams.get(stream_id)
        if machine is None or machine.state not in _SENDS_DATA:
            return 0
        return machine.send_window.available

    def send_data(self, stream_id: int, data: bytes | memoryview) -> tuple[list[bytes], int]:
        """Build DATA messages for as much of ``data`` as the credit allows.

        Returns:
            The messages, and how many bytes of ``data`` they carry (the caller keeps the
            rest until :class:`CreditGranted`).
        """
        n = self.reserve_data(stream_id, len(data))
        view = memoryview(data)
        header = data_header(stream_id)
        step = self.max_data
        messages = [header + view[i : min(i + step, n)] for i in range(0, n, step)]
        return messages, n

    def reserve_data(self, stream_id: int, size: int) -> int:
        """Take credit for up to ``size`` bytes of DATA; returns how many may be sent.

        The caller then sends that many bytes in DATA messages of at most
        :attr:`max_data` bytes each, headed by :func:`data_header` (the session builds
        them straight into WebSocket frames; :meth:`send_data` builds them as messages).
        """
        machine = self.streams[stream_id]
        if machine.state not in _SENDS_DATA:
            machine.move(Move.SEND_DATA, by_peer=False)  # raises: illegal in this state
        n = min(size, machine.send_window.available)
        if n:
            machine.send_window.consume(n)
        return n

    def send_fin(self, stream_id: int) -> bytes:
        machine = self.streams[stream_id]
        machine.move(Move.SEND_FIN, by_peer=False)
        self._end(machine)
        return Fin(stream_id).serialize()

    def grant(self, stream_id: int, n: int, flush: bool = False) -> bytes | None:
        """Return ``n`` bytes of credit to the peer (they left our buffers).

        Returns a WINDOW message once enough credit has piled up (or at once with
        ``flush``), else None. Credit for a stream the peer can no longer use is dropped.
        """
        machine = self.streams.get(stream_id)
        if machine is None or machine.state in _PEER_SENDS_NO_MORE:
            return None
        machine.pending_grant += n
        if machine.pending_grant < self._grant_threshold and not flush:
            return None
        increment, machine.pending_grant = machine.pending_grant, 0
        if increment == 0:
            return None
        machine.recv_window.grant(increment)
        return WindowUpdate(stream_id, increment).serialize()

    def goaway(self, reason: str) -> bytes:
        self.goaway_sent = True
        return GoAway(0, reason).serialize()

    # -- receiving -----------------------------------------------------------------

    def receive_data(
        self, message: bytes | bytearray | memoryview
    ) -> tuple[int, memoryview] | None:
        """:meth:`receive` for the common message, DATA on an open stream within its credit.

        Returns (stream id, payload), or None for any other message, which must then go through
        :meth:`receive` (nothing was changed). Same outcome as :meth:`receive`, without
        building the frame, the event list and the dispatch (the per-message cost of
        every rtt, docs/performance.md).
        """
        if len(message) <= HEADER_SIZE:
            return None
        code, stream_id = HEADER.unpack_from(message)
        if code != FrameType.DATA:
            return None
        machine = self.streams.get(stream_id)
        if machine is None or machine.state not in _RECEIVES_DATA:
            return None
        window = machine.recv_window
        n = len(message) - HEADER_SIZE
        if n > window.available:
            return None
        window.available -= n
        return stream_id, memoryview(message)[HEADER_SIZE:]

    def receive(self, message: bytes | bytearray | memoryview) -> list[Event]:
        """Process one WebSocket message from the peer.

        Returns:
            The events for the session. Stream-level faults come back as
            :class:`StreamViolated` with the RST already in :attr:`outbox`.

        Raises:
            ProtocolViolation: a session-level fault (the session closes with 1002).
        """
        frame = parse_frame(message)
        try:
            return self._dispatch(frame)
        except ProtocolViolation as exc:
            if exc.stream_id is None:
                raise
            machine = self.streams.pop(exc.stream_id, None)
            if machine is not None or not isinstance(frame, Rst | OpenFail):
                self.outbox.append(Rst(exc.stream_id, str(exc)).serialize())
            return [StreamViolated(exc.stream_id, str(exc))]

    def _dispatch(self, frame: Frame) -> list[Event]:
        sid = frame.stream_id
        if isinstance(frame, Data):
            machine = self._known(sid, frame)
            if machine is None:
                return []
            machine.move(Move.RECV_DATA, by_peer=True)
            try:
                machine.recv_window.consume(len(frame.data))
            except ProtocolViolation as exc:
                raise ProtocolViolation(str(exc), sid) from None
            return [DataReceived(sid, frame.data)]  # type: ignore[arg-type]
        if isinstance(frame, WindowUpdate):
            machine = self._known(sid, frame)
            if machine is None:
                return []
            if machine.state is StreamState.OPENING:
                raise ProtocolViolation("WINDOW before the stream is open", sid)
            try:
                machine.send_window.grant(frame.increment)
            except ProtocolViolation as exc:
                raise ProtocolViolation(str(exc), sid) from None
            return [CreditGranted(sid)]
        if isinstance(frame, Open):
            return self._receive_open(frame)
        if isinstance(frame, OpenOk):
            machine = self._known(sid, frame)
            if machine is None:
                return []
            if not self._ours(sid):
                raise ProtocolViolation("OPEN_OK for a stream the peer opened", sid)
            machine.move(Move.RECV_OPEN_OK, by_peer=True)
            machine.send_window = Window(frame.window)
            return [StreamAccepted(sid)]
        if isinstance(frame, Fin):
            machine = self._known(sid, frame)
            if machine is None:
                return []
            machine.move(Move.RECV_FIN, by_peer=True)
            self._end(machine)
            return [StreamEnded(sid)]
        if isinstance(frame, Rst | OpenFail):
            # Never answered, even for an unknown stream: two sides that each RST what
            # they do not know would otherwise bounce RSTs forever.
            machine = self.streams.pop(sid, None)
            if machine is None:
                return []
            machine.move(Move.CLOSE, by_peer=True)
            if isinstance(frame, OpenFail):
                return [StreamRefused(sid, frame.reason)]
            return [StreamReset(sid, frame.reason)]
        assert isinstance(frame, GoAway)
        self.goaway_received = True
        return [GoAwayReceived(frame.reason)]

    def _known(self, sid: int, frame: Frame) -> StreamMachine | None:
        """The stream a frame is for; None to ignore a late frame on a closed stream."""
        machine = self.streams.get(sid)
        if machine is not None:
            return machine
        if self._seen(sid):
            # Frames in flight when the stream closed (e.g. DATA crossing our RST).
            return None
        raise ProtocolViolation(f"{frame.type.name} for unknown stream {sid}", sid)

    def _receive_open(self, frame: Open) -> list[Event]:
        sid = frame.stream_id
        if self._ours(sid):
            raise ProtocolViolation(f"OPEN with stream id {sid} of our parity")
        if sid <= self._peer_last_id:
            raise ProtocolViolation(f"OPEN reuses stream id {sid} (last was {self._peer_last_id})")
        self._peer_last_id = sid
        if self.goaway_sent:
            self.outbox.append(OpenFail(sid, "going away").serialize())
            return []
        if len(self.streams) >= self.max_streams:
            reason = f"too many streams (max {self.max_streams})"
            self.outbox.append(OpenFail(sid, reason).serialize())
            return [StreamLimited(sid, reason)]
        machine = StreamMachine(sid, self.window)
        machine.send_window = Window(frame.window)
        self.streams[sid] = machine
        return [StreamRequested(sid, frame.origin, frame.target)]
