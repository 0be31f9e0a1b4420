"""Tests for aiowstunnel/wire.py: the frame codec, the stream transition table, credit windows
and the Mux, all with plain byte strings (no asyncio, no sockets)."""

from __future__ import annotations

import itertools
from collections import defaultdict, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiowstunnel.errors import LocalProtocolError, ProtocolViolation
from aiowstunnel.mux import (
    CreditGranted,
    DataReceived,
    Event,
    GoAwayReceived,
    Mux,
    Reply,
    StreamAccepted,
    StreamEnded,
    StreamLimited,
    StreamMachine,
    StreamRefused,
    StreamRequested,
    StreamReset,
    StreamViolated,
)
from aiowstunnel.windows import Window
from aiowstunnel.wire import (
    DEFAULT_WINDOW,
    EARLY_DATA,
    HEADER_SIZE,
    MAX_REASON,
    MAX_WINDOW,
    TRANSITIONS,
    Data,
    Datagram,
    Fin,
    FlowOpen,
    Frame,
    FrameType,
    GoAway,
    Move,
    Open,
    OpenFail,
    OpenOk,
    Rst,
    StreamState,
    WindowUpdate,
    data_header,
    parse_frame,
    split_data,
)

from . import fuzzing

U32_MAX = 0xFFFFFFFF
S = StreamState
M = Move


def header(code: int, stream_id: int) -> bytes:
    return bytes([code]) + stream_id.to_bytes(4, "big")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def pair(
    client_window: int = DEFAULT_WINDOW, server_window: int = DEFAULT_WINDOW, **kwargs
) -> tuple[Mux, Mux]:
    return Mux(True, window=client_window, **kwargs), Mux(False, window=server_window, **kwargs)


def open_stream(opener: Mux, acceptor: Mux, origin: str = "192.0.2.1:5000") -> int:
    """Open and accept one stream between two muxes; returns its id."""
    sid, message = opener.open_stream(origin)
    assert acceptor.receive(message) == [StreamRequested(sid, origin)]
    assert opener.receive(acceptor.accept_stream(sid)) == [StreamAccepted(sid)]
    return sid


def answers(events: list[Event]) -> list[Frame]:
    """The frames a Mux answered with, among the events of one receive()."""
    return [parse_frame(e.message) for e in events if isinstance(e, Reply)]


def send_data(mux: Mux, sid: int, data: bytes | memoryview) -> tuple[list[bytes], int]:
    """The DATA messages the session sends for ``data``: the credit taken with
    Mux.reserve_data, the messages cut by wire.split_data (the link frames each one)."""
    n = mux.reserve_data(sid, len(data))
    pairs = split_data(sid, memoryview(data)[:n], mux.max_data)
    return [head + bytes(chunk) for head, chunk in pairs], n


def session_fault(mux: Mux, message: bytes, match: str) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation, match=match) as info:
        mux.receive(message)
    assert info.value.stream_id is None  # (and nothing to send: an exception, no Reply)
    return info.value


def stream_fault(mux: Mux, message: bytes, sid: int, match: str) -> None:
    """The message breaks the rules of stream ``sid``: StreamViolated, and one RST queued."""
    events = mux.receive(message)
    assert len(events) == 2
    assert isinstance(events[0], StreamViolated)
    assert events[0].stream_id == sid
    assert match in events[0].reason
    [rst] = answers(events)
    assert isinstance(rst, Rst)
    assert rst.stream_id == sid
    assert sid not in mux


# -- frames: layout and round trips ------------------------------------------------------------

EXAMPLES = [
    Open(1, 1, ""),
    Open(3, MAX_WINDOW, "203.0.113.7:51234"),
    Open(U32_MAX, DEFAULT_WINDOW, "[2001:db8::1]:443 é ✓"),
    OpenOk(2, 1),
    OpenOk(4, MAX_WINDOW),
    OpenFail(1, ""),
    OpenFail(5, "connection refused"),
    Data(1, b""),
    Data(U32_MAX, bytes(range(256)) * 3),
    WindowUpdate(1, 1),
    WindowUpdate(2, MAX_WINDOW),
    Fin(7),
    Rst(9, ""),
    Rst(9, "x" * MAX_REASON),
    GoAway(0, ""),
    GoAway(0, "server shutting down"),
    FlowOpen(1, ""),
    FlowOpen(4, "127.0.0.1:5353"),
    Datagram(1, b""),
    Datagram(U32_MAX, bytes(range(256)) * 4),
]


def test_every_frame_type_has_an_example() -> None:
    assert {frame.type for frame in EXAMPLES} == set(FrameType)


@pytest.mark.parametrize("frame", EXAMPLES, ids=str)
@pytest.mark.parametrize("container", [bytes, bytearray, memoryview])
def test_frame_round_trips(frame: Frame, container) -> None:
    parsed = parse_frame(container(frame.serialize()))
    assert type(parsed) is type(frame)
    assert parsed == frame


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (Open(1, 258, "ab"), b"\x01\x00\x00\x00\x01\x00\x00\x01\x02ab"),
        (OpenOk(2, 7), b"\x02\x00\x00\x00\x02\x00\x00\x00\x07"),
        (OpenFail(3, "no"), b"\x03\x00\x00\x00\x03no"),
        (Data(0x01020304, b"hi"), b"\x04\x01\x02\x03\x04hi"),
        (WindowUpdate(5, 0x10000), b"\x05\x00\x00\x00\x05\x00\x01\x00\x00"),
        (Fin(6), b"\x06\x00\x00\x00\x06"),
        (Rst(7, "é"), b"\x07\x00\x00\x00\x07\xc3\xa9"),
        (GoAway(0, "bye"), b"\x08\x00\x00\x00\x00bye"),
    ],
    ids=lambda v: str(v) if isinstance(v, Frame) else "",
)
def test_frame_layout_is_type_stream_id_payload(frame: Frame, wire: bytes) -> None:
    assert frame.serialize() == wire


def test_data_header_matches_a_data_frame() -> None:
    assert data_header(9) + b"payload" == Data(9, b"payload").serialize()
    assert HEADER_SIZE == 5


