"""Fuzz the wire codec and the Mux with random and mutated messages (not collected by pytest).

Usage: ``.venv/bin/python tests/fuzz_wire.py --count 1000000 [--seed 1]``

Each input goes to :func:`parse_frame` and to a :class:`Mux` (client or server side, fresh or
mid-session, kept across inputs so that later inputs meet the state earlier ones left). Half
the targets are resumable sessions (protocol.md, Resumption): there, as ``Session.link_message``
does, each input first goes through a :class:`Resumption` (the 12-byte WINDOW with its
received count, ACK, and RESUME / RESUMED, which must be refused outside a resume), then the
Mux gets what it passes on. An input is *unhandled* when anything raises but
``ProtocolViolation``, when ``Mux.receive`` lets a stream-level violation out (it must answer
those with an RST), when a stream fault comes back without its RST / OPEN_FAIL queued, when an
RST is answered, when a message the Mux queued does not itself parse, or when a count confirms
what was never sent, changes the replay log when refused, or does not confirm exactly what it
says, or when a DATAGRAM the fast path's check (``Mux.datagram_ok``, what
udp.FlowTable.receive takes without ``receive()``) passes is anything but one delivered datagram
in ``receive()``. The run prints ``inputs=N unhandled=U seconds=S`` and exits 1 if U > 0.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fuzzing import Failure, cli, printer  # tests/fuzzing.py

from aiowstunnel.errors import ProtocolViolation
from aiowstunnel.events import DatagramReceived, DataReceived, Event, Reply, StreamViolated
from aiowstunnel.mux import Mux
from aiowstunnel.resume import (
    encode_ack,
    encode_resume,
    encode_resumed,
    encode_window,
    parse_resume_frame,
)
from aiowstunnel.resumption import Resumption
from aiowstunnel.wire import (
    DEFAULT_WINDOW,
    HEADER,
    MAX_DATAGRAM,
    MAX_REASON,
    MAX_WINDOW,
    Data,
    Datagram,
    Fin,
    FlowOpen,
    FrameType,
    GoAway,
    Open,
    OpenFail,
    OpenOk,
    Rst,
    StreamState,
    WindowUpdate,
    parse_frame,
    split_data,
)

#: Windows for the target Mux: tiny ones make overflow and stalls easy to reach.
WINDOWS = (1, 3, 64, 1000, DEFAULT_WINDOW, MAX_WINDOW)
#: Inputs fed to one Mux before a fresh one replaces it (and at once after a session fault).
SESSION_INPUTS = 400
INTERESTING_U32 = (0, 1, 2, 3, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
INTERESTING_U64 = (0, 1, 2**32, 2**63, 2**64 - 1)
INTERESTING_BYTES = (0, 1, 0x7F, 0x80, 0xFE, 0xFF)
#: Payload lengths around the limits (MAX_REASON) and the 4-byte window fields.
INTERESTING_LENGTHS = (0, 1, 3, 4, 5, MAX_REASON - 1, MAX_REASON, MAX_REASON + 1)
SEND_STATES = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
RECEIVE_STATES = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)


@dataclass
class Target:
    """One Mux under fuzz, with what an honest peer would know about it."""

    mux: Mux
    peer_last: int = 0  # highest stream id the (fuzzing) peer has opened
    unconsumed: dict[int, int] = field(default_factory=dict)  # received, not granted back
    inputs: int = 0
    fast: bool = False  # as the session does: Mux.receive_data first, receive() for the rest
    #: a resumable session's counters and replay log, in front of the Mux; None: not one
    resumption: Resumption | None = None


def new_target(rng: random.Random) -> Target:
    mux = Mux(
        client_side=rng.random() < 0.5,
        window=rng.choice(WINDOWS),
        max_data=rng.choice((1, 7, 1024)),
        max_streams=rng.choice((1, 4, 64)),
    )
    target = Target(mux, fast=rng.random() < 0.5)
    if rng.random() < 0.5:
        target.resumption = resumption = Resumption(bytes(16), 60.0)
        for _ in range(rng.randrange(0, 50)):  # what this side sent, unconfirmed
            resumption.sent(b"\x03\x00\x00\x00\x01")
    if rng.random() < 0.5:  # mid-session: some streams in every state before the fuzz starts
        for _ in range(rng.randrange(1, 12)):
            local_step(target, rng)
            honest_step(target, rng)
    return target


def ours(mux: Mux, stream_id: int) -> bool:
    """True for an id of our parity (protocol.md: the client's ids are odd)."""
    return (stream_id % 2 == 1) == mux.client_side


def peer_next(target: Target) -> int:
    """The id the peer would use for its next OPEN."""
    if target.peer_last:
        return min(target.peer_last + 2, 0xFFFFFFFF)  # past the last id: a reuse, still a frame
    return 2 if target.mux.client_side else 1


def stream_ids(target: Target, rng: random.Random) -> int:
    """A stream id likely to reach deep paths: live, next, closed, reserved or extreme."""
    live = target.mux.stream_ids()
    roll = rng.random()
    if live and roll < 0.55:
        return rng.choice(live)
    if roll < 0.7:
        return peer_next(target)
    if roll < 0.8:
        return max(target.peer_last, 1)
    return rng.choice((0, 1, 2, 3, 4, 0xFFFFFFFF, 0xFFFFFFFE, rng.getrandbits(32)))


def count(target: Target, rng: random.Random) -> int:
    """A received count around the resumable target's own numbers."""
    assert target.resumption is not None
    log = target.resumption.log
    return rng.choice(
        (log.confirmed, log.sent, log.sent, rng.randrange(0, log.sent + 1),
         rng.randrange(log.confirmed, log.sent + 1), max(log.confirmed - 1, 0),
         log.sent + 1, rng.choice(INTERESTING_U64))
    )  # fmt: skip


def seed_frame(target: Target, rng: random.Random) -> bytes:
    """A well-formed frame, aimed at the target's current streams (a resumable target's
    WINDOW carries a count, and it also gets ACK, RESUME and RESUMED)."""
    sid = stream_ids(target, rng)
    if target.resumption is not None and rng.random() < 0.4:
        kind = rng.choices(range(4), (5, 3, 1, 1))[0]  # RESUME / RESUMED: always refused
        if kind == 0:
            increment = rng.choice((1, 100, MAX_WINDOW))
            return encode_window(sid or 1, increment, count(target, rng))
        if kind == 1:
            return encode_ack(count(target, rng))
        if kind == 2:
            return encode_resume(rng.randbytes(32), count(target, rng))
        return encode_resumed(count(target, rng))
    kind = rng.randrange(10)
    if kind == 8:  # a datagram flow (protocol.md, Datagram flows)
        return FlowOpen(peer_next(target), "198.51.100.7:53").serialize()
    if kind == 9:
        size = rng.choice((0, 1, 1400, MAX_DATAGRAM, MAX_DATAGRAM + 1))
        return Datagram(sid, rng.randbytes(size)).serialize()
    if kind == 0:
        window = rng.choice((1, 5, 1000, DEFAULT_WINDOW, MAX_WINDOW))
        # most name a target of their own (per-stream targets, after a NUL)
        own = rng.choice(("", "10.0.0.1:22", "unix:/run/app.sock", "db.internal:5432"))
        return Open(peer_next(target), window, "198.51.100.7:4242", own).serialize()
    if kind == 1:
        return OpenOk(sid or 1, rng.choice((1, 1000, MAX_WINDOW))).serialize()
    if kind == 2:
        return Data(sid, rng.randbytes(rng.choice((0, 1, 2, 3, 70, 1001)))).serialize()
    if kind == 3:
        return WindowUpdate(sid or 1, rng.choice((1, 100, MAX_WINDOW))).serialize()
    if kind == 4:
        return Fin(sid or 1).serialize()
    if kind == 5:
        return Rst(sid or 1, "reset").serialize()
    if kind == 6:
        return OpenFail(sid or 1, "refused").serialize()
    return GoAway(0, "bye").serialize()


def mutate(message: bytes, target: Target, rng: random.Random) -> bytes:
    data = bytearray(message)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(9)
        if op == 0 and data:  # bit flip
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # interesting byte
            data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)
        elif op == 2:  # truncation
            del data[rng.randrange(len(data) + 1) :]
        elif op == 3:  # extension
            data += rng.randbytes(rng.choice((1, 2, 4, MAX_REASON, MAX_REASON + 1)))
        elif op == 4 and data:  # frame type
            data[0] = rng.choice((0, *range(1, 14), 0xFF))
        elif op == 5 and len(data) >= HEADER.size:  # stream id
            data[1:5] = stream_ids(target, rng).to_bytes(4, "big")
        elif op == 6 and len(data) >= HEADER.size + 4:  # the window / increment field
            data[5:9] = rng.choice(INTERESTING_U32).to_bytes(4, "big")
        elif op == 7 and len(data) >= HEADER.size + 12 and rng.random() < 0.5:  # a count field
            data[-8:] = rng.choice(INTERESTING_U64).to_bytes(8, "big")
        elif op == 7:  # payload of an interesting length
            del data[HEADER.size :]
            data += rng.randbytes(rng.choice(INTERESTING_LENGTHS))
        else:  # splice with another frame
            other = seed_frame(target, rng)
            data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
    return bytes(data)


