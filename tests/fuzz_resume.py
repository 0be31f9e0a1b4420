"""Fuzz the resumption core with random and mutated messages and headers (not collected by pytest).

Usage: ``.venv/bin/python tests/fuzz_resume.py --count 1000000 [--seed 1]``

Each input is a message or a set of upgrade headers. A message goes to
:func:`parse_resume_frame`, to :func:`parse_window` (its payload), to both first-message checks
(:func:`check_resume` on the server, :func:`check_resumed` on the client), and its counts to a
:class:`ReplayLog` holding a known history (``confirm`` for an ACK or WINDOW, ``replay`` for
a RESUME or RESUMED), kept across inputs so that later inputs meet the state earlier ones left.
Headers go to the credential, resume-request, challenge and resumable parsers. An input is
*unhandled* when anything raises but ``ProtocolViolation`` (parsers, confirm) or
``ResumeRefused`` (handshake checks, replay); when a RESUME other than the one honest client's
passes the proof check; when a refused claim was in fact in range, or an accepted one was
not; when a replay is not exactly the messages after the claim; or when a refusal changed the
log. The run prints ``inputs=N unhandled=U seconds=S`` and exits 1 if U > 0.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from fuzzing import Failure, cli, printer  # tests/fuzzing.py

from aiowstunnel.errors import ProtocolViolation, ResumeRefused
from aiowstunnel.resume import (
    Ack,
    ReplayLog,
    Resume,
    Resumed,
    encode_ack,
    encode_resume,
    encode_resumed,
    encode_window,
    parse_resume_frame,
    parse_window,
)
from aiowstunnel.resumeauth import (
    HEADER_CHALLENGE,
    HEADER_RESUMABLE,
    HEADER_RESUME,
    HEADER_SECRET,
    HEADER_SESSION,
    Credentials,
    ServerSecret,
    check_resume,
    check_resumed,
    parse_challenge,
    parse_resumable,
    parse_resume_request,
    resume_message,
)

#: Inputs fed to one target before a fresh one replaces it.
TARGET_INPUTS = 300
INTERESTING_U64 = (0, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1)
INTERESTING_BYTES = (0, 1, 0x7F, 0x80, 0xFE, 0xFF)
HEADER_PIECES = (
    "",
    " ",
    "0",
    "1",
    "00",
    "g",
    "A",
    "é",
    "\u0660",
    "\x00",
    "0x",
    "\t",
    "=",
    "-",
    "_",
)


@dataclass
class Target:
    """A server's view of one session, with what an honest client would send."""

    log: ReplayLog
    messages: list[bytes]  # every message the log was given, in order
    credentials: Credentials
    secret: ServerSecret
    challenge: bytes
    honest: bytes  # the one RESUME that must pass the proof check
    inputs: int = 0


def new_target(rng: random.Random) -> Target:
    log = ReplayLog(max_bytes=rng.choice((64, 4096, 1 << 20)), max_messages=rng.choice((4, 64)))
    messages: list[bytes] = []
    for _ in range(rng.randrange(0, 40)):
        message = rng.randbytes(rng.randrange(1, 30))
        try:
            log.append(message)
        except ResumeRefused:
            break
        messages.append(message)
    log.confirm(rng.randrange(0, log.sent + 1))
    # From the seeded generator, not resume's os.urandom, so that a run can be repeated.
    credentials = Credentials(rng.randbytes(16), rng.randbytes(32))
    challenge = rng.randbytes(32)
    honest = resume_message(credentials, challenge, rng.randrange(0, 50))
    return Target(log, messages, credentials, ServerSecret(credentials.secret), challenge, honest)


def seed_message(target: Target, rng: random.Random) -> bytes:
    """A well-formed message, with counts around the target log's own numbers."""
    log = target.log
    count = rng.choice(
        (
            log.confirmed,
            log.sent,
            log.sent + 1,
            max(log.confirmed - 1, 0),
            rng.randrange(0, log.sent + 1),
            rng.choice(INTERESTING_U64),
        )
    )
    kind = rng.randrange(5)
    if kind == 0:
        return encode_ack(count)
    if kind == 1:
        return target.honest
    if kind == 2:
        proof = rng.choice((bytes(32), rng.randbytes(32), target.honest[5:37]))
        return encode_resume(proof, count)
    if kind == 3:
        return encode_resumed(count)
    return encode_window(rng.choice((1, 2, 0xFFFFFFFF)), rng.choice((1, 2**31 - 1)), count)


