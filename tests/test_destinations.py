"""Per-stream targets: the OPEN's codec, and the check against a rule set before any dial."""

from __future__ import annotations

import asyncio

import pytest

from aiowstunnel.addresses import Address, AddressRule, UnixPath, parse_socket_address
from aiowstunnel.destinations import RuleSet, TargetRefused, check_target, dialer
from aiowstunnel.errors import AddressError, ProtocolViolation
from aiowstunnel.mux import Mux, StreamRequested
from aiowstunnel.wire import Open, parse_frame


def rules(*texts: str) -> RuleSet:
    return RuleSet("client 'app'", "allow_connect", tuple(AddressRule.parse(t) for t in texts))


@pytest.mark.parametrize("target", ["", "127.0.0.1:80", "[::1]:22", "db:5432", "unix:/run/a.sock"])
def test_open_carries_its_target(target: str) -> None:
    frame = Open(3, 1000, "192.0.2.1:5000", target)
    assert parse_frame(frame.serialize()) == frame


def test_open_without_target_is_the_old_format() -> None:
    # window + origin and nothing else: what peers before per-stream targets send
    assert Open(1, 10, "o").serialize() == b"\x01\x00\x00\x00\x01\x00\x00\x00\x0ao"
    with pytest.raises(ProtocolViolation, match="empty target"):
        parse_frame(b"\x01\x00\x00\x00\x01\x00\x00\x00\x0ao\x00")
    with pytest.raises(ProtocolViolation, match="OPEN target reason longer"):
        parse_frame(Open(1, 10, "o").serialize() + b"\x00" + b"x" * 600)


def test_mux_hands_the_target_to_the_dialing_side() -> None:
    opener, acceptor = Mux(client_side=True), Mux(client_side=False)
    sid, message = opener.open_stream("192.0.2.1:5000", "10.0.0.1:22")
    assert acceptor.receive(message) == [StreamRequested(sid, "192.0.2.1:5000", "10.0.0.1:22")]


def test_socket_addresses_and_unix_rules() -> None:
    assert parse_socket_address("unix:/run/app//x.sock") == UnixPath("/run/app/x.sock")
    assert parse_socket_address("[::1]:9") == Address("::1", 9)
    with pytest.raises(AddressError, match="absolute"):
        parse_socket_address("unix:run/x.sock")
    with pytest.raises(AddressError, match="at most 107 bytes"):
        parse_socket_address("unix:/" + "a" * 120)
    rule = AddressRule.parse("unix:/run/app.sock")
    assert rule.matches_address(UnixPath("/run/app.sock"))
    assert not rule.matches_address(UnixPath("/run/other.sock"))
    assert not rule.matches("127.0.0.1", 0) and not rule.any_host


async def test_check_names_the_rule_set_and_pins_resolved_names() -> None:
    assert await check_target(rules("127.0.0.1:80"), Address("127.0.0.1", 80), 5) == Address(
        "127.0.0.1", 80
    )
    with pytest.raises(
        TargetRefused,
        match=r"client 'app' may not connect to 127.0.0.1:81 \(not in allow_connect\)",
    ):
        await check_target(rules("127.0.0.1:80"), Address("127.0.0.1", 81), 5)
    # a name allowed only by a CIDR rule is resolved once and the matching address dialed
    assert await check_target(rules("127.0.0.0/8:80"), Address("localhost", 80), 5) == Address(
        "127.0.0.1", 80
    )
    with pytest.raises(TargetRefused, match="resolves to addresses outside allow_connect"):
        await check_target(rules("10.0.0.0/8:80"), Address("localhost", 80), 5)
    with pytest.raises(TargetRefused, match=r"unix:/run/b\.sock"):
        await check_target(rules("unix:/run/a.sock"), UnixPath("/run/b.sock"), 5)


@pytest.mark.timeout(10)
async def test_refused_target_is_never_connected_to() -> None:
    accepted = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dial = dialer(None, lambda: rules(f"127.0.0.1:{port + 1}"), 5)
    with pytest.raises(TargetRefused, match="not in allow_connect"):
        await dial(asyncio.Protocol, "o", f"127.0.0.1:{port}")
    with pytest.raises(TargetRefused, match="no target of its own"):
        await dial(asyncio.Protocol, "o", "")
    with pytest.raises(ValueError, match="bad target"):
        await dial(asyncio.Protocol, "o", "no-port")
    transport, _ = await dialer(None, lambda: rules(f"127.0.0.1:{port}"), 5)(
        asyncio.Protocol, "o", f"127.0.0.1:{port}"
    )
    transport.close()
    server.close()
    await server.wait_closed()
    assert accepted == 1
