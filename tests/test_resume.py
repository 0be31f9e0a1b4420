"""Tests for aiowstunnel/resume.py: the replay log and receive counter, the credentials and
their proof and rotation, the resumption frames and headers, all with plain values (no asyncio,
no sockets); and a simulation of two real Muxes that resume across cuts."""

from __future__ import annotations

import hmac
import math
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiowstunnel import mux as muxes
from aiowstunnel import resume, resumeauth, wire
from aiowstunnel.errors import ProtocolViolation, ResumeRefused
from aiowstunnel.resume import (
    ACK_BYTES,
    ACK_EVERY,
    CLOSE_CODES,
    MAX_COUNT,
    Ack,
    ReceiveCounter,
    ReplayLog,
    Resume,
    Resumed,
    ResumeFrameType,
    encode_ack,
    encode_resume,
    encode_resumed,
    encode_window,
    is_sequenced,
    parse_resume_frame,
    parse_window,
    refusal_from_close,
)
from aiowstunnel.resumeauth import (
    CHALLENGE_SIZE,
    HEADER_CHALLENGE,
    HEADER_REFUSED,
    HEADER_RESUMABLE,
    HEADER_RESUME,
    HEADER_SECRET,
    HEADER_SESSION,
    SECRET_SIZE,
    SESSION_ID_SIZE,
    Credentials,
    ServerSecret,
    check_resume,
    check_resumed,
    new_challenge,
    new_session_credentials,
    parse_challenge,
    parse_hex,
    parse_resumable,
    parse_resume_request,
    proof,
    refusal_from_header,
    resume_message,
    rotate,
    verify,
)

from . import fuzzing

SID = bytes(range(16))
SECRET = bytes(range(32, 64))
CHALLENGE = bytes(range(100, 132))


def filled_log(n: int, **limits: int) -> ReplayLog:
    log = ReplayLog(**limits)
    for i in range(1, n + 1):
        assert log.append(b"m%d" % i) == i
    return log


def joined(entries) -> list[bytes]:
    return [bytes(prefix) + bytes(payload) for prefix, payload in entries]


# -- the frames share wire.py's layout and numbers ---------------------------------------------


def test_frame_layout_and_numbers_agree_with_wire() -> None:
    assert resume.HEADER.format == wire.HEADER.format
    assert resume.MAX_WINDOW == wire.MAX_WINDOW
    assert resume.WINDOW_TYPE == wire.FrameType.WINDOW
    assert resume.DATAGRAM_TYPE == wire.FrameType.DATAGRAM
    assert not {int(t) for t in ResumeFrameType} & {int(t) for t in wire.FrameType}


@pytest.mark.parametrize(
    "message, frame",
    [
        (encode_ack(0), Ack(0)),
        (encode_ack(MAX_COUNT), Ack(MAX_COUNT)),
        (encode_resumed(7), Resumed(7)),
        (encode_resume(b"p" * 32, 2**40), Resume(b"p" * 32, 2**40)),
    ],
)
def test_frames_round_trip(message: bytes, frame) -> None:
    assert parse_resume_frame(message) == frame
    assert parse_resume_frame(bytearray(message)) == frame
    assert parse_resume_frame(memoryview(message)) == frame


def test_frame_bytes_are_type_stream_0_payload() -> None:
    assert encode_ack(258) == bytes([9, 0, 0, 0, 0]) + (258).to_bytes(8, "big")
    assert (
        encode_resume(b"\xaa" * 32, 1)
        == bytes([10, 0, 0, 0, 0]) + b"\xaa" * 32 + bytes(7) + b"\x01"
    )
    assert encode_resumed(3) == bytes([11, 0, 0, 0, 0]) + (3).to_bytes(8, "big")


@pytest.mark.parametrize(
    "message, match",
    [
        (b"", "truncated frame: 0 bytes"),
        (bytes([9, 0, 0]), "truncated frame: 3 bytes"),
        (bytes([4, 0, 0, 0, 1]) + bytes(8), "frame type 4 is not ACK, RESUME or RESUMED"),
        (bytes([9, 0, 0, 0, 1]) + bytes(8), "ACK on stream 1, must be 0"),
        (bytes([9, 0, 0, 0, 0]) + bytes(7), "ACK payload is 7 bytes, expected 8"),
        (bytes([11, 0, 0, 0, 0]) + bytes(9), "RESUMED payload is 9 bytes, expected 8"),
        (bytes([10, 0, 0, 0, 0]) + bytes(39), "RESUME payload is 39 bytes, expected 40"),
        (bytes([10, 0, 0, 0, 0]) + bytes(8), "RESUME payload is 8 bytes, expected 40"),
        (bytes([10, 255, 0, 0, 0]) + bytes(40), "RESUME on stream 4278190080, must be 0"),
    ],
)
def test_malformed_frame_is_a_named_session_fault(message: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match) as info:
        parse_resume_frame(message)
    assert info.value.stream_id is None


