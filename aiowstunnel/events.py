"""What :meth:`mux.Mux.receive` reports: one class per thing the session must act on
(a stream requested, accepted, refused, ended, reset or broken; data, credit, a datagram,
a flow requested, GOAWAY), and :class:`Reply`, an answer to send as it comes (pure).
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """The peer broke the rules on one stream; a :class:`Reply` with the RST follows."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamLimited:
    """The peer asked for more streams than max_streams; a :class:`Reply` with the
    OPEN_FAIL follows."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class FlowRequested:
    """The peer opened a datagram flow (FLOW_OPEN): dial it, then accept or refuse."""

    stream_id: int
    origin: str


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    stream_id: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A message Mux answers a peer's frame with (an RST for a stream violation, an
    OPEN_FAIL for an OPEN it refused): the session sends it as it comes."""

    message: bytes


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
    | Reply
    | FlowRequested
    | DatagramReceived
)
