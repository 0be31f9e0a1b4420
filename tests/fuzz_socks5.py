"""Fuzz the SOCKS5 negotiation (socks5.Socks5Server) with random and mutated bytes (not
collected by pytest; tests/test_socks5.py runs a short version).

Usage: ``.venv/bin/python tests/fuzz_socks5.py --count 1000000 [--seed 1]``

Each input is a valid negotiation (with or without RFC 1929 credentials), mutated, cut into
random pieces and fed piece by piece. An input is *unhandled* when the parser raises
anything but SocksError, buffers more than its bound, ends with a target that is not a
valid address, or answers with bytes that are not a SOCKS5/RFC 1929 message. The run prints
``inputs=N unhandled=U seconds=S`` and exits 1 if U > 0.
"""

from __future__ import annotations

import random
import sys

from fuzzing import cli, count_unhandled  # tests/fuzzing.py

from aiowstunnel.addresses import Address
from aiowstunnel.socks5 import Credentials, Socks5Server, SocksError, client_request

CREDENTIALS = Credentials("user", "pässword")
TARGETS = [
    Address("127.0.0.1", 80),
    Address("::1", 22),
    Address("example.test", 443),
    Address("a" * 63 + ".b", 1),
]


def one_input(rng: random.Random) -> tuple[bytes, bool]:
    auth = rng.random() < 0.5
    data = bytearray(client_request(rng.choice(TARGETS), CREDENTIALS if auth else None))
    for _ in range(rng.randrange(4)):
        roll = rng.randrange(5)
        i = rng.randrange(len(data) + 1)
        if roll == 0 and data:
            data[min(i, len(data) - 1)] = rng.randrange(256)
        elif roll == 1:
            del data[i:]
        elif roll == 2:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        elif roll == 3 and data:
            del data[i : i + rng.randrange(1, 8)]
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
    return bytes(data), auth


def check(data: bytes, auth: bool, rng: random.Random) -> None:
    server = Socks5Server(CREDENTIALS if auth else None)
    at = 0
    while at < len(data) and not server.done:
        step = rng.randrange(1, 64)
        try:
            answer = server.receive(data[at : at + step])
        except SocksError as exc:
            assert exc.answer[:1] in (b"", b"\x05", b"\x01"), exc.answer
            return
        assert answer[:1] in (b"", b"\x05", b"\x01"), answer
        assert len(server.buffer) <= Socks5Server.MAX_PENDING + 64
        at += step
    if server.done:
        assert server.target is not None
        Address.parse(str(server.target))


def run(count: int, seed: int) -> int:
    rng = random.Random(seed)
    inputs = (one_input(rng) for _ in range(count))
    return count_unhandled(inputs, lambda item: check(*item, rng))


def main(argv: list[str] | None = None) -> int:
    return cli(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