def make_input(target: Target, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.randrange(0, 24))
    if roll < 0.4:
        return seed_frame(target, rng)
    return mutate(seed_frame(target, rng), target, rng)


def local_step(target: Target, rng: random.Random) -> None:
    """One legal move of our own side, so that the fuzz meets streams in every state."""
    mux = target.mux
    streams = [(sid, mux.state(sid)) for sid in mux.stream_ids()]
    roll = rng.random()
    if roll < 0.25:
        if not (mux.goaway_sent or mux.goaway_received) and len(streams) < 32:
            if rng.random() < 0.3:
                mux.open_flow("192.0.2.1:53")
            else:
                mux.open_stream("192.0.2.1:1")
        return
    if not streams:
        return
    sid, state = rng.choice(streams)
    if roll < 0.4:
        if state is StreamState.OPENING and not ours(mux, sid):
            mux.accept_stream(sid)
    elif roll < 0.6:
        if state in SEND_STATES and mux.credit(sid) > 0:
            # as the session sends: credit first, then the DATA messages split_data cuts
            n = mux.reserve_data(sid, rng.randrange(1, 2000))
            split_data(sid, memoryview(b"x" * n), mux.max_data)
    elif roll < 0.7:
        if state in SEND_STATES:
            mux.send_fin(sid)
    elif roll < 0.9:
        owed = target.unconsumed.get(sid, 0)
        if owed and state in RECEIVE_STATES:
            n = rng.randrange(1, owed + 1)
            target.unconsumed[sid] = owed - n
            mux.grant(sid, n, flush=rng.random() < 0.5)
    elif roll < 0.98:
        mux.reset_stream(sid, "local reset")
    else:
        mux.goaway("local goaway")


