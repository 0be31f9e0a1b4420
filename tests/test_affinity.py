"""Tests for aiowstunnel/affinity.py: what a 101 says about the way back to its server."""

from __future__ import annotations

import pytest

from aiowstunnel.affinity import MAX_COOKIE_BYTES, MAX_COOKIES, Affinity, server_name


def test_haproxy_inserted_cookie_goes_back_as_a_cookie_header() -> None:
    # What HAProxy's `cookie SRV insert indirect nocache` puts in the 101 (seen on 2.6).
    affinity = Affinity.from_response("s2", ["SRV=s2; path=/"])
    assert affinity == Affinity("s2", (("SRV", "s2"),))
    assert affinity.cookie_header() == "SRV=s2"
    assert affinity.headers() == {"Cookie": "SRV=s2"}


def test_a_fresh_session_sends_nothing() -> None:
    assert Affinity().headers() == {}
    assert Affinity.from_response(None, []).cookie_header() is None


def test_several_cookies_in_order_a_later_one_replaces_max_age_zero_deletes() -> None:
    affinity = Affinity.from_response(
        "edge",
        [
            "SRV=s1; Path=/; HttpOnly",
            'lb="a b"; Secure',  # a space in a quoted value: not cookie-octets, skipped
            "route=r7",
            "SRV=s3",
            "route=gone; Max-Age=0",
            "other=1; max-age = -5",
        ],
    )
    assert affinity.cookies == (("SRV", "s3"),)
    assert affinity.cookie_header() == "SRV=s3"


@pytest.mark.parametrize(
    "header",
    ["novalue", "=nameless", "bad name=x", "x=semi\x00", "x=a,b", "x=" + "v" * MAX_COOKIE_BYTES],
)
def test_malformed_or_oversized_cookies_are_skipped(header: str) -> None:
    assert Affinity.from_response("s", [header, "ok=1"]).cookies == (("ok", "1"),)


def test_at_most_max_cookies_are_kept() -> None:
    affinity = Affinity.from_response("s", [f"c{i}={i}" for i in range(MAX_COOKIES + 5)])
    assert len(affinity.cookies) == MAX_COOKIES
    assert affinity.cookies[-1] == (f"c{MAX_COOKIES - 1}", str(MAX_COOKIES - 1))


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("edge-1.example:9000", "edge-1.example:9000"),
        ("  s1 ", "s1"),
        (None, ""),
        ("", ""),
        ("two words", ""),
        ("x" * 129, ""),
        ("s1\r\nSet-Cookie: x", ""),
        ("\u00e9t\u00e9", ""),
    ],
)
def test_server_name_is_a_plain_bounded_token(value: str | None, kept: str) -> None:
    assert server_name(value) == kept