def test_data_payload_is_a_view_of_the_message() -> None:
    frame = parse_frame(Data(1, b"abc").serialize())
    assert isinstance(frame, Data)
    assert bytes(frame.data) == b"abc"


def test_long_reason_is_cut_on_a_character_boundary() -> None:
    reason = "a" + "é" * 300  # 601 bytes of UTF-8; byte 512 is the middle of an "é"
    message = OpenFail(1, reason).serialize()
    assert len(message) - HEADER_SIZE == 511
    parsed = parse_frame(message)
    assert isinstance(parsed, OpenFail)
    assert parsed.reason == "a" + "é" * 255


def test_reason_that_is_not_utf8_is_decoded_with_replacement() -> None:
    parsed = parse_frame(header(FrameType.RST, 1) + b"bad \xff byte")
    assert isinstance(parsed, Rst)
    assert parsed.reason == "bad \ufffd byte"


def test_str_shortens_data_for_logs() -> None:
    text = str(Data(3, b"x" * 100_000))
    assert "100000 bytes" in text
    assert "..." in text
    assert len(text) < 80
    assert str(Data(3, b"hi")) == "DATA[3] 2 bytes b'hi'"


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        (Open(1, 10, "o"), "OPEN[1] window=10 origin='o'"),
        (OpenOk(2, 10), "OPEN_OK[2]"),
        (OpenFail(3, "no"), "OPEN_FAIL[3] 'no'"),
        (WindowUpdate(4, 9), "WINDOW[4] +9"),
        (Fin(5), "FIN[5]"),
        (Rst(6, "r"), "RST[6] 'r'"),
        (GoAway(0, "g"), "GOAWAY 'g'"),
    ],
)
def test_str_names_type_and_stream(frame: Frame, text: str) -> None:
    assert str(frame) == text


# Hypothesis strategies: every field over its whole legal range.
stream_ids = st.integers(1, U32_MAX)
windows = st.integers(1, MAX_WINDOW)
reasons = st.text(max_size=MAX_REASON // 4)  # at most 4 UTF-8 bytes per character
#: an OPEN's origin: a NUL in it is dropped when sent (what follows a NUL is the target);
#: text as st.text makes it, no lone surrogates (not UTF-8: a reason encodes them as "?")
origins = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=MAX_REASON // 4,
)
frames = st.one_of(
    st.builds(Open, stream_ids, windows, origins),
    st.builds(OpenOk, stream_ids, windows),
    st.builds(OpenFail, stream_ids, reasons),
    st.builds(Data, stream_ids, st.binary(max_size=2048)),
    st.builds(WindowUpdate, stream_ids, windows),
    st.builds(Fin, stream_ids),
    st.builds(Rst, stream_ids, reasons),
    st.builds(GoAway, st.just(0), reasons),
    st.builds(FlowOpen, stream_ids, reasons),
    st.builds(Datagram, stream_ids, st.binary(max_size=2048)),
)


@given(frames)
def test_property_every_frame_round_trips(frame: Frame) -> None:
    assert parse_frame(frame.serialize()) == frame


@given(st.sampled_from([OpenFail, Rst, GoAway]), st.text(max_size=1000))
def test_property_any_reason_serializes_to_a_valid_prefix(kind, reason: str) -> None:
    parsed = parse_frame(kind(0 if kind is GoAway else 1, reason).serialize())
    assert reason.startswith(parsed.reason)
    assert len(parsed.reason.encode()) <= MAX_REASON
    if len(reason.encode()) <= MAX_REASON:
        assert parsed.reason == reason


# -- frames: refusals (all session-level: close 1002) -----------------------------------------

REASON_TOO_LONG = b"r" * (MAX_REASON + 1)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"", "truncated frame: 0 bytes"),
        (b"\x04\x00\x00\x00", "truncated frame: 4 bytes"),
        (header(0, 1), "unknown frame type 0"),
        (header(9, 1), "unknown frame type 9"),
        (header(255, 1) + b"x", "unknown frame type 255"),
        (header(FrameType.GOAWAY, 1), "GOAWAY on stream 1, must be 0"),
        (header(FrameType.OPEN, 0) + u32(1), "OPEN on stream 0"),
        (header(FrameType.OPEN_OK, 0) + u32(1), "OPEN_OK on stream 0"),
        (header(FrameType.OPEN_FAIL, 0), "OPEN_FAIL on stream 0"),
        (header(FrameType.WINDOW, 0) + u32(1), "WINDOW on stream 0"),
        (header(FrameType.FIN, 0), "FIN on stream 0"),
        (header(FrameType.RST, 0), "RST on stream 0"),
        (header(FrameType.OPEN, 1) + b"\x00\x00\x01", "OPEN frame too short"),
        (header(FrameType.OPEN, 1) + u32(0), "OPEN window 0 out of range"),
        (header(FrameType.OPEN, 1) + u32(MAX_WINDOW + 1), "OPEN window 2147483648 out"),
        (header(FrameType.OPEN, 1) + u32(1) + REASON_TOO_LONG, "OPEN origin reason longer"),
        (header(FrameType.OPEN_OK, 2), "OPEN_OK payload is 0 bytes"),
        (header(FrameType.OPEN_OK, 2) + u32(1) + b"\x00", "OPEN_OK payload is 5 bytes"),
        (header(FrameType.OPEN_OK, 2) + u32(0), "OPEN_OK window 0 out of range"),
        (header(FrameType.WINDOW, 1) + b"\x00\x01", "WINDOW payload is 2 bytes"),
        (header(FrameType.WINDOW, 1) + u32(0), "WINDOW window 0 out of range"),
        (header(FrameType.WINDOW, 1) + u32(U32_MAX), "WINDOW window 4294967295 out"),
        (header(FrameType.FIN, 1) + b"\x00", "FIN with a 1-byte payload"),
        (header(FrameType.OPEN_FAIL, 1) + REASON_TOO_LONG, "OPEN_FAIL reason longer"),
        (header(FrameType.RST, 1) + REASON_TOO_LONG, "RST reason longer"),
        (header(FrameType.GOAWAY, 0) + REASON_TOO_LONG, "GOAWAY reason longer"),
    ],
)
def test_malformed_frame_is_a_session_fault(message: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match) as info:
        parse_frame(message)
    assert info.value.stream_id is None
    for client_side in (True, False):
        session_fault(Mux(client_side), message, match)