def honest_step(target: Target, rng: random.Random) -> None:
    """One legal frame from the peer (answers our OPENs, opens, sends within credit)."""
    mux = target.mux
    for sid in mux.stream_ids():
        if mux.state(sid) is StreamState.OPENING and ours(mux, sid):
            feed(target, OpenOk(sid, rng.choice((1, 1000, DEFAULT_WINDOW))).serialize())
            return
    if not mux.goaway_received and rng.random() < 0.5:
        feed(target, Open(peer_next(target), rng.choice((1, 1000, DEFAULT_WINDOW))).serialize())
    elif len(mux):
        sid = rng.choice(mux.stream_ids())
        machine = mux._streams[sid]  # white-box: the credit the peer has left
        if machine.state in RECEIVE_STATES:
            n = min(rng.randrange(0, 3), machine.recv_window.available)
            feed(target, Data(sid, b"y" * n).serialize())


def feed(target: Target, message: bytes) -> list[Event]:
    """Give one message to the target Mux and check its answers (see the module docstring).

    Raises:
        ProtocolViolation: a session-level fault (the session would close with 1002).
        AssertionError: the Mux broke one of the rules above.
    """
    mux = target.mux
    resumption = target.resumption
    if resumption is not None:
        given = resume_step(resumption, message)
        if given is None:
            return []
        message = bytes(given)
    fast_datagram = (
        len(message) >= HEADER.size
        and len(message) <= HEADER.size + MAX_DATAGRAM
        and message[0] == FrameType.DATAGRAM
        and mux.datagram_ok(HEADER.unpack_from(message)[1], outgoing=False)
    )
    data = mux.receive_data(message) if target.fast else None
    if data is not None:
        events: list[Event] = [DataReceived(*data)]
    else:
        events = mux.receive(message)  # a session-level ProtocolViolation propagates
    delivered = [event for event in events if isinstance(event, DatagramReceived)]
    # the fast path takes exactly the datagrams receive() delivers
    assert fast_datagram == (len(events) == len(delivered) == 1), (
        f"fast path {'takes' if fast_datagram else 'leaves'} a DATAGRAM: receive() {events!r}"
    )
    answers = [event.message for event in events if isinstance(event, Reply)]
    frame = parse_frame(message)
    if isinstance(frame, Open | FlowOpen):
        target.peer_last = max(target.peer_last, frame.stream_id)
    if isinstance(frame, Rst | OpenFail):
        assert not answers, f"{frame} was answered: {answers!r}"
    answered = {}
    for answer in answers:
        parsed = parse_frame(answer)  # our own answers must be valid frames
        answered[parsed.stream_id] = parsed
    for event in events:
        if isinstance(event, StreamViolated):
            assert isinstance(answered.get(event.stream_id), Rst | OpenFail), (
                f"{event} without an RST or OPEN_FAIL queued: {answers!r}"
            )
        elif isinstance(event, DataReceived):
            owed = target.unconsumed.get(event.stream_id, 0)
            target.unconsumed[event.stream_id] = owed + len(event.data)
    return events


