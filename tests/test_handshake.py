"""Tests for aiowstunnel/handshake.py: the tunnel request in upgrade headers, and refusals."""

from __future__ import annotations

import http

import pytest

from aiowstunnel.addresses import Address
from aiowstunnel.handshake import (
    CONNECT,
    HEADER_ADDRESS,
    HEADER_EARLY_DATA,
    HEADER_MODE,
    HEADER_TUNNEL,
    LISTEN,
    Mode,
    Refusal,
    RequestRefused,
    TunnelRequest,
    bearer_token,
    parse_early_data,
    refusal_label,
)

from . import fuzzing


def refusal_of(headers: dict[str, str]) -> RequestRefused:
    with pytest.raises(RequestRefused) as info:
        TunnelRequest.from_headers(headers)
    return info.value


@pytest.mark.parametrize(
    "request_",
    [
        TunnelRequest(CONNECT, Address("db.internal", 5432), "s3cret"),
        TunnelRequest(CONNECT, Address("::1", 22), None),
        TunnelRequest(LISTEN, Address("", 0), "token with spaces"),
        TunnelRequest(LISTEN, Address("127.0.0.1", 9000), "t"),
        TunnelRequest(LISTEN, Address("2001:db8::1", 443), None),
    ],
    ids=str,
)
def test_request_round_trips_through_headers(request_: TunnelRequest) -> None:
    headers = request_.headers()
    names = [name for name, _ in headers]
    assert names == [HEADER_MODE, HEADER_ADDRESS] + (
        ["Authorization"] if request_.token is not None else []
    )
    assert TunnelRequest.from_headers(dict(headers)) == request_


def test_early_data_round_trips_and_a_bad_value_is_refused_by_name() -> None:
    request = TunnelRequest(LISTEN, Address("127.0.0.1", 9000), early_data=16384)
    headers = dict(request.headers())
    assert headers[HEADER_EARLY_DATA] == "16384"
    assert TunnelRequest.from_headers(headers) == request
    del headers[HEADER_EARLY_DATA]  # a client from before early data
    assert TunnelRequest.from_headers(headers).early_data == 0
    for bad in ("-1", "16k", "", "2147483648", "\u0661", "1" * 5000):
        refused = refusal_of({**headers, HEADER_EARLY_DATA: bad})
        assert refused.refusal is Refusal.BAD_REQUEST and HEADER_EARLY_DATA in refused.reason
    assert parse_early_data(" 0 ") == 0 and parse_early_data(None) == 0


def test_headers_carry_mode_address_and_bearer_token() -> None:
    request = TunnelRequest(LISTEN, Address("::1", 9000), "abc")
    assert request.headers() == [
        ("X-Aiowstunnel-Mode", "listen"),
        ("X-Aiowstunnel-Address", "[::1]:9000"),
        ("Authorization", "Bearer abc"),
    ]


def test_request_repr_hides_the_token() -> None:
    request = TunnelRequest(CONNECT, Address("h", 1), "s3cret-token")
    assert "s3cret-token" not in repr(request)


@pytest.mark.parametrize("mode", ["connect", "CONNECT", " Connect ", "listen", "LISTEN\t"])
def test_mode_is_case_and_space_insensitive(mode: str) -> None:
    request = TunnelRequest.from_headers({HEADER_MODE: mode, HEADER_ADDRESS: "h:1"})
    assert request.mode is Mode(mode.strip().lower())
    assert request.token is None


def test_port_0_is_for_listen_only() -> None:
    request = TunnelRequest.from_headers({HEADER_MODE: "listen", HEADER_ADDRESS: ":0"})
    assert request.address == Address("", 0)
    refused = refusal_of({HEADER_MODE: "connect", HEADER_ADDRESS: "h:0"})
    assert refused.refusal is Refusal.BAD_REQUEST
    assert "port 0 is out of range" in refused.reason


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, f"missing {HEADER_MODE} header"),
        ({HEADER_ADDRESS: "h:1"}, f"missing {HEADER_MODE} header"),
        ({HEADER_MODE: "tunnel", HEADER_ADDRESS: "h:1"}, f"{HEADER_MODE}: 'tunnel' is not"),
        ({HEADER_MODE: "", HEADER_ADDRESS: "h:1"}, f"{HEADER_MODE}: '' is not"),
        ({HEADER_MODE: "connect"}, f"missing {HEADER_ADDRESS} header"),
        ({HEADER_MODE: "connect", HEADER_ADDRESS: ""}, f"{HEADER_ADDRESS}: '': expected"),
        ({HEADER_MODE: "connect", HEADER_ADDRESS: "nohost"}, f"{HEADER_ADDRESS}: 'nohost'"),
        ({HEADER_MODE: "listen", HEADER_ADDRESS: "::1:80"}, f"{HEADER_ADDRESS}: '::1:80'"),
        ({HEADER_MODE: "connect", HEADER_ADDRESS: "h:99999"}, "port 99999 is out of range"),
    ],
)
def test_bad_request_reason_names_the_header(headers: dict[str, str], reason: str) -> None:
    refused = refusal_of(headers)
    assert refused.refusal is Refusal.BAD_REQUEST
    assert refused.refusal.status == http.HTTPStatus.BAD_REQUEST
    assert refused.refusal.label == "bad_request"
    assert reason in refused.reason
    assert str(refused) == refused.reason


def test_oversized_port_is_a_bad_request() -> None:
    refused = refusal_of({HEADER_MODE: "connect", HEADER_ADDRESS: "h:" + "9" * 5000})
    assert refused.refusal is Refusal.BAD_REQUEST