def mutate(message: bytes, target: Target, rng: random.Random) -> bytes:
    data = bytearray(message)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(7)
        if op == 0 and data:  # bit flip
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # interesting byte
            data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)
        elif op == 2:  # truncation
            del data[rng.randrange(len(data) + 1) :]
        elif op == 3:  # extension
            data += rng.randbytes(rng.choice((1, 4, 8, 32)))
        elif op == 4 and data:  # frame type
            data[0] = rng.choice((0, *range(1, 13), 0xFF))
        elif op == 5 and len(data) >= 13:  # the last u64 field: a count
            data[-8:] = rng.choice(INTERESTING_U64).to_bytes(8, "big")
        else:  # splice with another message
            other = seed_message(target, rng)
            data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
    return bytes(data)


def make_input(target: Target, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.randrange(0, 60))
    if roll < 0.4:
        return seed_message(target, rng)
    return mutate(seed_message(target, rng), target, rng)


def snapshot(log: ReplayLog) -> tuple[int, int, int, int]:
    return log.sent, log.confirmed, log.messages_held, log.bytes_held


def check_claim(target: Target, claimed: int) -> None:
    """``replay(claimed)``: refused exactly when out of range, else exactly the rest."""
    log = target.log
    before = snapshot(log)
    in_range = log.confirmed <= claimed <= log.sent
    try:
        entries = log.replay(claimed)
    except ResumeRefused as exc:
        assert exc.code == "bad_claim", f"claim refused with {exc.code}"
        assert not in_range, f"claim {claimed} refused, in range {before}"
        assert snapshot(log) == before, "a refused claim changed the log"
        return
    assert in_range, f"claim {claimed} accepted outside {before}"
    assert [p + bytes(q) for p, q in entries] == target.messages[claimed:], "wrong replay"


def check_confirm(target: Target, count: int) -> None:
    log = target.log
    before = snapshot(log)
    try:
        log.confirm(count)
    except ProtocolViolation as exc:
        assert exc.stream_id is None
        assert count > log.sent, f"count {count} refused within {before}"
        assert snapshot(log) == before, "a refused confirm changed the log"
        return
    assert log.confirmed == max(before[1], count)
    assert log.messages_held == log.sent - log.confirmed


def check_frame(target: Target, message: bytes) -> None:
    """One message through every parser and check (see the module docstring)."""
    try:
        increment, count = parse_window(message[5:])
    except ProtocolViolation as exc:
        assert exc.stream_id is None
    else:
        assert 0 < increment < 2**31 and 0 <= count < 2**64
        if message[:1] == b"\x05":
            check_confirm(target, count)
    try:
        claimed = check_resume(
            message, target.secret, target.credentials.session_id, target.challenge
        )
    except ResumeRefused as exc:
        assert exc.code in ("malformed", "bad_proof"), f"refused with {exc.code}"
    else:
        assert message == target.honest, "a forged RESUME passed the proof check"
        check_claim(target, claimed)
        target.secret = ServerSecret(target.credentials.secret)  # check() rotated it
    try:
        check_resumed(message)
    except ResumeRefused as exc:
        assert exc.code == "malformed"
    try:
        frame = parse_resume_frame(message)
    except ProtocolViolation as exc:
        assert exc.stream_id is None
        return
    if isinstance(frame, Ack):
        check_confirm(target, frame.received)
    elif isinstance(frame, Resumed | Resume):
        check_claim(target, frame.received)


def header_value(target: Target, rng: random.Random) -> str:
    valid = rng.choice(
        (target.credentials.session_id.hex(), target.credentials.secret.hex(), "1", "0")
    )
    roll = rng.random()
    if roll < 0.3:
        return valid
    text = list(valid)
    for _ in range(rng.randrange(1, 4)):
        piece = rng.choice(HEADER_PIECES)
        i = rng.randrange(len(text) + 1)
        if rng.random() < 0.5 and text:
            del text[i : i + rng.randrange(1, 3)]
        text.insert(min(i, len(text)), piece)
    return "".join(text)


def check_headers(target: Target, rng: random.Random) -> None:
    names = (HEADER_SESSION, HEADER_SECRET, HEADER_RESUME, HEADER_CHALLENGE, HEADER_RESUMABLE)
    headers = {name: header_value(target, rng) for name in names if rng.random() < 0.6}
    for parse in (Credentials.from_headers, parse_resume_request, parse_challenge):
        try:
            parse(headers)
        except ProtocolViolation as exc:
            assert exc.stream_id is None
    try:
        parse_resumable(headers.get(HEADER_RESUMABLE))
    except ProtocolViolation as exc:
        assert exc.stream_id is None


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
            if rng.random() < 0.1:
                check_headers(target, rng)
            check_frame(target, message)
            target.inputs += 1
            if target.inputs >= TARGET_INPUTS:
                target = new_target(rng)
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
