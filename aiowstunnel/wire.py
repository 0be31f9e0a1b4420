"""The tunnel wire protocol, version 1, sans-I/O (docs/protocol.md): the frames.

This module owns the bytes inside the WebSocket messages: each frame's encoding and its
strict parse. The streams' states and credit live above it (``windows``, ``mux``); nothing
here touches asyncio or a socket, so it is tested and fuzzed with plain byte strings.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from . import wsframe
from .errors import ProtocolViolation

SUBPROTOCOL = "aiowstunnel.v1"

#: "type (1 byte) | stream id (4 bytes, big-endian) | payload" (protocol.md, Frames)
HEADER = struct.Struct("!BI")
HEADER_SIZE = HEADER.size
_U32 = struct.Struct("!I")

#: per stream, as OpenSSH's channel window: with 256 KiB a stream over TLS waited for credit
#: and ran at 0.6-0.9x ssh -L (docs/performance.md, TLS)
DEFAULT_WINDOW = 2 * 1024 * 1024
#: protocol.md: "a window never exceeds 2**31 - 1" (as in HTTP/2)
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_DATA = 128 * 1024
#: protocol.md, Early data: the most DATA this implementation takes on a stream the peer
#: opened before its OPEN_OK (announced in the handshake), and the most it sends that way
#: whatever the peer announced: a first flight (a TLS ClientHello, an HTTP request, an SSH
#: banner) goes with the OPEN instead of a round trip later
EARLY_DATA = 16 * 1024
MAX_REASON = 512
DEFAULT_MAX_STREAMS = 10_000
#: The largest UDP payload there is without IPv6 jumbograms (65,535 - 8 bytes of UDP header;
#: IPv4 carries at most 65,507); a DATAGRAM carries at most this much (protocol.md,
#: Datagram flows).
MAX_DATAGRAM = 65_527


class FrameType(enum.IntEnum):
    OPEN = 1
    OPEN_OK = 2
    OPEN_FAIL = 3
    DATA = 4
    WINDOW = 5
    FIN = 6
    RST = 7
    GOAWAY = 8
    # 9-11 are resumption's (ACK, RESUME, RESUMED); datagram flows take 12 and up.
    FLOW_OPEN = 12
    DATAGRAM = 13


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
    value: int = _U32.unpack_from(payload)[0]
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


@dataclass(frozen=True, slots=True)
class FlowOpen(Frame):
    """Ask the peer to open a datagram flow (protocol.md, Datagram flows): a stream whose
    payload travels in DATAGRAM frames, one datagram each, outside the credit windows."""

    origin: str = ""  # the UDP source that caused this flow, for the other side's logs
    type = FrameType.FLOW_OPEN

    def payload(self) -> bytes:
        return _encode_reason(self.origin)

    def __str__(self) -> str:
        return f"FLOW_OPEN[{self.stream_id}] origin={self.origin!r}"


@dataclass(frozen=True, slots=True)
class Datagram(Frame):
    """One UDP datagram of a flow, whole: its boundaries are the message's."""

    data: bytes | memoryview = b""
    type = FrameType.DATAGRAM

    def payload(self) -> bytes:
        return bytes(self.data)

    def __str__(self) -> str:
        head = bytes(self.data[:16])
        more = "..." if len(self.data) > 16 else ""
        return f"DATAGRAM[{self.stream_id}] {len(self.data)} bytes {head!r}{more}"


def datagram_header(stream_id: int) -> bytes:
    """The 5 bytes before a DATAGRAM payload."""
    return HEADER.pack(FrameType.DATAGRAM, stream_id)


def data_header(stream_id: int) -> bytes:
    """The 5 bytes before a DATA payload, for senders that avoid building a Data object."""
    return HEADER.pack(FrameType.DATA, stream_id)


def split_data(stream_id: int, data: memoryview, max_data: int) -> list[tuple[bytes, memoryview]]:
    """The DATA messages carrying ``data`` on a stream, as (header, payload) pairs of at
    most ``max_data`` payload bytes each, in order: the link frames each pair without
    joining it (credit is taken first, with ``Mux.reserve_data``)."""
    header = data_header(stream_id)
    return [(header, data[i : i + max_data]) for i in range(0, len(data), max_data)]


def data_frame(stream_id: int, payload: bytes | memoryview, mask_key: bytes | None) -> list[bytes]:
    """One WebSocket BINARY frame carrying the DATA message ``data_header(stream_id) +
    payload``, as :func:`wsframe.binary_frame` builds it (a client passes a fresh mask
    key, a server None): on the native data path one call, the header included."""
    return wsframe.python_binary_frame(HEADER.pack(FrameType.DATA, stream_id), payload, mask_key)


def data_frames(
    stream_id: int, data: memoryview, max_data: int, keys: wsframe.MaskKeys | None
) -> list[list[bytes]]:
    """``data`` as DATA messages of at most ``max_data`` payload bytes, each a BINARY frame
    (masked with the next of ``keys``, a client's) as the chunks to write, in order; no
    chunk refers to ``data``. One frame is one call on the native data path."""
    if len(data) <= max_data:
        return [data_frame(stream_id, data, keys.next() if keys is not None else None)]
    header, frame = data_header(stream_id), wsframe.binary_frame
    return [
        frame(header, data[i : i + max_data], keys.next() if keys is not None else None)
        for i in range(0, len(data), max_data)
    ]


def data_stream(message: bytes | bytearray | memoryview) -> int:
    """The stream id of a DATA message with a payload, else 0 (any other message; stream 0
    carries no DATA): the one header parse of :meth:`Mux.receive_data`."""
    if len(message) <= HEADER_SIZE:
        return 0
    code, stream_id = HEADER.unpack_from(message)
    return stream_id if code == FrameType.DATA else 0


#: the pure implementations, whichever data path runs (wsframe chooses; wsframe.DATA_PATH)
python_data_header = data_header
python_data_frame = data_frame
python_data_stream = data_stream
if wsframe.native is not None:
    data_header = wsframe.native.data_header
    data_frame = wsframe.native.data_frame
    data_stream = wsframe.native.data_stream


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
    if kind is FrameType.DATAGRAM:
        if len(payload) > MAX_DATAGRAM:
            raise ProtocolViolation(f"DATAGRAM of {len(payload)} bytes, the most is {MAX_DATAGRAM}")
        return Datagram(stream_id, payload)
    if kind is FrameType.FLOW_OPEN:
        return FlowOpen(stream_id, _reason(payload, "FLOW_OPEN origin"))
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