@pytest.mark.parametrize("client_side", [True, False])
def test_data_on_stream_0_is_a_session_fault(client_side: bool) -> None:
    session_fault(Mux(client_side), header(FrameType.DATA, 0) + b"x", "stream 0")


# Random bytes biased towards real headers: a known type (or not) and a small stream id.
messages = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda code, sid, payload: header(code, sid) + payload,
        st.integers(0, 10) | st.just(255),
        st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 0x7FFFFFFF, U32_MAX]),
        st.binary(max_size=12)
        | st.integers(0, U32_MAX).map(u32)
        | st.integers(MAX_REASON - 1, MAX_REASON + 1).map(lambda n: b"r" * n),
    ),
)


@given(messages)
def test_property_parse_frame_raises_only_session_faults(message: bytes) -> None:
    try:
        frame = parse_frame(message)
    except ProtocolViolation as exc:
        assert exc.stream_id is None
    else:
        assert isinstance(frame, Frame)


# -- the transition table -----------------------------------------------------------------------

EXPECTED_TRANSITIONS = {
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
    **{(state, M.CLOSE): S.CLOSED for state in StreamState},  # RST / OPEN_FAIL: always legal
}
ILLEGAL = [pair for pair in itertools.product(StreamState, Move) if pair not in TRANSITIONS]


def test_transition_table_is_the_documented_machine() -> None:
    assert TRANSITIONS == EXPECTED_TRANSITIONS
    assert len(ILLEGAL) == len(StreamState) * len(Move) - len(EXPECTED_TRANSITIONS) == 20


def test_data_moves_never_change_the_state() -> None:
    # Mux.receive_data and Mux.reserve_data, run once per DATA message, only check that
    # the state allows the move; this is what lets them skip it.
    for (state, move), new in TRANSITIONS.items():
        if move in (M.SEND_DATA, M.RECV_DATA):
            assert new is state, (state, move)


@pytest.mark.parametrize(("state", "move"), list(EXPECTED_TRANSITIONS))
def test_legal_move_reaches_its_state(state: StreamState, move: Move) -> None:
    machine = StreamMachine(7, 100)
    machine.state = state
    machine.move(move, by_peer=True)
    assert machine.state is EXPECTED_TRANSITIONS[(state, move)]


@pytest.mark.parametrize(("state", "move"), ILLEGAL, ids=lambda v: v.name)
@pytest.mark.parametrize(("by_peer", "who"), [(True, "(peer)"), (False, "(local side)")])
def test_illegal_move_names_move_and_state(
    state: StreamState, move: Move, by_peer: bool, who: str
) -> None:
    machine = StreamMachine(7, 100)
    machine.state = state
    with pytest.raises(ProtocolViolation) as info:
        machine.move(move, by_peer=by_peer)
    message = str(info.value)
    assert move.name in message
    assert f"state {state.value}" in message
    assert who in message
    assert info.value.stream_id == 7
    assert machine.state is state  # an illegal move changes nothing


def test_local_misuse_through_mux_is_a_named_error() -> None:
    client, server = pair()
    sid, message = client.open_stream()
    server.receive(message)
    with pytest.raises(ProtocolViolation, match="SEND_DATA is illegal in state opening"):
        send_data(client, sid, b"too early")
    with pytest.raises(ProtocolViolation, match="SEND_FIN is illegal in state opening"):
        client.send_fin(sid)
    client.receive(server.accept_stream(sid))
    with pytest.raises(ProtocolViolation, match="SEND_OPEN_OK is illegal in state open"):
        server.accept_stream(sid)
    client.send_fin(sid)
    with pytest.raises(ProtocolViolation, match="SEND_FIN is illegal in state half-closed"):
        client.send_fin(sid)
    with pytest.raises(ProtocolViolation, match="SEND_DATA is illegal in state half-closed"):
        send_data(client, sid, b"after fin")


# -- Mux: stream ids, lifecycle ----------------------------------------------------------------


def test_stream_ids_have_the_side_s_parity() -> None:
    client, server = pair()
    assert [client.open_stream()[0] for _ in range(3)] == [1, 3, 5]
    assert [server.open_stream()[0] for _ in range(3)] == [2, 4, 6]


def test_open_frame_announces_our_window_and_origin() -> None:
    client = Mux(True, window=1234)
    sid, message = client.open_stream("198.51.100.9:40000")
    assert parse_frame(message) == Open(sid, 1234, "198.51.100.9:40000")


@pytest.mark.parametrize("client_side", [True, False])
def test_stream_ids_run_out_at_2_32(client_side: bool) -> None:
    mux = Mux(client_side)
    mux._next_id = U32_MAX - (0 if client_side else 1)  # skip 2**31 opens
    sid, message = mux.open_stream()
    assert parse_frame(message).stream_id == sid
    with pytest.raises(LocalProtocolError, match="stream ids exhausted"):
        mux.open_stream()