def test_window_of_a_resumable_session_round_trips() -> None:
    message = encode_window(3, 65536, 12345)
    assert len(message) == wire.HEADER_SIZE + 12
    assert wire.HEADER.unpack_from(message) == (wire.FrameType.WINDOW, 3)
    assert parse_window(message[wire.HEADER_SIZE :]) == (65536, 12345)
    assert parse_window(memoryview(message)[5:]) == (65536, 12345)


@pytest.mark.parametrize(
    "payload, match",
    [
        (bytes(4), "WINDOW payload is 4 bytes, expected 12"),  # the version without a count
        (bytes(13), "WINDOW payload is 13 bytes, expected 12"),
        (bytes(12), "WINDOW window 0 out of range"),
        ((2**31).to_bytes(4, "big") + bytes(8), "WINDOW window 2147483648 out of range"),
    ],
)
def test_malformed_window_is_named(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        parse_window(payload)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: encode_ack(-1), "ACK count -1 out of range"),
        (lambda: encode_resumed(2**64), "RESUMED count .* out of range"),
        (lambda: encode_resume(b"short", 1), "a proof is 32 bytes, got 5"),
        (lambda: encode_window(0, 1, 0), "WINDOW stream id 0 out of range"),
        (lambda: encode_window(1, 0, 0), "WINDOW increment 0 out of range"),
        (lambda: encode_window(1, 1, 2**64), "WINDOW count .* out of range"),
    ],
)
def test_local_misuse_of_the_encoders_is_a_value_error(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_only_the_frames_that_restate_counts_are_unsequenced() -> None:
    assert not is_sequenced(encode_ack(1))
    assert not is_sequenced(encode_resumed(1))
    assert not is_sequenced(encode_resume(bytes(32), 1))
    for kind in wire.FrameType:  # a DATAGRAM is lossy by contract: never replayed
        assert is_sequenced(bytes([kind, 0, 0, 0, 1])) == (kind != wire.FrameType.DATAGRAM)
    assert is_sequenced(encode_window(1, 1, 1))


frame_like = st.binary(max_size=60) | st.builds(
    lambda code, sid, payload: bytes([code]) + sid.to_bytes(4, "big") + payload,
    st.integers(0, 12) | st.just(255),
    st.sampled_from([0, 1, 0xFFFFFFFF]),
    st.binary(max_size=48) | st.sampled_from([bytes(8), bytes(40), bytes(12), bytes(4)]),
)


@given(frame_like)
def test_property_frame_parsers_raise_only_protocol_violations(message: bytes) -> None:
    try:
        frame = parse_resume_frame(message)
    except ProtocolViolation as exc:
        assert exc.stream_id is None
    else:
        assert isinstance(frame, Ack | Resume | Resumed)
    try:
        increment, count = parse_window(message[5:])
    except ProtocolViolation:
        pass
    else:
        assert 0 < increment <= wire.MAX_WINDOW and 0 <= count <= MAX_COUNT


@given(frame_like)
def test_property_first_message_checks_raise_only_refusals(message: bytes) -> None:
    for check in (lambda m: check_resume(m, ServerSecret(SECRET), SID, CHALLENGE), check_resumed):
        try:
            check(message)
        except ResumeRefused as exc:
            assert exc.code in ("malformed", "bad_proof")


# -- the replay log --------------------------------------------------------------------------


def test_append_numbers_messages_and_keeps_them_by_reference() -> None:
    log = ReplayLog()
    header, payload = b"\x04\x00\x00\x00\x01", memoryview(b"payload")
    assert log.append(header, payload) == 1
    assert log.append(b"second") == 2
    (first_prefix, first_payload), second = log.replay(0)
    assert first_prefix is header and first_payload is payload  # no copy
    assert second == (b"second", b"")
    assert (log.sent, log.confirmed, log.messages_held, log.bytes_held) == (2, 0, 2, 18)


def test_confirm_forgets_what_the_peer_received() -> None:
    log = filled_log(10)
    assert log.confirm(4) == 4
    assert (log.confirmed, log.messages_held, log.bytes_held) == (4, 6, 2 * 5 + 3)
    assert log.confirm(10) == 6
    assert (log.messages_held, log.bytes_held) == (0, 0)


def test_confirms_never_go_back_and_a_stale_count_changes_nothing() -> None:
    """A WINDOW resent at a resume carries the count of its first sending: stale, harmless."""
    log = filled_log(10)
    log.confirm(6)
    assert log.confirm(3) == 0
    assert log.confirm(6) == 0
    assert (log.confirmed, log.messages_held) == (6, 4)
    assert joined(log.replay(6)) == [b"m7", b"m8", b"m9", b"m10"]


def test_confirm_beyond_what_was_sent_is_a_named_session_fault() -> None:
    log = filled_log(100)
    with pytest.raises(ProtocolViolation, match="confirmed 101 messages received, only 100"):
        log.confirm(101)
    assert (log.confirmed, log.messages_held) == (0, 100)  # nothing changed


@pytest.mark.parametrize("claimed", range(0, 6))
def test_replay_is_exactly_the_messages_after_the_claim(claimed: int) -> None:
    log = filled_log(5)
    assert joined(log.replay(claimed)) == [b"m%d" % i for i in range(claimed + 1, 6)]
    assert log.confirmed == claimed  # the claim confirms


def test_replayed_messages_stay_until_confirmed_for_a_second_cut() -> None:
    log = filled_log(5)
    assert joined(log.replay(2)) == [b"m3", b"m4", b"m5"]
    assert joined(log.replay(3)) == [b"m4", b"m5"]  # the new WebSocket broke after m3
    log.append(b"m6")
    assert joined(log.replay(3)) == [b"m4", b"m5", b"m6"]


def test_claim_beyond_what_was_sent_is_refused_and_sends_nothing() -> None:
    log = filled_log(100)
    with pytest.raises(ResumeRefused, match="claimed 120 messages received, only 100") as info:
        log.replay(120)
    assert info.value.code == "bad_claim"
    assert (log.confirmed, log.messages_held) == (0, 100)


def test_claim_below_what_was_confirmed_is_refused() -> None:
    log = filled_log(10)
    log.confirm(8)
    with pytest.raises(
        ResumeRefused, match="claimed 5 messages received, 8 were confirmed"
    ) as info:
        log.replay(5)
    assert info.value.code == "bad_claim"
    assert (log.confirmed, log.messages_held) == (8, 2)


def test_log_is_full_at_its_limits_and_refuses_past_five_quarters() -> None:
    log = ReplayLog(max_bytes=100, max_messages=1000)
    for _ in range(9):
        log.append(b"x" * 10)
    assert not log.full
    log.append(b"x" * 10)
    assert log.full  # the session stops reading its local sockets here
    log.append(b"x" * 25)  # control frames still go out, up to 125 bytes
    with pytest.raises(ResumeRefused, match=r"11 messages \(125 bytes\) unconfirmed") as info:
        log.append(b"x")
    assert info.value.code == "log_overflow"
    assert (log.sent, log.bytes_held) == (11, 125)  # nothing logged
    log.confirm(4)  # 85 bytes: still full, until 3/4 of the limit is left
    assert log.full
    log.confirm(5)
    assert not log.full  # 75 bytes: the streams read again
    log.append(b"x")


def test_log_message_count_limit() -> None:
    log = filled_log(8, max_messages=8)
    assert log.full
    log.append(b"9")
    log.append(b"10")
    with pytest.raises(ResumeRefused, match="limit is 10 "):
        log.append(b"11")


def test_log_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="log limits must be positive"):
        ReplayLog(max_bytes=0)
    with pytest.raises(ValueError, match="log limits must be positive"):
        ReplayLog(min_bytes=0)


