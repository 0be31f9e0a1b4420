"""Datagram flows in the protocol core (wire, mux), the rules and the handshake: plain
values, no sockets (the sockets are tests/integration/test_udp.py's)."""

from __future__ import annotations

import ipaddress

import pytest

from aiowstunnel.addresses import Address, AddressRule
from aiowstunnel.errors import ProtocolViolation
from aiowstunnel.events import (
    DatagramReceived,
    FlowRequested,
    Reply,
    StreamAccepted,
    StreamReset,
    StreamViolated,
)
from aiowstunnel.handshake import (
    HEADER_PROTOCOL,
    HEADER_UDP_IDLE,
    Mode,
    RequestRefused,
    TunnelProtocol,
    TunnelRequest,
)
from aiowstunnel.mux import Mux
from aiowstunnel.policy import OPEN_RELAY, ClientPolicy, token_digest
from aiowstunnel.wire import (
    MAX_DATAGRAM,
    Data,
    Datagram,
    Fin,
    FlowOpen,
    WindowUpdate,
    datagram_header,
    parse_frame,
)


def datagram(mux: Mux, sid: int, payload: bytes) -> bytes | None:
    """The DATAGRAM ``mux`` may send now (as udp.FlowTable frames it), else None."""
    return datagram_header(sid) + payload if mux.datagram_ok(sid, outgoing=True) else None


def pair() -> tuple[Mux, Mux]:
    return Mux(client_side=True), Mux(client_side=False)


def opened_flow() -> tuple[Mux, Mux, int]:
    opener, dialer = pair()
    sid, message = opener.open_flow("127.0.0.1:5353")
    assert dialer.receive(message) == [FlowRequested(sid, "127.0.0.1:5353")]
    return opener, dialer, sid


def test_flow_open_round_trips_and_names_its_origin() -> None:
    opener, _ = pair()
    sid, message = opener.open_flow("[::1]:53")
    assert parse_frame(message) == FlowOpen(sid, "[::1]:53")
    assert opener.datagram_ok(sid, outgoing=True)


def test_one_datagram_in_one_out_boundaries_kept() -> None:
    opener, dialer, sid = opened_flow()
    sizes = [0, 1, 1400, MAX_DATAGRAM]
    received = []
    # The opener sends right after FLOW_OPEN (no round trip before a DNS query).
    for size in sizes:
        message = datagram(opener, sid, bytes([size % 251]) * size)
        assert message is not None
        (event,) = dialer.receive(message)
        assert isinstance(event, DatagramReceived)
        received.append(bytes(event.data))
    assert [len(d) for d in received] == sizes
    assert received[2] == bytes([1400 % 251]) * 1400


def test_datagrams_take_no_credit() -> None:
    opener, dialer, sid = opened_flow()
    assert opener.receive(dialer.accept_stream(sid)) == [StreamAccepted(sid)]
    for _ in range(100):  # 100 x 64 KiB: far past any window, never blocked
        message = datagram(dialer, sid, b"x" * 65_000)
        assert message is not None
        assert isinstance(opener.receive(message)[0], DatagramReceived)


def test_the_dialing_side_sends_only_once_it_accepted() -> None:
    _opener, dialer, sid = opened_flow()
    assert datagram(dialer, sid, b"early") is None
    dialer.accept_stream(sid)
    assert datagram(dialer, sid, b"reply") is not None


def test_datagram_before_open_ok_from_the_dialing_side_is_a_violation() -> None:
    opener, _dialer, sid = opened_flow()
    forged = Datagram(sid, b"x").serialize()
    events = opener.receive(forged)
    assert isinstance(events[0], StreamViolated) and "before OPEN_OK" in events[0].reason
    assert isinstance(events[1], Reply)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (lambda sid: Data(sid, b"x"), "DATA on a datagram flow"),
        (lambda sid: WindowUpdate(sid, 10), "WINDOW on a datagram flow"),
        (lambda sid: Fin(sid), "FIN on a datagram flow"),
    ],
)
def test_byte_stream_frames_on_a_flow_are_reset(frame, match: str) -> None:
    opener, dialer, sid = opened_flow()
    opener.receive(dialer.accept_stream(sid))
    events = dialer.receive(frame(sid).serialize())
    assert isinstance(events[0], StreamViolated) and match in events[0].reason
    assert sid not in dialer


def test_datagram_on_a_byte_stream_is_reset() -> None:
    opener, dialer = pair()
    sid, message = opener.open_stream("x")
    dialer.receive(message)
    opener.receive(dialer.accept_stream(sid))
    events = dialer.receive(Datagram(sid, b"x").serialize())
    assert isinstance(events[0], StreamViolated) and "byte stream" in events[0].reason


def test_a_datagram_past_the_largest_udp_payload_is_a_session_fault() -> None:
    _opener, dialer, sid = opened_flow()
    message = Datagram(sid, b"x" * (MAX_DATAGRAM + 1)).serialize()
    with pytest.raises(ProtocolViolation, match="the most is 65527"):
        dialer.receive(message)