@pytest.mark.parametrize("window", [0, -1, MAX_WINDOW + 1])
def test_mux_refuses_an_impossible_window(window: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Mux(True, window=window)


def test_full_lifecycle_both_directions_then_forgotten() -> None:
    client, server = pair()
    sid = open_stream(client, server)
    sent, n = send_data(client, sid, b"ping")
    assert n == 4
    assert [bytes(e.data) for m in sent for e in server.receive(m)] == [b"ping"]
    back, n = send_data(server, sid, b"pong")
    assert [bytes(e.data) for m in back for e in client.receive(m)] == [b"pong"]
    assert server.receive(client.send_fin(sid)) == [StreamEnded(sid)]
    more, _ = send_data(server, sid, b"still allowed after the peer's FIN")
    assert [bytes(e.data) for m in more for e in client.receive(m)] == [
        b"still allowed after the peer's FIN"
    ]
    assert client.receive(server.send_fin(sid)) == [StreamEnded(sid)]
    assert len(client) == 0
    assert len(server) == 0


def test_refused_stream_reports_the_reason_and_is_forgotten() -> None:
    client, server = pair()
    sid, message = client.open_stream()
    server.receive(message)
    assert client.receive(server.refuse_stream(sid, "connection refused")) == [
        StreamRefused(sid, "connection refused")
    ]
    assert len(client) == 0
    assert len(server) == 0


def test_reset_stream_reports_the_reason_and_is_forgotten() -> None:
    client, server = pair()
    sid = open_stream(client, server)
    assert server.receive(client.reset_stream(sid, "client went away")) == [
        StreamReset(sid, "client went away")
    ]
    assert len(client) == 0
    assert len(server) == 0


def test_credit_is_zero_until_open_and_after_close() -> None:
    client, server = pair(client_window=100, server_window=300)
    sid, message = client.open_stream()
    assert client.credit(sid) == 0
    server.receive(message)
    assert server.credit(sid) == 0  # not accepted yet
    client.receive(server.accept_stream(sid))
    assert client.credit(sid) == 300  # the peer's window, not ours
    assert server.credit(sid) == 100
    client.reset_stream(sid, "")
    assert client.credit(sid) == 0
    assert client.credit(999) == 0


# -- Mux: the defined answers to a misbehaving peer ---------------------------------------------


@pytest.mark.parametrize("client_side", [True, False])
def test_unknown_type_truncated_and_malformed_are_session_faults(client_side: bool) -> None:
    client, server = pair()
    sid = open_stream(client, server)
    mux = client if client_side else server
    session_fault(mux, header(9, sid), "unknown frame type 9")
    session_fault(mux, b"\x04\x00", "truncated frame")
    session_fault(mux, header(FrameType.WINDOW, sid) + b"\x00\x00\x01", "WINDOW payload is 3")
    assert sid in mux  # nothing was half-applied


@pytest.mark.parametrize(
    ("client_side", "sid"),
    [
        pytest.param(True, 2, id="client/peer-next"),
        pytest.param(True, 100, id="client/peer-far"),
        pytest.param(True, 1, id="client/ours"),
        pytest.param(True, 7, id="client/ours-far"),
        pytest.param(False, 1, id="server/peer-next"),
        pytest.param(False, 99, id="server/peer-far"),
        pytest.param(False, 2, id="server/ours"),
    ],
)
@pytest.mark.parametrize("kind", [FrameType.DATA, FrameType.WINDOW, FrameType.FIN])
def test_frame_for_a_never_opened_stream_is_reset(
    client_side: bool, sid: int, kind: FrameType
) -> None:
    mux = Mux(client_side)
    payload = {FrameType.DATA: b"data", FrameType.WINDOW: u32(10), FrameType.FIN: b""}[kind]
    stream_fault(mux, header(kind, sid) + payload, sid, f"{kind.name} for unknown stream {sid}")


def test_open_ok_for_a_never_opened_stream_is_reset() -> None:
    stream_fault(Mux(True), OpenOk(1, 10).serialize(), 1, "OPEN_OK for unknown stream 1")


def test_data_beyond_the_window_is_reset() -> None:
    client, server = pair(server_window=100)
    sid = open_stream(client, server)
    assert server.receive(Data(sid, b"a" * 60).serialize()) == [DataReceived(sid, b"a" * 60)]
    assert server.receive(Data(sid, b"b" * 40).serialize()) == [DataReceived(sid, b"b" * 40)]
    stream_fault(server, Data(sid, b"c").serialize(), sid, "window overflow: 1 bytes sent with 0")


def test_data_window_refills_only_by_what_was_granted() -> None:
    client, server = pair(server_window=8)  # grant threshold 2
    sid = open_stream(client, server)
    server.receive(Data(sid, b"12345678").serialize())
    update = server.grant(sid, 3)
    assert parse_frame(update) == WindowUpdate(sid, 3)
    server.receive(Data(sid, b"abc").serialize())
    stream_fault(server, Data(sid, b"d").serialize(), sid, "window overflow")


def test_window_update_beyond_max_window_is_reset() -> None:
    client, server = pair(server_window=MAX_WINDOW)
    sid = open_stream(client, server)
    assert client.credit(sid) == MAX_WINDOW
    stream_fault(client, WindowUpdate(sid, 1).serialize(), sid, "credit would exceed")


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (Data(1, b"early"), "RECV_DATA is illegal in state opening"),
        (Data(1, b""), "RECV_DATA is illegal in state opening"),
        (Fin(1), "RECV_FIN is illegal in state opening"),
        (WindowUpdate(1, 5), "WINDOW before the stream is open"),
    ],
    ids=str,
)
def test_frame_before_open_ok_is_reset(frame: Frame, match: str) -> None:
    client = Mux(True)
    sid, _ = client.open_stream()
    stream_fault(client, frame.serialize(), sid, match)


def early_pair(early: int, server_window: int = DEFAULT_WINDOW) -> tuple[Mux, Mux]:
    """A client and server as after a handshake in which the server announced ``early``."""
    client, server = pair(server_window=server_window)
    client.early_send = server.early_receive = early
    return client, server


def test_early_data_is_taken_up_to_the_announced_allowance_and_counts_in_the_window() -> None:
    client, server = early_pair(8, server_window=100)
    sid, message = client.open_stream()
    server.receive(message)
    assert client.credit(sid) == 8  # before OPEN_OK: the early allowance
    sent, n = send_data(client, sid, b"0123456789")
    assert n == 8 and client.credit(sid) == 0
    assert server.receive(sent[0]) == [DataReceived(sid, b"01234567")]
    assert client.receive(server.accept_stream(sid)) == [StreamAccepted(sid)]
    assert client.credit(sid) == 100 - 8  # the early bytes are part of the window
    sent, n = send_data(client, sid, b"x" * 92)
    assert n == 92 and server.receive(sent[0]) == [DataReceived(sid, b"x" * 92)]
    stream_fault(server, Data(sid, b"!").serialize(), sid, "window overflow")


def test_early_data_beyond_the_allowance_or_unannounced_is_reset() -> None:
    client, server = early_pair(8)
    sid, message = client.open_stream()
    server.receive(message)
    server.receive(Data(sid, b"1234").serialize())
    stream_fault(server, Data(sid, b"56789").serialize(), sid, "beyond the 8 bytes of early")
    client, server = early_pair(0)
    sid, message = client.open_stream()
    server.receive(message)
    assert client.credit(sid) == 0
    with pytest.raises(ProtocolViolation, match="SEND_DATA is illegal in state opening"):
        client.reserve_data(sid, 1)
    stream_fault(server, Data(sid, b"x").serialize(), sid, "announced no early data")


