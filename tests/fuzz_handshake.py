"""Fuzz the tunnel request parsing of the handshake (not collected by pytest).

Usage: ``.venv/bin/python tests/fuzz_handshake.py --count 1000000 [--seed 1]``

Each input is a set of upgrade headers, random or mutated from a valid request, given to
:meth:`TunnelRequest.from_headers` (mode, address, bearer token) and, when it parses, to
the policy checks the server runs before the upgrade. Anything raised but
``RequestRefused`` is *unhandled*. Prints ``inputs=N unhandled=U seconds=S``; exit 1 if U > 0.
The HTTP request line and headers themselves are parsed by websockets; the live-socket
side of this is tests/integration/test_abuse.py.
"""

from __future__ import annotations

import random
import sys

from fuzzing import cli, count_unhandled  # tests/fuzzing.py

from aiowstunnel.addresses import AddressRule
from aiowstunnel.handshake import (
    HEADER_ADDRESS,
    HEADER_MODE,
    HEADER_PROTOCOL,
    HEADER_UDP_IDLE,
    RequestRefused,
    TunnelRequest,
)
from aiowstunnel.policy import ClientPolicy, Policy, token_digest

VALID = {HEADER_MODE: "connect", HEADER_ADDRESS: "srv.example:6789", "Authorization": "Bearer t0k"}
#: half the inputs start from a UDP request (protocol.md, Datagram flows)
VALID_UDP = {**VALID, HEADER_MODE: "listen", HEADER_PROTOCOL: "tcp+udp", HEADER_UDP_IDLE: "60"}
PIECES = [
    "connect",
    "listen",
    "udp",
    "tcp+udp",
    "udp:",
    "nan",
    "1e9",
    "86400",
    "0.5",
    "CONNECT",
    "",
    " ",
    ":",
    "::",
    "[",
    "]",
    "[::1]",
    "[::1]:80",
    "0",
    "65535",
    "65536",
    "-1",
    "99999999999",
    "²",
    "٨٠",
    "*",
    "10.0.0.0/8",
    "a" * 300,
    "\x00",
    "Bearer",
    "bearer ",
    "Basic x",
    "é",
    "..",
    "a..b",
    "-a",
    "_",
    "host:",
    ":80",
    "h:0",
]
POLICY = Policy(
    [
        ClientPolicy(
            "t",
            token_digest("t0k"),
            tuple(
                AddressRule.parse(r)
                for r in ("srv.example:6789", "10.0.0.0/8:22-80", "udp:srv.example:53")
            ),
            tuple(AddressRule.parse(r) for r in ("0.0.0.0:5000-6000", "[::1]:*", "udp:*:*")),
        ),
    ]
)


def mutate(rng: random.Random, text: str) -> str:
    choice = rng.randrange(6)
    if choice == 0 and text:
        i = rng.randrange(len(text))
        return (
            text[:i] + chr(rng.randrange(0x110000 if rng.random() < 0.1 else 128)) + text[i + 1 :]
        )
    if choice == 1:
        return text[: rng.randrange(len(text) + 1)]
    if choice == 2:
        return text + rng.choice(PIECES)
    if choice == 3:
        return rng.choice(PIECES) + text
    if choice == 4:
        return "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 4)))
    return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(0, 40)))


def one_input(rng: random.Random) -> dict[str, str]:
    headers = dict(VALID if rng.random() < 0.5 else VALID_UDP)
    for key in list(headers):
        roll = rng.random()
        if roll < 0.15:
            del headers[key]
        elif roll < 0.75:
            headers[key] = mutate(rng, headers[key])
    return headers


def check(headers: dict[str, str]) -> None:
    try:
        request = TunnelRequest.from_headers(headers)
    except RequestRefused:
        return
    client = POLICY.authenticate(request.token)
    if client is not None and request.address is not None:  # None: socks5, no target
        for protocol in request.protocol.names:
            client.may_connect(request.address, protocol)
            client.may_listen(request.address, protocol)
            client.needs_resolution(request.address, protocol)


def run(count: int, seed: int) -> int:
    rng = random.Random(seed)
    return count_unhandled((one_input(rng) for _ in range(count)), check)


def main(argv: list[str] | None = None) -> int:
    return cli(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