# -- the log's limit follows the path (resume.paced_limit) ----------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


KiB = 1024


def paced_log(round_trip: float, clock: Clock) -> ReplayLog:
    return ReplayLog(
        max_bytes=800 * KiB, min_bytes=200 * KiB, clock=clock, path_delay=lambda: round_trip
    )


def fill_and_confirm(log: ReplayLog, clock: Clock, delay: float) -> None:
    """Send until the log is full (the first message timed), then confirm it all
    ``delay`` seconds later."""
    while not log.full:
        log.append(b"x" * (10 * KiB))
    clock.now += delay
    log.confirm(log.sent)


def test_a_long_path_lets_the_limit_double_per_round_trip_up_to_the_ceiling() -> None:
    clock = Clock()
    log = paced_log(0.1, clock)  # 100 ms, and confirmations come back at that pace
    assert log.limit == 200 * KiB  # where it starts: the floor
    limits = []
    for _ in range(4):
        fill_and_confirm(log, clock, 0.12)
        limits.append(log.limit // KiB)
    assert limits == [400, 800, 800, 800]


def test_confirmations_that_wait_in_buffers_bring_the_limit_down_to_the_floor() -> None:
    clock = Clock()
    log = paced_log(0.1, clock)
    for _ in range(2):
        fill_and_confirm(log, clock, 0.1)
    assert log.limit == 800 * KiB
    limits = []
    for _ in range(6):  # now each waits a second: the bytes queue on the way
        fill_and_confirm(log, clock, 1.0)
        limits.append(log.limit // KiB)
    assert limits == [600, 450, 337, 253, 200, 200]


def test_the_limit_stays_without_a_round_trip_or_without_the_streams_held_back() -> None:
    clock = Clock()
    unmeasured = ReplayLog(max_bytes=800 * KiB, min_bytes=200 * KiB, clock=clock)
    fill_and_confirm(unmeasured, clock, 0.1)
    assert unmeasured.limit == 200 * KiB  # no pong yet: nothing to compare with
    log = paced_log(0.1, clock)
    log.append(b"x")  # an interactive stream: the log is never full
    clock.now += 0.1
    log.confirm(log.sent)
    assert log.limit == 200 * KiB


def test_a_resume_starts_the_limit_again_from_the_floor() -> None:
    clock = Clock()
    log = paced_log(0.1, clock)
    for _ in range(2):
        fill_and_confirm(log, clock, 0.1)
    log.append(b"y")
    assert log.limit == 800 * KiB
    assert joined(log.replay(log.sent - 1)) == [b"y"]
    assert (log.limit, log.full) == (200 * KiB, False)


def test_a_limit_lowered_below_what_is_held_makes_the_log_full() -> None:
    clock = Clock()
    log = paced_log(0.1, clock)
    for _ in range(2):
        fill_and_confirm(log, clock, 0.1)
    assert log.limit == 800 * KiB
    for _ in range(70):  # 700 KiB held, the first message timed: not full at 800 KiB
        log.append(b"x" * (10 * KiB))
    assert not log.full
    clock.now += 1.0
    log.confirm(log.sent - 69)  # the timed one, late: the limit comes down to 600 KiB
    assert (log.limit, log.bytes_held, log.full) == (600 * KiB, 690 * KiB, True)


def test_a_full_message_count_does_not_raise_the_byte_limit() -> None:
    clock = Clock()
    log = ReplayLog(
        max_bytes=800 * KiB, max_messages=8, min_bytes=200 * KiB, clock=clock,
        path_delay=lambda: 0.1,
    )  # fmt: skip
    while not log.full:
        log.append(b"x")
    clock.now += 0.1
    log.confirm(log.sent)
    assert log.limit == 200 * KiB  # full by count, at the path's pace: bytes stay


def test_paced_limit_decisions() -> None:
    args = {"floor": 100, "ceiling": 1000}
    assert resume.paced_limit(200, 0.14, 0.1, True, **args) == 400  # at the path's pace
    assert resume.paced_limit(800, 0.14, 0.1, True, **args) == 1000  # the ceiling
    assert resume.paced_limit(200, 0.2, 0.1, True, **args) == 200  # between: stays
    assert resume.paced_limit(200, 0.14, 0.1, False, **args) == 200  # nothing held back
    assert resume.paced_limit(400, 0.31, 0.1, True, **args) == 300  # queued on the way
    assert resume.paced_limit(120, 0.31, 0.1, True, **args) == 100  # not below the floor
    assert resume.paced_limit(200, 5.0, math.inf, True, **args) == 200  # no round trip


actions = st.lists(
    st.tuples(st.sampled_from(["send", "confirm", "cut"]), st.integers(0, 10)), max_size=80
)


@given(actions)
def test_property_replay_after_any_sends_confirms_and_cuts(steps) -> None:
    """For any history, replay(claimed) is exactly messages claimed+1..sent, in order."""
    log = ReplayLog()
    sent: list[bytes] = []
    delivered = 0  # what an honest peer has received: between confirmed and sent
    for action, n in steps:
        if action == "send":
            for _ in range(n):
                sent.append(b"%d" % len(sent))
                assert log.append(sent[-1]) == len(sent)
        elif action == "confirm":
            delivered = min(len(sent), delivered + n)
            log.confirm(delivered - n % 2)  # now and then a stale count
        else:
            delivered = min(len(sent), delivered + n)
            assert joined(log.replay(delivered)) == sent[delivered:]
            assert log.confirmed == delivered
        assert log.messages_held == len(sent) - log.confirmed
        assert log.bytes_held == sum(map(len, sent[log.confirmed :]))


# -- the receive counter ----------------------------------------------------------------------


def test_ack_is_due_after_ack_every_messages() -> None:
    counter = ReceiveCounter()
    for _ in range(ACK_EVERY - 1):
        assert counter.received(10) is False
    assert counter.received(10) is True and counter.ack_due
    assert parse_resume_frame(counter.ack()) == Ack(ACK_EVERY)
    assert not counter.ack_due and counter.unstated == 0


def test_ack_is_due_after_ack_bytes() -> None:
    counter = ReceiveCounter()
    assert counter.received(ACK_BYTES - 1) is False
    assert counter.received(1) is True
    assert counter.state() == 2


def test_stating_the_count_in_a_window_postpones_the_ack() -> None:
    counter = ReceiveCounter(ack_every=3, ack_bytes=1000)
    counter.received(1)
    counter.received(1)
    assert counter.unstated == 2
    assert encode_window(1, 100, counter.state()) == encode_window(1, 100, 2)
    counter.received(1)
    counter.received(1)
    assert not counter.ack_due
    assert counter.received(1)
    assert counter.count == 5


def test_ack_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ACK thresholds must be positive"):
        ReceiveCounter(ack_every=0)


# -- credentials, proof, rotation -------------------------------------------------------------


def test_new_credentials_are_random_and_of_their_sizes() -> None:
    a, b = new_session_credentials(), new_session_credentials()
    assert (len(a.session_id), len(a.secret)) == (SESSION_ID_SIZE, SECRET_SIZE)
    assert a.session_id != b.session_id and a.secret != b.secret
    assert len(new_challenge()) == CHALLENGE_SIZE and new_challenge() != new_challenge()


def test_credentials_round_trip_through_the_101_headers() -> None:
    credentials = Credentials(SID, SECRET)
    headers = dict(credentials.headers())
    assert headers == {HEADER_SESSION: SID.hex(), HEADER_SECRET: SECRET.hex()}
    assert Credentials.from_headers(headers) == credentials
    assert Credentials.from_headers({}) is None  # the server made no resumable session


def test_credentials_never_show_their_secret() -> None:
    text = repr(Credentials(SID, SECRET)) + repr(ServerSecret(SECRET))
    assert SECRET.hex() not in text and "hidden" in text
    assert SID.hex() in text


@pytest.mark.parametrize(
    "headers, match",
    [
        ({HEADER_SESSION: SID.hex()}, f"without its {HEADER_SECRET} header"),
        ({HEADER_SECRET: SECRET.hex()}, f"without its {HEADER_SESSION} header"),
        (
            {HEADER_SESSION: SID.hex() + "00", HEADER_SECRET: SECRET.hex()},
            f"{HEADER_SESSION} is 34 characters, expected 32 hex digits",
        ),
        (
            {HEADER_SESSION: SID.hex(), HEADER_SECRET: SECRET.hex().upper()},
            f"{HEADER_SECRET} is not lowercase hex",
        ),
    ],
)
def test_malformed_credential_headers_are_named(headers: dict, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        Credentials.from_headers(headers)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0" * 31,
        "0" * 33,
        "g" * 32,
        " " + "0" * 31,
        "0" * 30 + " 0",
        "\u0660" * 32,
        "0x" + "0" * 30,
    ],
)
def test_hex_headers_take_exactly_lowercase_hex(text: str) -> None:
    with pytest.raises(ProtocolViolation, match="X-Test"):
        parse_hex(text, 16, "X-Test")


@given(
    st.dictionaries(
        st.sampled_from([HEADER_SESSION, HEADER_SECRET, HEADER_RESUME, HEADER_CHALLENGE]),
        st.text(max_size=70) | st.sampled_from([SID.hex(), SECRET.hex()]),
    ),
    st.none() | st.text(max_size=3),
)
def test_property_header_parsers_raise_only_protocol_violations(headers, resumable) -> None:
    for parse in (Credentials.from_headers, parse_resume_request, parse_challenge):
        try:
            parse(headers)
        except ProtocolViolation as exc:
            assert exc.stream_id is None
    try:
        parse_resumable(resumable)
    except ProtocolViolation:
        assert resumable not in (None, "0", "1")


def test_resume_request_and_challenge_headers() -> None:
    assert parse_resume_request({HEADER_RESUME: SID.hex()}) == SID
    assert parse_resume_request({}) is None
    assert parse_challenge({HEADER_CHALLENGE: CHALLENGE.hex()}) == CHALLENGE
    with pytest.raises(ProtocolViolation, match=f"without a {HEADER_CHALLENGE} header"):
        parse_challenge({})
    with pytest.raises(ProtocolViolation, match=HEADER_RESUME):
        parse_resume_request({HEADER_RESUME: "nope"})


@pytest.mark.parametrize("text, wanted", [(None, False), ("0", False), ("1", True)])
def test_resumable_header(text: str | None, wanted: bool) -> None:
    assert parse_resumable(text) is wanted


@pytest.mark.parametrize("text", ["", "yes", "true", " 1", "01", "2"])
def test_resumable_header_takes_only_0_or_1(text: str) -> None:
    with pytest.raises(ProtocolViolation, match=f"{HEADER_RESUMABLE} is .*, expected 0 or 1"):
        parse_resumable(text)


def test_proof_is_the_documented_hmac() -> None:
    expected = hmac.new(
        SECRET, b"aiowstunnel resume" + SID + CHALLENGE + (5).to_bytes(8, "big"), "sha256"
    ).digest()
    assert proof(SECRET, SID, CHALLENGE, 5) == expected
    expected = hmac.new(SECRET, b"aiowstunnel rotate" + CHALLENGE, "sha256").digest()
    assert rotate(SECRET, CHALLENGE) == expected


def test_verify_fails_for_any_other_secret_session_challenge_or_count() -> None:
    good = proof(SECRET, SID, CHALLENGE, 5)
    assert verify(SECRET, SID, CHALLENGE, 5, good)
    other = bytes(32)
    assert not verify(other, SID, CHALLENGE, 5, good)
    assert not verify(SECRET, other[:16], CHALLENGE, 5, good)
    assert not verify(SECRET, SID, other, 5, good)
    assert not verify(SECRET, SID, CHALLENGE, 6, good)  # the count is covered
    assert not verify(SECRET, SID, CHALLENGE, 5, good[:-1])


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def compare_digest(a, b) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(resumeauth.hmac, "compare_digest", compare_digest)
    good = proof(SECRET, SID, CHALLENGE, 5)
    assert check_resume(encode_resume(good, 5), ServerSecret(SECRET), SID, CHALLENGE) == 5
    assert calls == [(good, good)]


def test_a_resume_round_trip_rotates_both_secrets() -> None:
    client = Credentials(SID, SECRET)
    server = ServerSecret(SECRET)
    challenge = new_challenge()
    assert check_resume(resume_message(client, challenge, 42), server, SID, challenge) == 42
    assert check_resumed(encode_resumed(17)) == 17
    client = client.rotated(challenge)
    server.confirmed()  # the client's first message after RESUMED arrived
    assert client.secret == rotate(SECRET, challenge) != SECRET
    # the next resume works with the rotated secret, and no longer with the first one
    challenge2 = new_challenge()
    assert check_resume(resume_message(client, challenge2, 43), server, SID, challenge2) == 43
    old = Credentials(SID, SECRET)
    with pytest.raises(ResumeRefused, match="bad_proof"):
        check_resume(
            resume_message(old, challenge2, 43), ServerSecret(client.secret), SID, challenge2
        )


def test_a_replayed_resume_is_refused() -> None:
    """Captured RESUME bytes sent again meet a new challenge, and a rotated secret."""
    client, server = Credentials(SID, SECRET), ServerSecret(SECRET)
    captured = resume_message(client, CHALLENGE, 3)
    check_resume(captured, server, SID, CHALLENGE)
    server.confirmed()
    with pytest.raises(ResumeRefused, match="bad_proof") as info:
        check_resume(captured, server, SID, new_challenge())
    assert info.value.code == "bad_proof"
    with pytest.raises(ResumeRefused, match="bad_proof"):  # even with the same challenge
        check_resume(captured, server, SID, CHALLENGE)


def test_a_cut_before_resumed_arrives_loses_nothing() -> None:
    """The server rotated and sent RESUMED; the client never got it and kept its secret."""
    client, server = Credentials(SID, SECRET), ServerSecret(SECRET)
    check_resume(resume_message(client, CHALLENGE, 1), server, SID, CHALLENGE)
    challenge2 = new_challenge()
    check_resume(resume_message(client, challenge2, 1), server, SID, challenge2)
    client = client.rotated(challenge2)  # this time RESUMED arrived
    server.confirmed()
    challenge3 = new_challenge()
    assert check_resume(resume_message(client, challenge3, 1), server, SID, challenge3) == 1


def test_a_cut_after_the_client_rotated_loses_nothing() -> None:
    """The client got RESUMED and rotated, but its next message never reached the server."""
    client, server = Credentials(SID, SECRET), ServerSecret(SECRET)
    check_resume(resume_message(client, CHALLENGE, 1), server, SID, CHALLENGE)
    client = client.rotated(CHALLENGE)
    challenge2 = new_challenge()
    check_resume(resume_message(client, challenge2, 1), server, SID, challenge2)
    client = client.rotated(challenge2)
    server.confirmed()
    with pytest.raises(ResumeRefused, match="bad_proof"):  # the pre-rotation secret is gone
        check_resume(resume_message(Credentials(SID, SECRET), CHALLENGE, 1), server, SID, CHALLENGE)


@pytest.mark.parametrize(
    "first, match",
    [
        (encode_ack(1), "malformed: first message is ACK"),
        (encode_resumed(1), "malformed: first message is RESUMED"),
        (wire.Fin(1).serialize(), "malformed: first message is not a RESUME: frame type 6"),
        (encode_resume(bytes(32), 1)[:-1], "malformed: .*RESUME payload is 39 bytes"),
        (encode_resume(bytes(32), 1), "bad_proof"),
    ],
)
def test_server_refuses_a_bad_first_message(first: bytes, match: str) -> None:
    with pytest.raises(ResumeRefused, match=match):
        check_resume(first, ServerSecret(SECRET), SID, CHALLENGE)


@pytest.mark.parametrize(
    "first, match",
    [
        (encode_ack(1), "malformed: first message is ACK"),
        (b"\x0b", "malformed: first message is not RESUMED: truncated"),
    ],
)
def test_client_refuses_a_bad_first_message(first: bytes, match: str) -> None:
    with pytest.raises(ResumeRefused, match=match):
        check_resumed(first)


def test_server_secret_must_have_its_size() -> None:
    with pytest.raises(ValueError, match="a resume secret is 32 bytes"):
        ServerSecret(b"short")


# -- refusals ---------------------------------------------------------------------------------


def test_refusal_codes_are_a_fixed_set_with_stable_close_codes() -> None:
    assert CLOSE_CODES == {
        "unknown_session": 4001,
        "wrong_client": 4002,
        "bad_proof": 4003,
        "malformed": 4004,
        "bad_claim": 4005,
        "log_overflow": 4006,
        "expired": 4007,
        "limit": 4008,
    }
    with pytest.raises(ValueError, match="unknown resume refusal code 'nope'"):
        ResumeRefused("nope")


@pytest.mark.parametrize("code", ResumeRefused.CODES)
def test_refusal_round_trips_through_a_close_frame(code: str) -> None:
    sent = ResumeRefused(code, "the detail")
    got = refusal_from_close(CLOSE_CODES[code], str(sent))
    assert (got.code, got.detail, str(got)) == (code, "the detail", f"{code}: the detail")


def test_other_close_codes_are_not_refusals() -> None:
    assert refusal_from_close(1000, "bye") is None
    assert refusal_from_close(4000, "") is None
    assert refusal_from_close(4003, "odd").detail == "odd"


def test_refusal_header() -> None:
    got = refusal_from_header("unknown_session", "no such session")
    assert (got.code, got.detail) == ("unknown_session", "no such session")
    with pytest.raises(ProtocolViolation, match=f"{HEADER_REFUSED} is 'gone'"):
        refusal_from_header("gone")


# -- two real Muxes resume across cuts -------------------------------------------------------

WINDOW = 64  # small windows and frames: many WINDOWs, many cuts in few steps


@dataclass
class Side:
    """One end of a simulated session: its Mux, log and counter, and the wire to the peer."""

    mux: muxes.Mux
    log: ReplayLog = field(default_factory=ReplayLog)
    counter: ReceiveCounter = field(default_factory=lambda: ReceiveCounter(3, 100))
    wire: deque = field(default_factory=deque)  # messages in flight to the peer
    sent: dict = field(default_factory=dict)  # stream -> bytes written to the stream
    got: dict = field(default_factory=dict)  # stream -> bytes received
    unconsumed: dict = field(default_factory=dict)  # stream -> received, not yet granted
    fins: set = field(default_factory=set)  # streams this side sent FIN on

    def send(self, message: bytes) -> None:
        if message[0] == wire.FrameType.WINDOW:  # as wire.py will: the count rides along
            sid, (increment,) = (
                wire.HEADER.unpack_from(message)[1],
                wire._U32.unpack_from(message, 5),
            )
            message = encode_window(sid, increment, self.counter.state())
        self.log.append(message)
        self.wire.append(message)

    def receive(self, message: bytes) -> None:
        if not is_sequenced(message):
            self.log.confirm(parse_resume_frame(message).received)
            return
        self.counter.received(len(message))
        if message[0] == wire.FrameType.WINDOW:
            increment, count = parse_window(memoryview(message)[5:])
            self.log.confirm(count)
            message = message[:5] + increment.to_bytes(4, "big")
        for event in self.mux.receive(message):
            if isinstance(event, muxes.StreamRequested):
                self.send(self.mux.accept_stream(event.stream_id))
            elif isinstance(event, muxes.DataReceived):
                self.got[event.stream_id] = self.got.get(event.stream_id, b"") + bytes(event.data)
                self.unconsumed[event.stream_id] = self.unconsumed.get(event.stream_id, 0) + len(
                    event.data
                )
            else:  # no Reply either: an honest peer earns no answer
                assert not isinstance(
                    event, muxes.StreamViolated | muxes.StreamReset | muxes.Reply
                ), event
        if self.counter.ack_due:
            self.wire.append(self.counter.ack())  # unsequenced: not logged

    def unconfirmed_data(self) -> dict[int, int]:
        held: dict[int, int] = {}
        for prefix, _ in self.log.replay(self.log.confirmed):
            if prefix[0] == wire.FrameType.DATA:
                sid = wire.HEADER.unpack_from(prefix)[1]
                held[sid] = held.get(sid, 0) + len(prefix) - wire.HEADER_SIZE
        return held


def cut_and_resume(client: Side, server: Side) -> None:
    """The WebSocket breaks: what was in flight is lost; RESUME / RESUMED; replay."""
    for side in (client, server):
        side.wire.clear()
    challenge = new_challenge()
    credentials = Credentials(SID, SECRET)
    claimed = check_resume(
        resume_message(credentials, challenge, client.counter.state()),
        ServerSecret(SECRET),
        SID,
        challenge,
    )
    replay = server.log.replay(claimed)
    server_count = check_resumed(encode_resumed(server.counter.state()))
    server.wire.extend(joined(replay))
    client.wire.extend(joined(client.log.replay(server_count)))


def step(client: Side, server: Side, op: int, n: int) -> None:
    sides = (client, server)
    side, peer = sides[n % 2], sides[1 - n % 2]
    if op == 0 and len(client.mux) < 4:
        sid, message = client.mux.open_stream("192.0.2.1:1")
        client.send(message)
    elif op == 1 and len(side.mux):  # write to a stream, as far as credit allows
        sid = sorted(side.mux.stream_ids())[n % len(side.mux)]
        if side.mux.credit(sid):
            data = bytes([n % 256]) * (1 + n % 40)
            taken = side.mux.reserve_data(sid, len(data))  # as the session sends
            side.sent[sid] = side.sent.get(sid, b"") + data[:taken]
            for head, chunk in wire.split_data(sid, memoryview(data)[:taken], side.mux.max_data):
                side.send(head + bytes(chunk))
    elif op == 2 and side.unconsumed:  # the local socket took the bytes: return credit
        for sid, owed in list(side.unconsumed.items()):
            side.unconsumed[sid] = 0
            if owed:
                grant = side.mux.grant(sid, owed, flush=n % 3 == 0)
                if grant:
                    side.send(grant)
    elif op in (3, 4, 5) and side.wire:  # the network delivers
        for _ in range(1 + n % 5):
            if side.wire:
                peer.receive(side.wire.popleft())
    elif op == 6:
        cut_and_resume(client, server)
    elif op == 7 and len(side.mux):  # the local socket half-closed: FIN
        sid = sorted(side.mux.stream_ids())[n % len(side.mux)]
        if side.mux.state(sid) in (
            wire.StreamState.OPEN,
            wire.StreamState.HALF_CLOSED_REMOTE,
        ):
            side.send(side.mux.send_fin(sid))
            side.fins.add(sid)
    for s in sides:
        for sid, held in s.unconfirmed_data().items():
            assert held <= WINDOW, f"{held} unconfirmed bytes on stream {sid}, window {WINDOW}"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1000)), max_size=150))