def test_an_open_ok_window_below_the_early_data_sent_is_reset() -> None:
    client, _server = early_pair(8)
    sid, _message = client.open_stream()
    send_data(client, sid, b"12345678")
    stream_fault(client, OpenOk(sid, 7).serialize(), sid, "smaller than the 8 bytes of early")


def test_early_data_is_sent_at_most_16_kib_whatever_the_peer_announced() -> None:
    client, _server = early_pair(2**31 - 1)
    sid, _ = client.open_stream()
    assert client.credit(sid) == EARLY_DATA == 16 * 1024


def test_open_ok_twice_or_for_the_peer_s_stream_is_reset() -> None:
    client, server = pair()
    sid = open_stream(client, server)
    stream_fault(client, OpenOk(sid, 10).serialize(), sid, "RECV_OPEN_OK is illegal in state open")
    peer_sid, message = server.open_stream()
    client.receive(message)
    stream_fault(client, OpenOk(peer_sid, 10).serialize(), peer_sid, "OPEN_OK for a stream the")


def test_data_after_the_peer_s_fin_is_reset() -> None:
    client, server = pair()
    sid = open_stream(client, server)
    server.receive(client.send_fin(sid))
    stream_fault(server, Data(sid, b"x").serialize(), sid, "RECV_DATA is illegal in state half")


def test_fin_twice_is_reset() -> None:
    client, server = pair()
    sid = open_stream(client, server)
    server.receive(client.send_fin(sid))
    stream_fault(server, Fin(sid).serialize(), sid, "RECV_FIN is illegal in state half")


LATE_FRAMES = [
    lambda sid: Data(sid, b"in flight"),
    lambda sid: Data(sid, b""),
    lambda sid: WindowUpdate(sid, 100),
    lambda sid: Fin(sid),
    lambda sid: OpenOk(sid, 100),
    lambda sid: Rst(sid, "crossing"),
    lambda sid: OpenFail(sid, "crossing"),
]


@pytest.mark.parametrize("late", LATE_FRAMES, ids=lambda f: type(f(1)).__name__)
@pytest.mark.parametrize("how", ["reset-by-us", "reset-by-peer", "refused", "both-fin"])
@pytest.mark.parametrize("opener_side", ["client", "server"])
def test_late_frame_on_a_closed_stream_is_ignored(late, how: str, opener_side: str) -> None:
    client, server = pair()
    opener, acceptor = (client, server) if opener_side == "client" else (server, client)
    if how == "refused":
        sid, message = opener.open_stream()
        acceptor.receive(message)
        opener.receive(acceptor.refuse_stream(sid, "no"))
    else:
        sid = open_stream(opener, acceptor)
        if how == "reset-by-us":  # our RST is still in flight: the opener knows nothing
            acceptor.reset_stream(sid, "bye")
        elif how == "reset-by-peer":
            acceptor.receive(opener.reset_stream(sid, "bye"))
        else:
            opener.receive(acceptor.send_fin(sid))
            acceptor.receive(opener.send_fin(sid))
    for mux in (acceptor,) if how == "reset-by-us" else (opener, acceptor):
        assert sid not in mux
        assert mux.receive(late(sid).serialize()) == []  # no event, no Reply


@pytest.mark.parametrize("client_side", [True, False])
@pytest.mark.parametrize("sid", [1, 2, 3, 4, 1001, U32_MAX])
@pytest.mark.parametrize("kind", [Rst, OpenFail])
def test_rst_for_an_unknown_stream_is_never_answered(client_side: bool, sid: int, kind) -> None:
    mux = Mux(client_side)
    assert mux.receive(kind(sid, "who?").serialize()) == []  # no event, no Reply


def test_open_beyond_max_streams_is_refused_with_open_fail() -> None:
    client, server = pair(max_streams=2)
    first = open_stream(client, server)
    open_stream(client, server)
    sid, message = client.open_stream()
    events = server.receive(message)
    assert events[:1] == [StreamLimited(sid, "too many streams (max 2)")]
    [refusal] = answers(events)
    assert refusal == OpenFail(sid, "too many streams (max 2)")
    assert sid not in server
    assert client.receive(refusal.serialize()) == [StreamRefused(sid, "too many streams (max 2)")]
    # Frames already in flight for the refused id are late frames, not faults.
    assert server.receive(Fin(sid).serialize()) == []
    # Closing a stream makes room again.
    server.receive(client.reset_stream(first, ""))
    open_stream(client, server)


@pytest.mark.parametrize("client_side", [True, False])
def test_open_with_our_parity_is_a_session_fault(client_side: bool) -> None:
    ours = 1 if client_side else 2
    session_fault(Mux(client_side), Open(ours).serialize(), f"stream id {ours} of our parity")


def test_open_reusing_an_id_is_a_session_fault() -> None:
    client, server = pair()
    sid = open_stream(client, server)
    session_fault(server, Open(sid).serialize(), f"OPEN reuses stream id {sid}")
    server.receive(Open(7).serialize())
    session_fault(server, Open(5).serialize(), "OPEN reuses stream id 5 \\(last was 7\\)")
    server.reset_stream(7, "")
    session_fault(server, Open(7).serialize(), "OPEN reuses stream id 7")


def test_goaway_received_stops_new_streams_but_not_old_ones() -> None:
    client, server = pair()
    sid = open_stream(client, server)
    assert client.receive(server.goaway("restarting")) == [GoAwayReceived("restarting")]
    with pytest.raises(LocalProtocolError, match="no new streams after GOAWAY"):
        client.open_stream()
    sent, n = send_data(client, sid, b"still flowing")
    assert n == 13
    assert [bytes(e.data) for m in sent for e in server.receive(m)] == [b"still flowing"]


