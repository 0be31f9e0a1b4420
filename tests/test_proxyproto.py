"""PROXY protocol headers, byte for byte as HAProxy's specification (proxy-protocol.txt) says."""

from __future__ import annotations

import ipaddress

import pytest

from aiowstunnel.proxyproto import V2_SIGNATURE, header, parse_v2_addresses, peer_of


def test_v1_tcp4_tcp6_and_unknown() -> None:
    dst = ("127.0.0.1", 8080)
    assert header("v1", "192.0.2.7:51000", dst) == b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n"
    assert header("v1", "[2001:db8::1]:443", ("::1", 80, 0, 0)) == (
        b"PROXY TCP6 2001:db8::1 ::1 443 80\r\n"
    )
    # one family per header: IPv4 beside IPv6 is written v4-mapped
    assert header("v1", "192.0.2.7:1", ("::1", 80, 0, 0)) == (
        b"PROXY TCP6 ::ffff:c000:207 ::1 1 80\r\n"
    )
    assert header("v1", "", dst) == b"PROXY UNKNOWN\r\n"  # a unix socket's peer
    assert header("v1", "name.example:1", dst) == b"PROXY UNKNOWN\r\n"


def test_v2_proxy_and_local() -> None:
    data = header("v2", "192.0.2.7:51000", ("127.0.0.1", 8080))
    assert data[:12] == V2_SIGNATURE and data[12] == 0x21 and data[13] == 0x11
    assert int.from_bytes(data[14:16], "big") == 12 and len(data) == 28
    assert parse_v2_addresses(data) == (
        (ipaddress.ip_address("192.0.2.7"), 51000),
        (ipaddress.ip_address("127.0.0.1"), 8080),
    )
    data6 = header("v2", "[::1]:5", ("::1", 6, 0, 0))
    assert data6[13] == 0x21 and len(data6) == 16 + 36
    # unknown source: LOCAL, no addresses (the backend uses the connection's own)
    assert header("v2", "", None) == V2_SIGNATURE + b"\x20\x00\x00\x00"
    # a unix backend (no peer address): the source's family's unspecified address
    assert parse_v2_addresses(header("v2", "192.0.2.7:9", ""))[1] == (
        ipaddress.ip_address("0.0.0.0"),
        0,
    )


def test_peer_and_bad_version() -> None:
    assert peer_of("10.0.0.1:80") == (ipaddress.ip_address("10.0.0.1"), 80)
    assert peer_of("garbage") is None
    with pytest.raises(ValueError, match="v1 or v2"):
        header("v3", "10.0.0.1:80", None)