@pytest.mark.parametrize(
    ("refusal", "status", "label"),
    [
        (Refusal.BAD_REQUEST, 400, "bad_request"),
        (Refusal.BAD_TOKEN, 401, "bad_token"),
        (Refusal.FORBIDDEN, 403, "forbidden"),
        (Refusal.NOT_FOUND, 404, "bad_path"),
        (Refusal.LISTEN_FAILED, 409, "listen_failed"),
        (Refusal.TOO_MANY_SESSIONS, 429, "too_many_sessions"),
        (Refusal.SHUTTING_DOWN, 503, "shutting_down"),
    ],
)
def test_refusal_status_and_label(refusal: Refusal, status: int, label: str) -> None:
    assert refusal.status == status
    assert refusal.label == label


@pytest.mark.parametrize(
    ("status", "named", "label"),
    [
        (503, "server_full", "server_full"),
        (503, "shutting_down", "shutting_down"),
        (503, None, "shutting_down"),  # a server that does not name it: the first of 503
        (503, "bad_token", "shutting_down"),  # a name of another status is not believed
        (401, "bad_token", "bad_token"),
        (401, "x" * 5000, "bad_token"),
        (502, "server_full", "http_502"),  # a proxy's own status
    ],
)
def test_refusal_label_believes_the_server_only_within_the_status(
    status: int, named: str | None, label: str
) -> None:
    assert refusal_label(status, named) == label


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer abc  ", "abc"),
        ("Bearer   abc", "abc"),
        ("Bearer a.b-c_d~e+f/g=", "a.b-c_d~e+f/g="),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer    ", None),
        ("", None),
        ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", None),
        ("Token abc", None),
        ("Bearerabc", None),
        ("Bearer\tabc", None),  # RFC 7235: the scheme is followed by a space
        ("abc", None),
    ],
)
def test_bearer_token(value: str | None, token: str | None) -> None:
    assert bearer_token(value) == token


def test_mode_str_is_its_header_value() -> None:
    assert str(CONNECT) == "connect"
    assert str(LISTEN) == "listen"


def test_header_names_are_case_insensitive_in_websockets_headers() -> None:
    from websockets.datastructures import Headers

    headers = Headers(
        [
            ("x-aiowstunnel-mode", "connect"),
            ("X-AIOWSTUNNEL-ADDRESS", "[::1]:22"),
            ("authorization", "Bearer t0k"),
        ]
    )
    assert TunnelRequest.from_headers(headers) == TunnelRequest(CONNECT, Address("::1", 22), "t0k")


def test_fuzz_handshake_short_run() -> None:
    """A short run of tests/fuzz_handshake.py (the long run is documented in reliability.md)."""
    assert fuzzing.load_fuzzer("fuzz_handshake").run(20_000, seed=1) == 0


def test_tunnel_name_travels_in_its_header() -> None:
    request = TunnelRequest(CONNECT, Address("db", 5432), "t", "connect:[::1]:0")
    headers = dict(request.headers())
    assert headers[HEADER_TUNNEL] == "connect:[::1]:0"
    assert TunnelRequest.from_headers(headers).tunnel == "connect:[::1]:0"
    del headers[HEADER_TUNNEL]  # optional: an older client sends none
    assert TunnelRequest.from_headers(headers).tunnel == ""


@pytest.mark.parametrize("name", ["a b", "x" * 129, "db/x", 'q"uote', "ünïcode"])
def test_a_tunnel_name_that_cannot_be_a_label_is_a_bad_request(name: str) -> None:
    headers = {HEADER_MODE: "connect", HEADER_ADDRESS: "db:5432", HEADER_TUNNEL: name}
    refused = refusal_of(headers)
    assert refused.refusal is Refusal.BAD_REQUEST
    assert HEADER_TUNNEL in refused.reason and "128" in refused.reason


def test_proxy_protocol_request_header() -> None:
    from aiowstunnel.handshake import HEADER_PROXY_PROTOCOL, LISTEN, RequestRefused

    request = TunnelRequest(CONNECT, Address("db", 5432), "t", "", "v2")
    headers = dict(request.headers())
    assert headers[HEADER_PROXY_PROTOCOL] == "v2"
    assert TunnelRequest.from_headers(headers).proxy_protocol == "v2"
    with pytest.raises(RequestRefused, match="'v9' is not 'v1' or 'v2'"):
        TunnelRequest.from_headers({**headers, HEADER_PROXY_PROTOCOL: "v9"})
    listen = dict(TunnelRequest(LISTEN, Address("", 80), "t").headers())
    with pytest.raises(RequestRefused, match="the client dials and sends it itself"):
        TunnelRequest.from_headers({**listen, HEADER_PROXY_PROTOCOL: "v1"})


def test_socks_auth_travels_only_for_reverse_socks5() -> None:
    from aiowstunnel.handshake import HEADER_SOCKS_AUTH, REVERSE_SOCKS5, RequestRefused

    request = TunnelRequest(REVERSE_SOCKS5, Address("", 1080), "t", "", "", ("bob", "p:w é"))
    headers = dict(request.headers())
    assert "p:w" not in headers[HEADER_SOCKS_AUTH]  # base64: any bytes, no separator trouble
    assert TunnelRequest.from_headers(headers).socks_auth == ("bob", "p:w é")
    assert "p:w" not in repr(TunnelRequest.from_headers(headers))
    for bad in ("bm9wZQ==", "!! !!", "Ym9i "):
        with pytest.raises(
            RequestRefused, match=r"expected 'base64\(user\) base64\(password\)'|1 to 255"
        ):
            TunnelRequest.from_headers({**headers, HEADER_SOCKS_AUTH: bad})
    connect = dict(TunnelRequest(CONNECT, Address("db", 1), "t").headers())
    with pytest.raises(RequestRefused, match="only used in reverse-socks5 mode"):
        TunnelRequest.from_headers({**connect, HEADER_SOCKS_AUTH: headers[HEADER_SOCKS_AUTH]})