def test_goaway_sent_refuses_the_peer_s_new_streams() -> None:
    client, server = pair()
    sid, message = client.open_stream()  # crosses the GOAWAY
    goaway = server.goaway("restarting")
    with pytest.raises(LocalProtocolError, match="no new streams after GOAWAY"):
        server.open_stream()
    events = server.receive(message)
    assert [e for e in events if not isinstance(e, Reply)] == []
    [refusal] = answers(events)
    assert refusal == OpenFail(sid, "going away")
    assert len(server) == 0
    assert client.receive(refusal.serialize()) == [StreamRefused(sid, "going away")]
    assert client.receive(goaway) == [GoAwayReceived("restarting")]


# -- flow control --------------------------------------------------------------------------------


def test_window_consume_and_grant() -> None:
    window = Window(10)
    window.consume(4)
    window.consume(6)
    assert window.available == 0
    with pytest.raises(ProtocolViolation, match="1 bytes sent with 0 credit"):
        window.consume(1)
    window.grant(MAX_WINDOW)
    assert window.available == MAX_WINDOW
    with pytest.raises(ProtocolViolation, match="would exceed"):
        window.grant(1)
    assert window.available == MAX_WINDOW


def test_send_data_is_limited_by_credit() -> None:
    client, server = pair(server_window=100)
    sid = open_stream(client, server)
    payload = bytes(range(250))
    sent, n = send_data(client, sid, payload)
    assert n == 100
    assert b"".join(bytes(e.data) for m in sent for e in server.receive(m)) == payload[:100]
    assert client.credit(sid) == 0
    assert send_data(client, sid, payload[100:]) == ([], 0)


def test_send_data_splits_at_max_data() -> None:
    client, server = pair(max_data=7)
    sid = open_stream(client, server)
    payload = bytes(range(30))
    sent, n = send_data(client, sid, memoryview(payload))
    assert n == 30
    assert [len(m) - HEADER_SIZE for m in sent] == [7, 7, 7, 7, 2]
    assert b"".join(bytes(e.data) for m in sent for e in server.receive(m)) == payload


@pytest.mark.parametrize(
    ("window", "grants", "updates"),
    [
        (1000, [100, 100, 49], [None, None, None]),  # threshold 250: below it, nothing
        (1000, [100, 100, 50], [None, None, 250]),  # a quarter consumed: one WINDOW
        (1000, [249, 1, 1], [None, 250, None]),
        (1000, [600], [600]),
        (1001, [249, 1], [None, 250]),  # 1001 // 4
        (3, [1, 1], [1, 1]),  # a tiny window still grants (threshold at least 1)
    ],
)
def test_grants_are_batched_until_a_quarter_of_the_window(
    window: int, grants: list[int], updates: list[int | None]
) -> None:
    client, server = pair(server_window=window)
    sid = open_stream(client, server)
    server.receive(Data(sid, b"x" * sum(grants)).serialize())
    got = []
    for n in grants:
        message = server.grant(sid, n)
        got.append(None if message is None else parse_frame(message).increment)
        if message is not None:
            assert client.receive(message) == [CreditGranted(sid)]
    assert got == updates


def test_flush_sends_a_small_grant_at_once() -> None:
    client, server = pair(server_window=1000)
    sid = open_stream(client, server)
    server.receive(Data(sid, b"x" * 10).serialize())
    assert server.grant(sid, 3) is None
    assert parse_frame(server.grant(sid, 2, flush=True)) == WindowUpdate(sid, 5)
    assert server.grant(sid, 0, flush=True) is None  # nothing owed: no empty WINDOW


def test_grant_after_the_peer_finished_is_dropped() -> None:
    client, server = pair(server_window=8)
    sid = open_stream(client, server)
    server.receive(Data(sid, b"x" * 8).serialize())
    server.receive(client.send_fin(sid))
    assert server.grant(sid, 8, flush=True) is None  # the peer will send no more
    server.receive(client.reset_stream(sid, ""))
    assert server.grant(sid, 8, flush=True) is None  # the stream is gone


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(4, 100_000),
    max_data=st.integers(1, 50_000),
    fractions=st.lists(st.floats(0.001, 0.75), min_size=1, max_size=40),
)
def test_property_steady_sender_keeps_three_quarters_of_its_credit(
    window: int, max_data: int, fractions: list[float]
) -> None:
    client, server = pair(server_window=window, max_data=max_data)
    sid = open_stream(client, server)
    assert client.credit(sid) == window
    for fraction in fractions:
        chunk = b"z" * max(1, int(window * fraction))
        sent, n = send_data(client, sid, chunk)
        assert n == len(chunk)  # never stalls: a chunk of up to 3/4 window always fits
        for message in sent:
            for event in server.receive(message):
                update = server.grant(sid, len(event.data))  # the receiver consumes it all
                if update is not None:
                    assert client.receive(update) == [CreditGranted(sid)]
        assert 4 * client.credit(sid) > 3 * window


# -- random bytes into a Mux ---------------------------------------------------------------------


def mid_session(client_side: bool) -> Mux:
    """A Mux with streams in every state, as a session would have them after a while."""
    client, server = pair(client_window=50, server_window=50, max_streams=8)
    mux, peer = (client, server) if client_side else (server, client)
    mux.open_stream()  # opening, ours
    _, message = peer.open_stream()  # opening, the peer's
    mux.receive(message)
    open_stream(mux, peer)  # open
    open_stream(peer, mux)  # open, peer-opened
    half_local = open_stream(mux, peer)
    peer.receive(mux.send_fin(half_local))
    half_remote = open_stream(peer, mux)
    mux.receive(peer.send_fin(half_remote))
    closed = open_stream(mux, peer)
    peer.receive(mux.reset_stream(closed, ""))
    assert {mux.state(sid) for sid in mux.stream_ids()} == set(StreamState) - {StreamState.CLOSED}
    return mux


def check_receive(mux: Mux, message: bytes) -> bool:
    """Feed one message; check the Mux's answer. Returns False once the session is over."""
    try:
        events = mux.receive(message)
    except ProtocolViolation as exc:
        assert exc.stream_id is None  # stream-level faults must come back as events
        return False
    queued = {f.stream_id: f for f in answers(events)}
    frame = parse_frame(message)
    if isinstance(frame, Rst | OpenFail):
        assert queued == {}  # never answer an RST
    for event in events:
        if isinstance(event, StreamViolated):
            assert isinstance(queued.get(event.stream_id), Rst | OpenFail)
            assert event.stream_id not in mux
    return True