def test_rst_ends_a_flow_and_late_datagrams_are_ignored() -> None:
    opener, dialer, sid = opened_flow()
    opener.receive(dialer.accept_stream(sid))
    late = datagram(dialer, sid, b"late")
    assert dialer.receive(opener.reset_stream(sid, "idle timeout")) == [
        StreamReset(sid, "idle timeout")
    ]
    assert late is not None and opener.receive(late) == []
    assert datagram(opener, sid, b"x") is None


def test_flows_count_against_max_streams() -> None:
    opener = Mux(client_side=True)
    dialer = Mux(client_side=False, max_streams=1)
    _, first = opener.open_flow()
    _, second = opener.open_flow()
    dialer.receive(first)
    events = dialer.receive(second)
    assert any(isinstance(e, Reply) for e in events)


# -- rules ---------------------------------------------------------------------------------


def client(connect: tuple[str, ...] = (), listen: tuple[str, ...] = ()) -> ClientPolicy:
    return ClientPolicy(
        "c",
        token_digest("t"),
        tuple(AddressRule.parse(r) for r in connect),
        tuple(AddressRule.parse(r) for r in listen),
    )


def test_a_tcp_rule_never_grants_udp_and_the_other_way_round() -> None:
    dns = Address("127.0.0.1", 53)
    tcp_only = client(connect=("127.0.0.1:53", "tcp:10.0.0.0/8:*"), listen=("*:*",))
    assert tcp_only.may_connect(dns) and not tcp_only.may_connect(dns, "udp")
    ten = ipaddress.ip_address("10.1.2.3")
    assert tcp_only.may_connect_ip(ten, 53) and not tcp_only.may_connect_ip(ten, 53, "udp")
    assert not tcp_only.may_listen(Address("", 5353), "udp")
    udp_only = client(connect=("udp:127.0.0.1:53",), listen=("udp:[::1]:5000-5010",))
    assert udp_only.may_connect(dns, "udp") and not udp_only.may_connect(dns)
    assert udp_only.may_listen(Address("::1", 5005), "udp")
    assert not udp_only.may_listen(Address("::1", 5005))


def test_udp_prefix_needs_an_address_after_it() -> None:
    assert AddressRule.parse("udp:53").hostname == "udp"  # the host "udp", as before
    assert AddressRule.parse("udp:53").protocol == "tcp"
    rule = AddressRule.parse("UDP:*:53")
    assert rule.protocol == "udp" and rule.any_host and str(rule) == "UDP:*:53"
    assert AddressRule.parse("udp:[::1]:53").protocol == "udp"
    assert AddressRule.parse("tcp:srv:22").hostname == "srv"


def test_the_open_relay_allows_udp_too() -> None:
    assert OPEN_RELAY.may_connect(Address("127.0.0.1", 53), "udp")
    assert OPEN_RELAY.may_listen(Address("127.0.0.1", 53), "udp")


# -- handshake -----------------------------------------------------------------------------


def headers(**extra: str) -> dict[str, str]:
    return {"X-Aiowstunnel-Mode": "listen", "X-Aiowstunnel-Address": "127.0.0.1:0", **extra}


def test_protocol_and_idle_timeout_round_trip() -> None:
    request = TunnelRequest(
        Mode.LISTEN, Address("127.0.0.1", 0), protocol=TunnelProtocol.BOTH, udp_idle_timeout=0.0
    )
    parsed = TunnelRequest.from_headers(dict(request.headers()))
    assert parsed.protocol is TunnelProtocol.BOTH and parsed.udp_idle_timeout == 0.0


def test_a_tcp_request_sends_no_protocol_header() -> None:
    request = TunnelRequest(Mode.CONNECT, Address("127.0.0.1", 80))
    assert HEADER_PROTOCOL not in dict(request.headers())
    assert TunnelRequest.from_headers(dict(request.headers())).protocol is TunnelProtocol.TCP


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({HEADER_PROTOCOL: "sctp"}, "not 'tcp', 'udp' or 'tcp\\+udp'"),
        ({HEADER_UDP_IDLE: "nan"}, "not a number of seconds"),
        ({HEADER_UDP_IDLE: "1e9"}, "not a number of seconds"),
        ({HEADER_UDP_IDLE: "86401"}, "not a number of seconds"),
        ({HEADER_UDP_IDLE: "-1"}, "not a number of seconds"),
    ],
)
def test_a_bad_protocol_or_idle_timeout_is_a_400(extra: dict[str, str], match: str) -> None:
    with pytest.raises(RequestRefused, match=match):
        TunnelRequest.from_headers(headers(**extra))


@pytest.mark.parametrize(
    ("mode", "address", "match"),
    [
        ("socks5", None, "not carried in socks5 mode"),
        ("reverse-socks5", "127.0.0.1:0", "not carried in reverse-socks5 mode"),
        ("connect", "unix:/run/x.sock", "not carried in a unix socket"),
    ],
)
def test_udp_outside_connect_and_listen_on_host_port_is_a_400(
    mode: str, address: str | None, match: str
) -> None:
    given = {"X-Aiowstunnel-Mode": mode, HEADER_PROTOCOL: "udp"}
    if address is not None:
        given["X-Aiowstunnel-Address"] = address
    with pytest.raises(RequestRefused, match=match):
        TunnelRequest.from_headers(given)