def test_property_muxes_resume_across_cuts_with_every_byte_once_in_order(steps) -> None:
    client = Side(muxes.Mux(True, window=WINDOW, max_data=16))
    server = Side(muxes.Mux(False, window=WINDOW, max_data=16))
    for op, n in steps:
        step(client, server, op, n)
    for _ in range(10_000):  # drain: deliver and consume everything, cut now and then
        if not (client.wire or server.wire or any(client.unconsumed.values())) and not any(
            server.unconsumed.values()
        ):
            break
        for side, peer in ((client, server), (server, client)):
            while side.wire:
                peer.receive(side.wire.popleft())
            step(client, server, 2, 0 if side is client else 1)
    for side, peer in ((client, server), (server, client)):
        for sid, data in side.sent.items():
            assert peer.got.get(sid, b"") == data, f"stream {sid}"
        for sid in side.fins:  # half-closed stays half-closed, closed is closed, on both ends
            closed = sid in peer.fins
            assert (sid not in side.mux) == closed == (sid not in peer.mux)
            if not closed:
                assert peer.mux.state(sid) is wire.StreamState.HALF_CLOSED_REMOTE


# -- the fuzzer -------------------------------------------------------------------------------


def load_fuzzer():
    return fuzzing.load_fuzzer("fuzz_resume")


def test_fuzzer_finds_no_unhandled_input() -> None:
    failures = []
    inputs, unhandled, _ = load_fuzzer().run(20_000, seed=20240614, report=failures.append)
    assert (inputs, unhandled, failures) == (20_000, 0, [])


def test_fuzzer_counts_an_unhandled_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    fuzzer = load_fuzzer()

    def broken(target, message: bytes) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(fuzzer, "check_frame", broken)
    failures = []
    inputs, unhandled, _ = fuzzer.run(50, seed=1, report=failures.append)
    assert (inputs, unhandled) == (50, 50)
    assert failures[0].what == "IndexError: a bug"
    assert fuzzer.main(["--count", "5", "--seed", "3"]) == 1  # a failing run exits non-zero