@given(client_side=st.booleans(), mid=st.booleans(), batch=st.lists(messages, max_size=20))
def test_property_random_messages_raise_only_session_faults(
    client_side: bool, mid: bool, batch: list[bytes]
) -> None:
    mux = mid_session(client_side) if mid else Mux(client_side)
    for message in batch:
        if not check_receive(mux, message):
            break


@given(client_side=st.booleans(), data=st.data())
def test_property_well_formed_frames_on_live_streams_never_crash(client_side: bool, data) -> None:
    mux = mid_session(client_side)
    ids = st.sampled_from([0, 1, 2, *mux.stream_ids(), 20, 21, U32_MAX])
    live_frames = st.one_of(
        st.builds(Open, ids.filter(bool), st.integers(1, MAX_WINDOW)),
        st.builds(OpenOk, ids.filter(bool), st.integers(1, MAX_WINDOW)),
        st.builds(OpenFail, ids.filter(bool)),
        st.builds(Data, ids, st.binary(max_size=60)),
        st.builds(WindowUpdate, ids.filter(bool), st.integers(1, MAX_WINDOW)),
        st.builds(Fin, ids.filter(bool)),
        st.builds(Rst, ids.filter(bool)),
        st.just(GoAway(0)),
    )
    for frame in data.draw(st.lists(live_frames, max_size=25)):
        if not check_receive(mux, frame.serialize()):
            break


# -- two Muxes back to back ----------------------------------------------------------------------


class Side:
    """One end of a simulated session: a Mux, the messages it sent not yet delivered, and
    what its application sent and received on each stream."""

    def __init__(self, client_side: bool, window: int, max_data: int) -> None:
        self.mux = Mux(client_side, window=window, max_data=max_data)
        self.wire: deque[bytes] = deque()  # sent, not yet delivered (in order, as WebSocket)
        self.sent: defaultdict[int, bytearray] = defaultdict(bytearray)
        self.received: defaultdict[int, bytearray] = defaultdict(bytearray)
        self.unconsumed: defaultdict[int, int] = defaultdict(int)
        self.granted: defaultdict[int, int] = defaultdict(int)  # WINDOW increments we sent
        self.requested: list[int] = []
        self.fin_sent: set[int] = set()
        self.counter = 0


class Simulation:
    def __init__(self, sides: tuple[Side, Side]) -> None:
        self.sides = sides
        self.killed: set[int] = set()  # RST or OPEN_FAIL seen: data may be cut short

    def peer(self, side: Side) -> Side:
        return self.sides[1] if side is self.sides[0] else self.sides[0]

    def live(self, side: Side, *states: StreamState) -> list[int]:
        return sorted(sid for sid in side.mux.stream_ids() if side.mux.state(sid) in states)

    def step(self, action: str, side: Side, data) -> None:
        mux = side.mux
        if action == "open":
            if not (mux.goaway_sent or mux.goaway_received):
                _, message = mux.open_stream()
                side.wire.append(message)
        elif action in ("accept", "refuse"):
            waiting = [s for s in side.requested if s in self.live(side, S.OPENING)]
            if waiting:
                sid = data.draw(st.sampled_from(waiting))
                side.requested.remove(sid)
                if action == "accept":
                    side.wire.append(mux.accept_stream(sid))
                else:
                    self.killed.add(sid)
                    side.wire.append(mux.refuse_stream(sid, "refused"))
        elif action == "send":
            ready = [s for s in self.live(side, S.OPEN, S.HALF_CLOSED_REMOTE) if mux.credit(s)]
            if ready:
                sid = data.draw(st.sampled_from(ready))
                size = data.draw(st.integers(1, 3 * self.peer(side).mux.window))
                payload = bytes((side.counter + i) % 251 for i in range(size))
                side.counter += size
                credit = mux.credit(sid)
                messages, n = send_data(mux, sid, payload)
                assert n == min(size, credit)
                assert all(0 < len(m) - HEADER_SIZE <= mux.max_data for m in messages)
                assert sum(len(m) - HEADER_SIZE for m in messages) == n
                side.sent[sid] += payload[:n]
                side.wire.extend(messages)
        elif action == "fin":
            ready = self.live(side, S.OPEN, S.HALF_CLOSED_REMOTE)
            if ready:
                sid = data.draw(st.sampled_from(ready))
                side.fin_sent.add(sid)
                side.wire.append(mux.send_fin(sid))
        elif action == "rst":
            ready = sorted(mux.stream_ids())
            if ready:
                sid = data.draw(st.sampled_from(ready))
                self.killed.add(sid)
                side.wire.append(mux.reset_stream(sid, "reset"))
        elif action == "consume":
            owed = sorted(sid for sid, n in side.unconsumed.items() if n)
            if owed:
                sid = data.draw(st.sampled_from(owed))
                n = data.draw(st.integers(1, side.unconsumed[sid]))
                side.unconsumed[sid] -= n
                self.grant(side, sid, n, flush=data.draw(st.booleans()))
        elif action == "goaway":
            if not mux.goaway_sent:
                side.wire.append(mux.goaway("bye"))
        else:
            assert action == "deliver"
            self.deliver(side)

    def grant(self, side: Side, sid: int, n: int, flush: bool) -> None:
        message = side.mux.grant(sid, n, flush=flush)
        if message is not None:
            side.granted[sid] += parse_frame(message).increment
            side.wire.append(message)

    def deliver(self, sender: Side) -> None:
        """Deliver the oldest message ``sender`` sent to its peer."""
        if not sender.wire:
            return
        receiver = self.peer(sender)
        for event in receiver.mux.receive(sender.wire.popleft()):
            sid = getattr(event, "stream_id", None)
            if isinstance(event, Reply):  # e.g. OPEN_FAIL "going away"
                receiver.wire.append(event.message)
            elif isinstance(event, StreamRequested):
                receiver.requested.append(sid)
            elif isinstance(event, DataReceived):
                got = receiver.received[sid]
                got += event.data
                assert got == sender.sent[sid][: len(got)]  # every byte, in order
                # The sender never exceeded the credit the receiver gave it.
                assert len(got) <= receiver.mux.window + receiver.granted[sid]
                receiver.unconsumed[sid] += len(event.data)
            elif isinstance(event, StreamEnded):
                assert receiver.received[sid] == sender.sent[sid]  # nothing lost before FIN
            elif isinstance(event, StreamRefused | StreamReset):
                self.killed.add(sid)
            else:
                assert isinstance(event, StreamAccepted | CreditGranted | GoAwayReceived), event

    def drain(self) -> None:
        while any(side.wire for side in self.sides):
            for side in self.sides:
                self.deliver(side)