def resume_step(resumption: Resumption, message: bytes) -> bytes | None:
    """The resumable session's step before the Mux, checked: what the Mux gets, or None."""
    log = resumption.log
    before = (log.sent, log.confirmed, log.messages_held, log.bytes_held)
    received = resumption.counter.count
    try:
        given = resumption.received(message, lambda: None)
    except ProtocolViolation:
        assert (log.sent, log.confirmed, log.messages_held, log.bytes_held) == before, (
            "a refused count changed the replay log"
        )
        raise
    assert log.confirmed >= before[1] and log.confirmed <= log.sent == before[0]
    assert log.messages_held == log.sent - log.confirmed
    if given is None:  # an ACK: confirms, is not counted, and says exactly what it confirms
        frame = parse_resume_frame(message)
        assert resumption.counter.count == received
        assert log.confirmed == max(before[1], frame.received)
        return None
    if message[:1] == bytes((FrameType.DATAGRAM,)):  # lossy by contract: never counted
        assert resumption.counter.count == received and given is message
        return given
    assert resumption.counter.count == received + 1
    if message[:1] == b"\x05":  # a WINDOW: the Mux gets it without its count
        assert len(given) == HEADER.size + 4 and given[:9] == message[:9]
        confirmed = int.from_bytes(message[9:17], "big")
        assert log.confirmed == max(before[1], confirmed)
    else:
        assert given is message
    if resumption.counter.ack_due:  # as the session sends it
        resumption.counter.ack()
        assert resumption.counter.unstated == 0
    return given


def check_parse(message: bytes) -> None:
    try:
        parse_frame(message)
    except ProtocolViolation as exc:
        assert exc.stream_id is None, f"parse_frame raised a stream-level fault: {exc}"


def run(
    count: int, seed: int = 0, report: Callable[[Failure], None] | None = None
) -> tuple[int, int, float]:
    """Feed ``count`` inputs. Returns (inputs, unhandled, seconds)."""
    rng = random.Random(seed)
    started = time.perf_counter()
    unhandled = 0
    target = new_target(rng)
    for _ in range(count):
        message = make_input(target, rng)
        try:
            check_parse(message)
            if rng.random() < 0.1:
                local_step(target, rng)
            feed(target, message)
            target.inputs += 1
            if target.inputs >= SESSION_INPUTS:
                target = new_target(rng)
        except ProtocolViolation as exc:
            if exc.stream_id is not None:
                unhandled += 1
                if report:
                    report(Failure(f"stream-level fault escaped: {exc!r}", message))
            target = new_target(rng)  # the session would be closed
        except Exception as exc:
            unhandled += 1
            if report:
                report(Failure(f"{type(exc).__name__}: {exc}", message))
            target = new_target(rng)
    return count, unhandled, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    return cli(__doc__, lambda count, seed: run(count, seed, printer())[1], argv)


if __name__ == "__main__":
    sys.exit(main())
