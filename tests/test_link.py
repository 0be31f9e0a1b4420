"""Tests for aiowstunnel/link.py, serverlink.py and keepalive.py: a client Link and a
ServerLink back to back over fake transports (tests/fakes.py), with websockets' real
sans-I/O protocols on both ends and an owner that records what the link tells it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from websockets.client import ClientProtocol
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from aiowstunnel import keepalive, resume, wsframe
from aiowstunnel.errors import HandshakeRefused, ProtocolViolation
from aiowstunnel.limits import ServerLimits, SessionGuard, Slots
from aiowstunnel.link import Link, Message, retry_after
from aiowstunnel.resume import ReplayLog
from aiowstunnel.resumption import Resumption
from aiowstunnel.serverlink import ServerLink
from aiowstunnel.settings import SessionSettings
from aiowstunnel.wire import SUBPROTOCOL, data_header

from .fakes import FakeTransport, pump

PROTOCOLS = [Subprotocol(SUBPROTOCOL)]


@dataclass
class Owner:
    """The session as a link sees it: records every callback."""

    accept: bool = True  # answer an upgrade request with 101 at once
    link: Link | None = None
    events: list[object] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def link_request(self, request: Request) -> None:
        self.requests.append(request)
        if self.accept:
            assert isinstance(self.link, ServerLink)
            self.link.accept(request)

    def link_open(self) -> None:
        self.events.append("open")

    def link_message(self, message: Message) -> None:
        self.messages.append(bytes(message))

    def link_violation(self, exc: ProtocolViolation) -> None:
        self.events.append(("violation", str(exc)))
        assert self.link is not None
        self.link.fail(1002, str(exc))

    def link_abuse(self, key: str, reason: str, drop: bool) -> None:
        self.events.append(("abuse", key))
        assert self.link is not None
        self.link.fail(1002, reason)
        if drop:
            self.link.abort(reason)

    def link_paused(self, paused: bool) -> None:
        self.events.append(("paused", paused))

    def link_closing(self) -> None:
        self.events.append("closing")

    def link_lost(self, reason: str) -> None:
        self.events.append(("lost", reason))


@dataclass
class Pair:
    client: Link
    server: ServerLink
    client_owner: Owner
    server_owner: Owner
    ct: FakeTransport
    st: FakeTransport

    def pump(self) -> None:
        pump(self.ct, self.st)


def guard(**limits: int) -> SessionGuard:
    resolved = ServerLimits(**limits).resolve(1024)  # type: ignore[arg-type]
    return SessionGuard(resolved, Slots(8), Slots(8), Slots(64), Slots(64), lambda *_: None)


def make_pair(
    *,
    pings: tuple[float | None, float] = (None, 20.0),
    max_data: int = 100,
    server_guard: SessionGuard | None = None,
    accept: bool = True,
) -> Pair:
    client_owner, server_owner = Owner(), Owner(accept=accept)
    uri = parse_uri("ws://127.0.0.1/aiowstunnel")
    ws = ClientProtocol(uri, subprotocols=PROTOCOLS)
    settings = SessionSettings(ping_interval=pings[0], ping_timeout=pings[1])
    client = Link(ws, client_owner, settings, max_data=max_data)
    server = ServerLink(
        ServerProtocol(subprotocols=PROTOCOLS),
        server_owner,
        settings,
        guard=server_guard,
        max_data=max_data,
    )
    client_owner.link, server_owner.link = client, server
    ct, st = FakeTransport(client), FakeTransport(server, ("127.0.0.1", 40001))
    client.connection_made(ct)
    server.connection_made(st)
    assert isinstance(client.ws, ClientProtocol)
    client.send_request(client.ws.connect())
    pair = Pair(client, server, client_owner, server_owner, ct, st)
    pair.pump()
    return pair


async def test_the_upgrade_opens_both_ends_and_then_the_data_path() -> None:
    pair = make_pair()
    assert pair.server_owner.events == ["open"] and pair.client_owner.events == ["open"]
    assert pair.client.opened and pair.server.opened
    response = pair.client.handshake.result()
    assert response.status_code == 101  # type: ignore[union-attr]
    assert pair.server.peer == "127.0.0.1:40001"
    pair.client.send_message(b"hello")
    pair.client.flush()
    pair.server.send_message(b"hi")
    pair.server.flush()
    pair.pump()
    assert pair.server_owner.messages == [b"hello"] and pair.client_owner.messages == [b"hi"]
    # From the first frame boundary after the upgrade, the link cuts BINARY frames itself.
    assert pair.client.framer.splitter is not None and pair.server.framer.splitter is not None


@pytest.mark.parametrize("own_framing", [True, False], ids=["own-framing", "websockets"])
@pytest.mark.parametrize("side", ["client", "server"])
async def test_resumable_data_is_framed_once_logged_as_sent_and_replayed(
    side: str, own_framing: bool
) -> None:
    """A resumable session's DATA: the frames written are the frames logged (no second
    copy, no second split), a replay reads the messages back from them, a log that
    becomes full stops the streams once, and a detached session logs without sending."""
    pair = make_pair(max_data=100)
    link, owner = (
        (pair.client, pair.server_owner) if side == "client" else (pair.server, pair.client_owner)
    )
    link.framer.own = own_framing
    resumption = Resumption(b"s" * 16, 60.0)
    resumption.log = ReplayLog(max_bytes=250)
    stops: list[int] = []
    payload = bytearray(range(250))  # the reused read buffer: changed once sent
    resumption.send_data(link, 3, memoryview(payload), True, lambda: stops.append(1))
    payload[:] = bytes(250)
    link.flush()
    pair.pump()
    head = data_header(3)
    sent = [head + bytes(range(100)), head + bytes(range(100, 200)), head + bytes(range(200, 250))]
    assert owner.messages == sent
    assert resumption.full and stops == [1]  # full at the third frame: stopped once
    resumption.send_data(link, 3, memoryview(b"detached"), False, lambda: stops.append(2))
    pair.pump()
    assert owner.messages == sent and stops == [1]  # not sent; already full: no new stop
    assert resumption.replay(0) == [*sent, head + b"detached"]


def test_a_control_message_that_fills_the_log_stops_the_streams_and_a_confirmation_resumes_them():
    """Every change of the log's full is told, not only one made by DATA: a WINDOW or an
    OPEN may be the message that fills it (the streams would read on into log_overflow)."""
    resumption = Resumption(b"s" * 16, 60.0)
    resumption.log = ReplayLog(max_bytes=100)
    resumption.sent(b"\x01" + bytes(98))  # an OPEN of 99 bytes: not full yet
    assert not resumption.full_changed()
    resumption.sent(b"\x03" + bytes(9))  # a FIN: 109 bytes held, full
    assert resumption.full and resumption.full_changed()
    assert not resumption.full_changed()  # told once
    rooms: list[int] = []
    ack = resume.encode_ack(2)
    assert resumption.received(ack, lambda: rooms.append(1)) is None
    assert not resumption.full and rooms == [1]


@pytest.mark.parametrize("own_framing", [True, False], ids=["own-framing", "websockets"])
async def test_messages_and_data_cross_both_ways_in_order(own_framing: bool) -> None:
    pair = make_pair(max_data=100)
    for link in (pair.client, pair.server):
        link.framer.own = own_framing
    payload = bytes(range(250))
    for link in (pair.client, pair.server):
        link.send_message(b"first")
        link.send_data(3, memoryview(payload))  # three frames: 100, 100, 50
        link.send_data(3, memoryview(b"rtt"))  # one frame, straight to the transport
        link.send_message(b"last")
        link.flush()
    pair.pump()
    head = data_header(3)
    expected = [
        b"first",
        head + payload[:100],
        head + payload[100:200],
        head + payload[200:],
        head + b"rtt",
        b"last",
    ]
    assert pair.server_owner.messages == expected  # masked by the client, unmasked here
    assert pair.client_owner.messages == expected


async def test_a_fragmented_message_is_joined_and_later_ones_still_arrive() -> None:
    pair = make_pair()
    pair.client.ws.send_binary(b"frag", fin=False)
    pair.client.ws.send_continuation(b"mented", fin=True)
    pair.client.send_message(b"after")
    pair.client.flush()
    pair.pump()
    assert pair.server_owner.messages == [b"fragmented", b"after"]


async def test_a_text_message_is_a_violation_and_fails_the_link() -> None:
    pair = make_pair()
    pair.client.ws.send_text(b"hello?")
    pair.client.flush()
    pair.pump()
    [(kind, reason)] = pair.server_owner.events[1:2]  # type: ignore[misc]
    assert kind == "violation" and "binary messages only" in reason
    assert "closing" in pair.client_owner.events
    assert pair.client.close_reason.startswith("closed by peer: 1002")
    assert not pair.client.can_send and not pair.server.can_send


async def test_the_closing_handshake_reports_closing_then_lost() -> None:
    pair = make_pair()
    pair.client.close(1000, "bye")
    pair.pump()
    assert "closing" in pair.server_owner.events
    assert pair.server.close_reason == "closed by peer: 1000 bye"
    assert pair.st.eof_written  # the server ends its half of the TCP connection (RFC 6455)
    for link in (pair.client, pair.server):
        link.connection_lost(None)
    assert pair.server_owner.events[-1] == ("lost", "closed by peer: 1000 bye")
    assert pair.client_owner.events[-1][0] == "lost"  # type: ignore[index]
    assert pair.client.handshake.done()


async def test_a_full_write_buffer_pauses_the_owner_and_the_server_stops_reading() -> None:
    pair = make_pair(server_guard=guard())
    pair.st.high = 1000
    pair.server.send_data(1, memoryview(b"z" * 5000))
    pair.server.flush()
    assert ("paused", True) in pair.server_owner.events and pair.server.paused
    assert not pair.st.reading  # a peer that does not read is not read either
    pair.st.drain()
    assert pair.server_owner.events[-1] == ("paused", False) and not pair.server.paused
    assert pair.st.reading


async def test_the_server_holds_what_follows_the_request_until_it_answers() -> None:
    pair = make_pair(server_guard=guard(), accept=False)
    [request] = pair.server_owner.requests
    early = b"".join(wsframe.binary_frame(b"", b"early", b"\x01\x02\x03\x04"))
    pair.server.data_received(early)  # pipelined behind the request, before the 101
    assert pair.server_owner.messages == [] and pair.st.take() == b""  # nothing answered
    assert pair.server.check_upgrade(request)
    pair.server.accept(request)
    assert pair.server_owner.messages == [b"early"]
    assert pair.st.take().startswith(b"HTTP/1.1 101")


async def test_a_request_head_over_the_budget_is_refused_with_431() -> None:
    owner = Owner()
    server = ServerLink(
        ServerProtocol(subprotocols=PROTOCOLS), owner, guard=guard(max_handshake_bytes=256)
    )
    owner.link = server
    transport = FakeTransport(server)
    server.connection_made(transport)
    server.data_received(b"GET /aiowstunnel HTTP/1.1\r\nX-Padding: " + b"a" * 300)
    assert transport.take().startswith(b"HTTP/1.1 431")
    assert owner.requests == []
    assert "request head larger than 256 bytes" in server.close_reason


async def test_keepalive_drops_a_silent_peer() -> None:
    pair = make_pair(pings=(0.02, 0.05))
    await asyncio.sleep(0.3)  # the client never answers: its transport is never read
    assert pair.st.aborted
    assert pair.server.close_reason.startswith("peer silent for")


async def test_keepalive_keeps_a_peer_that_answers() -> None:
    pair = make_pair(pings=(0.02, 0.05))
    for _ in range(15):
        await asyncio.sleep(0.02)
        pair.pump()  # pings and pongs cross
    assert not pair.st.aborted and not pair.ct.aborted


async def test_a_ping_flood_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keepalive, "PING_BURST", 5)
    pair = make_pair()
    for i in range(6):
        pair.client.ws.send_ping(bytes([i]))
    pair.client.flush()
    pair.pump()
    assert ("abuse", "ping-flood") in pair.server_owner.events
    assert pair.st.aborted


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1", 1.0),
        (" 30 ", 30.0),
        ("3600", 3600.0),
        (None, None),  # none sent: the backoff decides
        ("0", None),  # would retry in a tight loop
        ("3601", None),  # past what a client waits on a server's word
        ("-1", None),
        ("1.5", None),  # not HTTP's delay-seconds
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # a date: not taken
        ("99999999999999999999", None),
        ("²", None),  # a digit to str.isdigit, not to int()
        ("\u0661\u0660", None),  # Arabic-Indic ten: int() takes it, HTTP does not
        ("", None),
    ],
)
def test_a_servers_retry_after_is_used_only_when_it_is_a_sane_number(header, seconds):
    assert retry_after(header) == seconds


async def test_a_refusal_that_comes_before_the_request_is_the_answer_and_nothing_is_sent():
    # A busy server answers 503 as the connection opens; the client's request would
    # follow websockets' EOF (a RuntimeError on a real transport, which ended the tunnel).
    owner = Owner()
    ws = ClientProtocol(parse_uri("ws://127.0.0.1/aiowstunnel"), subprotocols=PROTOCOLS)
    link = Link(ws, owner)
    owner.link = link
    transport = FakeTransport(link)
    link.connection_made(transport)
    body = b"too many handshakes in progress: retry later\n"
    link.data_received(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    link.send_request(ws.connect())
    assert transport.written == b"" and transport.eof_written
    with pytest.raises(HandshakeRefused) as refused:
        link.handshake.result()
    assert (refused.value.status, refused.value.retry_after) == (503, 1.0)
    assert "too many handshakes" in refused.value.reason


async def test_a_retry_after_counts_only_on_a_503():
    # a proxy's 401 or 403 with a Retry-After is no invitation to retry without backoff
    for status, expected in ((503, 1.0), (401, None), (403, None), (429, None)):
        owner = Owner()
        ws = ClientProtocol(parse_uri("ws://127.0.0.1/aiowstunnel"), subprotocols=PROTOCOLS)
        link = Link(ws, owner)
        owner.link = link
        link.connection_made(FakeTransport(link))
        link.send_request(ws.connect())
        head = b"HTTP/1.1 %d Nope\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
        link.data_received(head % status)
        with pytest.raises(HandshakeRefused) as refused:
            link.handshake.result()
        assert refused.value.retry_after == expected, status


async def test_each_link_times_its_round_trip_at_open_with_no_keepalive() -> None:
    """The ping a link sends at open is answered, and its pong times the path (the replay
    log's limit is measured against it), even with ping_interval unset."""
    pair = make_pair()  # pings=(None, ...): no keepalive
    for _ in range(3):
        pair.pump()
    for link in (pair.client, pair.server):
        assert 0.0 <= link.round_trip < 1.0
    before = pair.client.round_trip
    pair.server.ws.send_pong(b"not ours")  # an unsolicited pong times nothing
    pair.server.flush()
    pair.pump()
    assert pair.client.round_trip == before