#: Actions and their weights: mostly traffic, some closes; GOAWAY is drawn separately (once
#: sent, no new stream opens, so it would otherwise end most runs early).
ACTIONS = (
    ["open"] * 3
    + ["accept"] * 3
    + ["send"] * 5
    + ["consume"] * 4
    + ["deliver"] * 8
    + ["fin"] * 2
    + ["refuse", "rst"]
)


@settings(max_examples=150, deadline=None)
@given(
    client_window=st.integers(1, 64),
    server_window=st.integers(1, 64),
    max_data=st.integers(1, 16),
    data=st.data(),
)
def test_property_two_muxes_back_to_back_keep_every_byte_in_order(
    client_window: int, server_window: int, max_data: int, data
) -> None:
    client = Side(True, client_window, max_data)
    server = Side(False, server_window, max(1, max_data // 2))
    sim = Simulation((client, server))
    step = st.tuples(st.sampled_from(ACTIONS), st.booleans())
    steps = data.draw(st.lists(step, min_size=40, max_size=160))
    goaway_at = data.draw(st.none() | st.integers(0, len(steps)))
    for i, (action, on_client) in enumerate(steps):
        if i == goaway_at:
            sim.step("goaway", client if on_client else server, data)
        sim.step(action, client if on_client else server, data)
    sim.drain()
    for side in (client, server):  # the applications consume everything left
        for sid, n in list(side.unconsumed.items()):
            sim.grant(side, sid, n, flush=True)
    sim.drain()
    for side in (client, server):
        peer = sim.peer(side)
        for sid in sim.live(side, S.OPEN, S.HALF_CLOSED_REMOTE):
            if sid in sim.live(peer, S.OPEN, S.HALF_CLOSED_LOCAL):
                assert side.mux.credit(sid) == peer.mux.window  # no credit was lost
        for sid, sent in peer.sent.items():
            if sid not in sim.killed:
                assert side.received[sid] == sent
        for sid in sim.killed | (side.fin_sent & peer.fin_sent):
            assert sid not in side.mux  # closed streams are forgotten on both sides


# -- the standalone fuzzer, run in-process -------------------------------------------------------


def load_fuzzer():
    return fuzzing.load_fuzzer("fuzz_wire")


def test_fuzzer_finds_no_unhandled_input() -> None:
    failures = []
    inputs, unhandled, _ = load_fuzzer().run(20_000, seed=20240601, report=failures.append)
    assert inputs == 20_000
    assert failures == []
    assert unhandled == 0


def test_fuzzer_counts_an_unhandled_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    fuzzer = load_fuzzer()

    def broken(message: bytes) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(fuzzer, "check_parse", broken)
    failures = []
    inputs, unhandled, _ = fuzzer.run(50, seed=1, report=failures.append)
    assert (inputs, unhandled) == (50, 50)
    assert failures[0].what == "IndexError: a bug"
    assert fuzzer.main(["--count", "5", "--seed", "3"]) == 1  # a failing run exits non-zero


def _outcome(mux: Mux, message: bytes, fast: bool) -> tuple:
    """What one message does to a Mux: events (DATA as bytes), or the fault."""
    try:
        if fast:
            data = mux.receive_data(message)
            if data is not None:
                return (("data", data[0], bytes(data[1])),)
        events = mux.receive(message)
    except ProtocolViolation as exc:
        return ("fault", str(exc))
    return tuple(
        ("data", e.stream_id, bytes(e.data)) if isinstance(e, DataReceived) else e for e in events
    )


def _state(mux: Mux) -> dict:
    return {
        sid: (m.state, m.recv_window.available, m.send_window.available)
        for sid, m in mux._streams.items()  # the windows too: white-box on purpose
    }


#: DATA for streams in every state (opening, open, half-closed either way; unknown and
#: reserved ids), sized at and around every window below (an off-by-one in the credit
#: check must show)
data_messages = st.builds(
    lambda sid, n: header(FrameType.DATA, sid) + b"d" * n,
    st.sampled_from([0, 1, 2, 3, 5, 7]),
    st.sampled_from([1, 2, 4, 5, 6, 63, 64, 65, 299, 300, 301]) | st.integers(0, 310),
)


@given(st.lists(data_messages | messages, max_size=20), st.sampled_from([1, 5, 64, 300]))
@settings(max_examples=300, deadline=None)
def test_property_receive_data_is_receive_for_the_common_case(batch, window) -> None:
    """The session tries receive_data() first: for any message sequence, two muxes, one
    fed that way and one through receive() alone, answer and end up alike."""
    outcomes = []
    for fast in (True, False):
        client, server = pair(server_window=window)
        for _ in range(3):
            open_stream(client, server)  # streams 1, 3, 5 open on the server
        server.receive(client.send_fin(3))  # stream 3: the peer has finished sending
        server.send_fin(5)  # stream 5: the server has (half-closed, local)
        assert server.open_stream()[0] == 2  # stream 2: asked for, no OPEN_OK yet (opening)
        seen = [_outcome(server, message, fast) for message in batch]
        outcomes.append((seen, _state(server)))  # seen holds the Reply events too
    assert outcomes[0] == outcomes[1]


def test_receive_data_takes_only_data_within_credit() -> None:
    client, server = pair(server_window=10)
    sid = open_stream(client, server)
    assert server.receive_data(header(FrameType.DATA, sid) + b"x" * 10) == (sid, b"x" * 10)
    assert server.receive_data(header(FrameType.DATA, sid) + b"y") is None  # overflow: full path
    assert server.receive_data(header(FrameType.WINDOW, sid) + u32(5)) is None
    assert server.receive_data(header(FrameType.DATA, 99) + b"z") is None  # unknown stream
    assert server.receive_data(header(FrameType.DATA, sid)) is None  # empty: full path
