"""The SOCKS5 negotiation with plain bytes (RFC 1928 CONNECT, RFC 1929 username/password)."""

from __future__ import annotations

import pytest

from aiowstunnel.addresses import Address
from aiowstunnel.socks5 import (
    Credentials,
    Reply,
    Socks5Server,
    SocksError,
    client_request,
    reply,
    reply_for,
)

from . import fuzzing


@pytest.mark.parametrize(
    "target", [Address("127.0.0.1", 80), Address("::1", 22), Address("db.internal", 5432)]
)
def test_no_auth_connect_names_the_target(target: Address) -> None:
    server = Socks5Server()
    assert server.receive(client_request(target)) == b"\x05\x00"
    assert server.done and server.target == target and server.rest == b""


def test_bytes_one_at_a_time_and_early_data_kept() -> None:
    server = Socks5Server()
    data = client_request(Address("example.test", 443)) + b"GET / HTTP/1.0\r\n"
    out = b"".join(server.receive(data[i : i + 1]) for i in range(len(data) - 16))
    assert out == b"\x05\x00" and server.done
    assert server.target == Address("example.test", 443)
    # what came with the last byte of the request stays for the stream
    server2 = Socks5Server()
    server2.receive(data)
    assert server2.rest == b"GET / HTTP/1.0\r\n"


def test_username_password_checked() -> None:
    creds = Credentials("alice", "s3cret")
    server = Socks5Server(creds)
    assert server.receive(client_request(Address("10.0.0.1", 22), creds)) == b"\x05\x02\x01\x00"
    assert server.username == "alice" and server.target == Address("10.0.0.1", 22)
    with pytest.raises(SocksError, match="wrong username or password") as info:
        Socks5Server(creds).receive(
            client_request(Address("10.0.0.1", 22), Credentials("alice", "nope"))
        )
    assert info.value.answer == b"\x01\x01"


def test_auth_required_but_not_offered() -> None:
    with pytest.raises(SocksError, match="does not offer username/password") as info:
        Socks5Server(Credentials("a", "b")).receive(b"\x05\x01\x00")
    assert info.value.answer == b"\x05\xff"


@pytest.mark.parametrize(
    ("data", "code", "match"),
    [
        (
            b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50",
            Reply.COMMAND_NOT_SUPPORTED,
            "command 0x02",
        ),
        (b"\x05\x01\x00\x05\x01\x00\x09", Reply.ADDRESS_TYPE_NOT_SUPPORTED, "address type 0x09"),
        (
            b"\x05\x01\x00\x05\x01\x00\x03\x03a b\x00\x50",
            Reply.ADDRESS_TYPE_NOT_SUPPORTED,
            "not a host",
        ),
        (b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", Reply.GENERAL_FAILURE, "port 0"),
    ],
)
def test_bad_requests_get_their_reply(data: bytes, code: Reply, match: str) -> None:
    with pytest.raises(SocksError, match=match) as info:
        Socks5Server().receive(data)
    assert info.value.answer == reply(code)


def test_not_socks5_and_a_flood_of_junk() -> None:
    with pytest.raises(SocksError, match="not SOCKS5"):
        Socks5Server().receive(b"\x04\x01\x00\x50")
    # every message is complete within 513 bytes: junk is refused, never buffered
    with pytest.raises(SocksError, match="does not offer no authentication"):
        Socks5Server().receive(b"\x05\xff" + b"x" * 100_000)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("forbidden: client 'app' may not connect to 10.0.0.1:22 (not in allow_connect)", 0x02),
        ("refused: connect to 127.0.0.1:1 failed: Connection refused", 0x05),
        ("unreachable: connect to 10.9.9.9:1 failed: No route to host", 0x04),
        ("timeout: connect to x:1 timed out after 10 s", 0x04),
        ("dns: connect to nx.invalid:1 failed", 0x04),
        ("going away", 0x01),
        ("too many streams (max 2)", 0x01),
    ],
)
def test_open_fail_causes_become_replies(reason: str, code: int) -> None:
    assert reply_for(reason) == code


def test_fuzz_socks5_short_run() -> None:
    """A short run of tests/fuzz_socks5.py (documented in docs/reliability.md)."""
    assert fuzzing.load_fuzzer("fuzz_socks5").run(20_000, seed=1) == 0
