"""Tests for aiowstunnel/policy.py: who may use the server, and for what (default deny)."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from aiowstunnel.addresses import Address, AddressRule
from aiowstunnel.policy import OPEN_RELAY, ClientPolicy, Policy, token_digest


def client(name: str, token: str, connect: tuple[str, ...] = (), listen: tuple[str, ...] = ()):
    return ClientPolicy(
        name,
        token_digest(token),
        tuple(AddressRule.parse(r) for r in connect),
        tuple(AddressRule.parse(r) for r in listen),
    )


ALICE = client("alice", "token-alice", connect=("db.internal:5432", "10.0.0.0/8:22"))
BOB = client(
    "bob",
    "token-bob",
    connect=("[2001:db8::/32]:443", "*:8443"),
    listen=("127.0.0.1:9000-9010", "0.0.0.0:8080", "[::1]:7000"),
)
CAROL = client("carol", "token-carol", listen=("*:*",))
POLICY = Policy([ALICE, BOB, CAROL])


def test_token_digest_is_sha256_of_str_or_bytes() -> None:
    expected = hashlib.sha256(b"s3cret").digest()
    assert token_digest("s3cret") == expected
    assert token_digest(b"s3cret") == expected
    assert len(expected) == 32


@pytest.mark.parametrize(
    ("token", "name"),
    [
        ("token-alice", "alice"),
        ("token-bob", "bob"),
        ("token-carol", "carol"),
        ("token-dave", None),
        ("token-alice ", None),
        ("TOKEN-ALICE", None),
        ("", None),
        (None, None),
    ],
)
def test_authenticate_finds_the_entry_of_the_token(token: str | None, name: str | None) -> None:
    found = POLICY.authenticate(token)
    assert (found.name if found else None) == name


def test_authenticate_finds_the_last_entry_as_well_as_the_first() -> None:
    assert Policy([CAROL, BOB, ALICE]).authenticate("token-alice") is ALICE
    assert Policy([ALICE]).authenticate("token-alice") is ALICE


def test_no_clients_denies_everyone() -> None:
    policy = Policy([])
    assert not policy.open_relay
    assert policy.authenticate("token-alice") is None
    assert policy.authenticate(None) is None


@pytest.mark.parametrize("token", ["anything", "", None])
def test_no_policy_is_an_open_relay(token: str | None) -> None:
    policy = Policy(None)
    assert policy.open_relay
    assert policy.authenticate(token) is OPEN_RELAY


@pytest.mark.parametrize(
    "address",
    [
        Address("example.com", 443),
        Address("10.0.0.1", 1),
        Address("::1", 65535),
    ],
)
def test_open_relay_allows_anything(address: Address) -> None:
    assert OPEN_RELAY.may_connect(address)
    assert OPEN_RELAY.may_listen(address)
    assert OPEN_RELAY.may_listen(Address("", 0))  # any interface, any free port
    assert not OPEN_RELAY.needs_resolution(address)


def test_client_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Policy([ALICE, client("alice", "another-token")])


@pytest.mark.parametrize("digest", [b"", b"x" * 31, b"x" * 33, b"token-alice"])
def test_client_needs_a_32_byte_digest(digest: bytes) -> None:
    with pytest.raises(ValueError, match="client 'mallory': token_sha256 must be 32 bytes"):
        ClientPolicy("mallory", digest)


def test_client_repr_never_shows_the_token_digest() -> None:
    for entry in (ALICE, BOB, CAROL, OPEN_RELAY):
        text = repr(entry) + str(entry)
        assert entry.name in text
        assert entry.token_sha256.hex() not in text
        assert repr(entry.token_sha256) not in text
        assert "token_sha256" not in text


@pytest.mark.parametrize(
    ("entry", "target", "allowed"),
    [
        (ALICE, Address("db.internal", 5432), True),
        (ALICE, Address("DB.Internal.", 5432), True),
        (ALICE, Address("db.internal", 5433), False),
        (ALICE, Address("cache.internal", 5432), False),
        (ALICE, Address("10.1.2.3", 22), True),
        (ALICE, Address("::ffff:10.1.2.3", 22), True),
        (ALICE, Address("11.1.2.3", 22), False),
        (ALICE, Address("10.1.2.3", 5432), False),
        (BOB, Address("2001:db8::7", 443), True),
        (BOB, Address("2001:db9::7", 443), False),
        (BOB, Address("anything.example", 8443), True),
        (BOB, Address("192.0.2.1", 8443), True),
        (BOB, Address("anything.example", 443), False),
        (CAROL, Address("127.0.0.1", 80), False),  # listen rules grant no CONNECT
    ],
)
def test_may_connect(entry: ClientPolicy, target: Address, allowed: bool) -> None:
    assert entry.may_connect(target) is allowed


@pytest.mark.parametrize(
    ("entry", "ip", "port", "allowed"),
    [
        (ALICE, "10.0.0.5", 22, True),
        (ALICE, "::ffff:10.0.0.5", 22, True),
        (ALICE, "10.0.0.5", 5432, False),  # db.internal:5432 is a name rule: not by IP
        (ALICE, "192.168.0.5", 22, False),
        (BOB, "2001:db8::1", 443, True),
        (BOB, "198.51.100.1", 8443, True),
        (BOB, "198.51.100.1", 443, False),
    ],
)
def test_may_connect_ip(entry: ClientPolicy, ip: str, port: int, allowed: bool) -> None:
    assert entry.may_connect_ip(ipaddress.ip_address(ip), port) is allowed


@pytest.mark.parametrize(
    ("entry", "address", "allowed"),
    [
        (BOB, Address("127.0.0.1", 9000), True),
        (BOB, Address("127.0.0.1", 9010), True),
        (BOB, Address("127.0.0.1", 9011), False),
        (BOB, Address("127.0.0.2", 9000), False),
        (BOB, Address("localhost", 9000), False),  # a name is not the IP rule
        (BOB, Address("", 8080), True),  # all interfaces is 0.0.0.0 for the rules
        (BOB, Address("0.0.0.0", 8080), True),
        (BOB, Address("", 9000), False),  # all interfaces needs its own rule
        (BOB, Address("::1", 7000), True),
        (BOB, Address("127.0.0.1", 0), False),
        (CAROL, Address("", 0), True),
        (CAROL, Address("192.0.2.1", 65535), True),
        (ALICE, Address("127.0.0.1", 22), False),  # connect rules grant no LISTEN
    ],
)
def test_may_listen(entry: ClientPolicy, address: Address, allowed: bool) -> None:
    assert entry.may_listen(address) is allowed


@pytest.mark.parametrize(
    ("entry", "target", "needed"),
    [
        (ALICE, Address("git.internal", 22), True),  # a name a CIDR rule might cover
        (ALICE, Address("db.internal", 5432), False),  # allowed by its name already
        (ALICE, Address("10.0.0.1", 22), False),  # an IP literal needs no resolver
        (ALICE, Address("11.0.0.1", 22), False),
        (ALICE, Address("::1", 22), False),
        (BOB, Address("anything.example", 8443), False),  # allowed by '*'
        (BOB, Address("web.example", 443), True),  # the IPv6 CIDR rule might cover it
        (client("n", "t", connect=("db.internal:5432",)), Address("git.internal", 22), False),
        (CAROL, Address("git.internal", 22), False),  # no connect rule at all
    ],
)
def test_needs_resolution(entry: ClientPolicy, target: Address, needed: bool) -> None:
    assert entry.needs_resolution(target) is needed
