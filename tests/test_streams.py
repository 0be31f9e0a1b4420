"""Tests for aiowstunnel/streams.py and tcp.py: the stream table between a real Mux and
TcpStreams on fake transports (tests/fakes.py), with a second Mux as the peer. No socket:
each test drives the socket events by hand and checks the frames and the socket calls."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiowstunnel import mux as m
from aiowstunnel.held import HeldConnection
from aiowstunnel.resets import Cut
from aiowstunnel.stats import TunnelStats
from aiowstunnel.streams import StreamTable
from aiowstunnel.tcp import READ_SIZE, SPILL_READ, STREAM_HIGH_WATER, TcpStream
from aiowstunnel.wire import (
    Data,
    Fin,
    Frame,
    Open,
    OpenOk,
    Rst,
    WindowUpdate,
    parse_frame,
    split_data,
)

from .fakes import FakeTransport

MAX_DATA = 100


@dataclass
class Host:
    """The session as the table sees it: records what is sent."""

    accepting: bool = True
    sending: bool = True
    paused: bool = False
    peer: str = "192.0.2.9:443"
    sent: list[bytes] = field(default_factory=list)
    idle: int = 0
    exhausted: list[str] = field(default_factory=list)

    def send(self, message: bytes) -> None:
        self.sent.append(message)

    def send_data(self, stream_id: int, data: memoryview) -> None:
        self.sent.extend(h + bytes(c) for h, c in split_data(stream_id, data, MAX_DATA))

    def flush(self) -> None:
        pass

    def ids_exhausted(self, reason: str) -> None:
        self.exhausted.append(reason)

    def streams_idle(self) -> None:
        self.idle += 1

    def log_extra(self) -> dict[str, str | None]:
        return {}

    def frames(self) -> list[Frame]:
        out = [parse_frame(message) for message in self.sent]
        self.sent.clear()
        return out


class Pair:
    """A table (the client's side) and the peer's Mux; ``to_peer`` delivers what the table
    sent, ``from_peer`` feeds the peer's messages back as the session would dispatch them."""

    def __init__(self, window: int = 1000, peer_window: int = 1000) -> None:
        self.mux = m.Mux(True, window=window, max_data=MAX_DATA)
        self.peer = m.Mux(False, window=peer_window, max_data=MAX_DATA)
        self.host = Host()
        self.stats = TunnelStats("t")
        self.table = StreamTable(self.mux, self.host, self.stats)

    def connect(self) -> tuple[TcpStream, FakeTransport]:
        """A local connection accepted (the listener side): OPEN goes out."""
        stream = TcpStream(self.table)
        transport = FakeTransport(stream)
        stream.connection_made(transport)
        return stream, transport

    def to_peer(self) -> list[m.Event]:
        events = []
        for message in self.host.sent:
            events += self.peer.receive(message)
        self.host.sent.clear()
        return events

    def from_peer(self, message: bytes) -> None:
        data = self.mux.receive_data(message)
        if data is not None:
            self.table.deliver(*data)
            return
        for event in self.mux.receive(message):
            if isinstance(event, m.DataReceived):
                self.table.deliver(event.stream_id, event.data)
            elif isinstance(event, m.CreditGranted):
                self.table.credit_granted(event.stream_id)
            elif isinstance(event, m.StreamAccepted):
                self.table.peer_accepted(event.stream_id)
            elif isinstance(event, m.StreamEnded):
                self.table.peer_ended(event.stream_id)
            elif isinstance(event, m.StreamReset):
                self.table.cut_id(event.stream_id, Cut.PEER_RESET, event.reason)
            else:
                raise AssertionError(event)

    def opened(self) -> tuple[TcpStream, FakeTransport]:
        stream, transport = self.connect()
        [requested] = self.to_peer()
        assert isinstance(requested, m.StreamRequested)
        self.from_peer(self.peer.accept_stream(requested.stream_id))
        return stream, transport


def read(stream: TcpStream, data: bytes) -> int:
    """The socket delivers ``data`` the way asyncio does: get_buffer, fill, buffer_updated.
    Returns how much the buffer could take (the rest stays in the socket)."""
    buffer = stream.get_buffer(-1)
    n = min(len(buffer), len(data))
    buffer[:n] = data[:n]
    stream.buffer_updated(n)
    return n


def test_a_local_connection_opens_a_stream_and_waits_for_open_ok() -> None:
    pair = Pair()
    stream, transport = pair.connect()
    [frame] = pair.host.frames()
    assert frame == Open(1, 1000, "127.0.0.1:40000")
    assert stream.stream_id == 1 and 1 in pair.table
    assert not transport.reading  # nothing is read before OPEN_OK
    assert not pair.table.accepted(stream)
    assert len(stream.get_buffer(-1)) == SPILL_READ  # a read despite the pause is small
    assert pair.stats.streams_opened == pair.stats.streams_active == 1


def test_data_and_eof_before_open_ok_wait_then_go_in_order() -> None:
    pair = Pair()
    stream, _transport = pair.connect()
    pair.to_peer()
    read(stream, b"early")  # a transport that dropped the pause
    stream.eof_received()
    assert pair.host.sent == []  # neither DATA nor FIN before OPEN_OK
    assert pair.table.eof_pending(stream)
    pair.from_peer(pair.peer.accept_stream(1))
    assert pair.host.frames() == [Data(1, memoryview(b"early")), Fin(1)]
    assert stream.backlog is None and not pair.table.eof_pending(stream)


def test_reads_are_sized_to_the_credit_and_what_credit_lacks_waits() -> None:
    pair = Pair(peer_window=250)
    stream, transport = pair.opened()
    assert transport.reading
    assert len(stream.get_buffer(-1)) == 250  # the peer's window, not READ_SIZE
    assert read(stream, b"a" * 250) == 250
    assert [len(f.data) for f in pair.host.frames()] == [100, 100, 50]  # max_data each
    assert len(stream.get_buffer(-1)) == SPILL_READ  # no credit: one small read at most
    read(stream, b"b" * 10)
    assert stream.backlog is not None and bytes(stream.backlog) == b"b" * 10
    assert not transport.reading  # paused while a backlog waits
    pair.from_peer(WindowUpdate(1, 4).serialize())  # some credit: part of the backlog
    assert pair.host.frames() == [Data(1, memoryview(b"b" * 4))]
    assert not transport.reading
    pair.from_peer(WindowUpdate(1, 100).serialize())
    assert pair.host.frames() == [Data(1, memoryview(b"b" * 6))]
    assert stream.backlog is None and transport.reading
    assert len(stream.get_buffer(-1)) == 94
    assert pair.stats.sent_bytes == stream.sent == 260


def test_a_read_never_takes_more_than_read_size() -> None:
    pair = Pair(peer_window=4 * READ_SIZE)
    stream, _ = pair.opened()
    assert len(stream.get_buffer(-1)) == READ_SIZE


def test_credit_goes_back_as_the_socket_takes_the_bytes_and_never_while_paused() -> None:
    pair = Pair(window=4 * STREAM_HIGH_WATER)
    stream, transport = pair.opened()
    pair.host.frames()
    quarter = STREAM_HIGH_WATER  # the window's grant threshold
    for _ in range(2):  # the socket's buffer goes over its high-water mark: paused
        pair.peer.reserve_data(1, quarter)
        pair.from_peer(Data(1, b"x" * quarter).serialize())
    assert transport.write_paused
    assert pair.host.frames() == [WindowUpdate(1, quarter)]  # the first, before the pause
    pair.peer.reserve_data(1, quarter)
    pair.from_peer(Data(1, b"y" * quarter).serialize())
    assert pair.host.frames() == []  # held back: the application does not read
    transport.drain()  # it reads: everything owed goes back at once
    assert pair.host.frames() == [WindowUpdate(1, 2 * quarter)]
    assert bytes(transport.written) == b"x" * 2 * quarter + b"y" * quarter
    assert pair.stats.received_bytes == stream.received == 3 * quarter


def test_half_close_each_way_then_the_socket_closes_and_is_forgotten() -> None:
    pair = Pair()
    stream, transport = pair.opened()
    pair.from_peer(pair.peer.send_fin(1))
    assert transport.eof_written and not transport.closing  # half-closed: we may still send
    read(stream, b"last words")
    stream.eof_received()
    assert pair.host.frames() == [Data(1, memoryview(b"last words")), Fin(1)]
    assert transport.closing and not transport.aborted  # a clean close, after the buffer
    assert 1 not in pair.table and 1 not in pair.mux
    assert pair.host.idle == 1 and pair.table.idle.is_set()
    assert pair.stats.streams_active == 0


def test_a_peer_reset_resets_the_socket_and_is_counted() -> None:
    pair = Pair()
    _stream, transport = pair.opened()
    pair.from_peer(pair.peer.reset_stream(1, "gone"))
    assert transport.aborted  # RST to the application, not a clean EOF
    assert pair.stats.stream_resets["peer_reset"] == 1
    assert 1 not in pair.table


def test_a_local_socket_lost_sends_rst_with_the_reason() -> None:
    pair = Pair()
    stream, _ = pair.opened()
    pair.host.frames()
    stream.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    [rst] = pair.host.frames()
    assert isinstance(rst, Rst) and rst.stream_id == 1
    assert "connection lost" in rst.reason
    assert 1 not in pair.table and 1 not in pair.mux


def test_nothing_is_sent_for_a_lost_socket_once_the_session_is_closed() -> None:
    pair = Pair()
    stream, _ = pair.opened()
    pair.host.frames()
    pair.host.sending = False
    stream.connection_lost(None)
    assert pair.host.sent == []
    assert 1 not in pair.table and 1 not in pair.mux  # forgotten on both levels


def test_reset_all_resets_both_ends_of_every_stream() -> None:
    pair = Pair()
    opened = [pair.opened() for _ in range(3)]
    pair.host.frames()
    assert pair.table.reset_all(Cut.EXPIRED, "session expired") == 3
    frames = pair.host.frames()
    assert [(f.stream_id, f.reason) for f in frames if isinstance(f, Rst)] == [
        (1, "session expired"),
        (3, "session expired"),
        (5, "session expired"),
    ]
    assert all(transport.aborted for _, transport in opened)
    assert pair.stats.stream_resets["expired"] == 3
    assert len(pair.table) == 0 and len(pair.mux) == 0


def test_cut_all_resets_the_sockets_and_sends_nothing() -> None:
    pair = Pair()
    opened = [pair.opened() for _ in range(2)]
    pair.host.frames()
    assert pair.table.cut_all(Cut.SESSION_LOST, "link lost") == 2
    assert pair.host.sent == []
    assert all(transport.aborted for _, transport in opened)
    assert pair.table.idle.is_set()


def test_a_full_output_stops_every_stream_reading_until_it_drains() -> None:
    pair = Pair()
    opened = [pair.opened() for _ in range(3)]
    pair.host.paused = True
    pair.table.update_all()
    assert not any(transport.reading for _, transport in opened)
    pair.host.paused = False
    pair.table.update_all()
    assert all(transport.reading for _, transport in opened)


def test_a_connection_while_the_session_is_not_open_is_reset() -> None:
    pair = Pair()
    pair.host.accepting = False
    _stream, transport = pair.connect()
    assert transport.aborted and pair.host.sent == []
    assert pair.stats.stream_open_failures["tunnel_down"] == 1
    assert pair.stats.stream_resets["tunnel_down"] == 1


def test_stream_ids_exhausted_cuts_the_connection_and_asks_the_session_to_go() -> None:
    pair = Pair()
    pair.mux._next_id = 0xFFFFFFFF + 2  # past the last odd id
    _stream, transport = pair.connect()
    assert transport.aborted
    assert pair.host.exhausted == ["stream ids exhausted"]
    assert pair.stats.stream_resets["open_failed"] == 1


def test_the_dialing_side_accepts_at_once_and_reads() -> None:
    pair = Pair()
    sid, message = pair.peer.open_stream("198.51.100.1:5")
    [requested] = pair.mux.receive(message)
    assert isinstance(requested, m.StreamRequested)
    stream = TcpStream(pair.table, sid)  # what the session's dial makes
    transport = FakeTransport(stream)
    stream.connection_made(transport)
    [ok] = pair.to_peer()
    assert ok == m.StreamAccepted(sid)
    assert pair.table.accepted(stream) and transport.reading
    assert len(stream.get_buffer(-1)) == 1000  # the opener's window


def test_a_dial_that_completes_after_the_peer_gave_up_is_reset() -> None:
    pair = Pair()
    sid, message = pair.peer.open_stream()
    pair.mux.receive(message)
    pair.mux.receive(pair.peer.reset_stream(sid, "never mind"))
    stream = TcpStream(pair.table, sid)
    transport = FakeTransport(stream)
    stream.connection_made(transport)
    assert transport.aborted and pair.host.sent == []
    assert pair.stats.stream_resets["peer_reset"] == 1


# -- early data (protocol.md, Early data) ------------------------------------------------


def early_pair(early: int, peer_window: int = 1000) -> Pair:
    """A Pair whose peer announced ``early`` bytes of early data in the handshake."""
    pair = Pair(peer_window=peer_window)
    pair.mux.early_send = early
    pair.peer.early_receive = early
    return pair


def test_early_data_goes_right_after_the_open_and_the_fin_waits_for_open_ok() -> None:
    pair = early_pair(64)
    stream, transport = pair.connect()
    assert transport.reading  # it may read its early data at once
    assert len(stream.get_buffer(-1)) == 64  # sized to the early allowance
    read(stream, b"GET / HTTP/1.1\r\n\r\n")
    stream.eof_received()
    sent = [parse_frame(message) for message in pair.host.sent]
    assert sent[1:] == [Data(1, memoryview(b"GET / HTTP/1.1\r\n\r\n"))]  # no FIN
    assert [type(e) for e in pair.to_peer()] == [m.StreamRequested, m.DataReceived]
    pair.from_peer(pair.peer.accept_stream(1))
    assert pair.host.frames() == [Fin(1)]  # after OPEN_OK, never before


def test_what_the_early_allowance_lacks_waits_for_open_ok() -> None:
    pair = early_pair(4)
    stream, transport = pair.connect()
    pair.to_peer()
    assert read(stream, b"abcdefgh") == 4  # a read sized to the allowance
    assert read(stream, b"efgh") == 4  # the next finds it used up: it waits
    assert not transport.reading  # paused with a backlog until OPEN_OK
    assert pair.host.frames() == [Data(1, memoryview(b"abcd"))]
    pair.from_peer(pair.peer.accept_stream(1))
    assert pair.host.frames() == [Data(1, memoryview(b"efgh"))]
    assert transport.reading
    # the 4 early bytes counted against the 1000 the peer announced in OPEN_OK
    assert pair.mux.credit(1) == 1000 - 8


def test_no_early_data_to_a_peer_that_announced_none() -> None:
    pair = early_pair(0)
    stream, transport = pair.connect()
    pair.to_peer()
    assert not transport.reading
    read(stream, b"hi")
    assert pair.host.sent == []  # waits for OPEN_OK, as with peers from before early data


def test_a_stream_refused_as_its_peer_goes_away_moves_with_its_early_data() -> None:
    pair = early_pair(64)
    pair.table.keeps_early = True  # as the client's CONNECT sessions (pool.reopen)
    stream, _transport = pair.connect()
    read(stream, b"early")
    pair.to_peer()
    read_more = pair.table.release(1)
    assert read_more is not None
    _transport, data, eof = read_more
    assert data == b"early" and not eof  # the next session sends it again, whole


def test_the_dialing_side_keeps_early_data_until_it_has_connected() -> None:
    pair = early_pair(64)
    opener, _ = pair.connect()
    read(opener, b"hello")
    host = Host()
    dialer = StreamTable(pair.peer, host, TunnelStats("t"))
    for message in pair.host.sent:  # OPEN, then early DATA, before the dial is done
        for event in pair.peer.receive(message):
            if isinstance(event, m.DataReceived):
                dialer.deliver(event.stream_id, event.data)
    pair.host.sent.clear()
    stream = TcpStream(dialer, 1)
    stream.before_open = lambda transport: transport.write(b"PROXY UNKNOWN\r\n")
    transport = FakeTransport(stream)
    stream.connection_made(transport)
    assert bytes(transport.written) == b"PROXY UNKNOWN\r\nhello"  # the header first
    assert host.frames() == [OpenOk(1, 1000)]  # and no WINDOW: 5 bytes are not a quarter


def test_early_data_of_a_stream_reset_while_dialing_is_not_kept() -> None:
    pair = early_pair(64)
    dialer = StreamTable(pair.peer, Host(), TunnelStats("t"))
    for message in (Open(1, 1000).serialize(), Data(1, b"x" * 64).serialize()):
        for event in pair.peer.receive(message):
            if isinstance(event, m.DataReceived):
                dialer.deliver(event.stream_id, event.data)
    assert dialer.release(1) is None  # (dialing: nothing to release)
    pair.peer.receive(Rst(1, "gone").serialize())
    dialer.cut_id(1, Cut.PEER_RESET, "gone")  # as the session dispatches StreamReset
    # the dial goes on for up to connect_timeout: its early bytes are not kept meanwhile
    stream = TcpStream(dialer, 1)
    transport = FakeTransport(stream)
    stream.connection_made(transport)
    assert transport.written == b"" and transport.aborted  # reset, nothing written


class MovableTransport(FakeTransport):
    """A FakeTransport a held connection can take over (set_protocol)."""

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol


def moved(old_early: int, new_early: int, old_paused: bool) -> FakeTransport:
    """A stream refused as its peer goes away, before OPEN_OK, moved as pool.reopen does
    (release, a held connection, attached to the next session's table), then accepted
    there. Returns its socket's transport."""

    async def run() -> FakeTransport:
        old = early_pair(old_early)
        old.table.keeps_early = True
        old.host.paused = old_paused  # e.g. the old link's output full when GOAWAY came
        stream = TcpStream(old.table)
        transport = MovableTransport(stream)
        stream.connection_made(transport)
        old.to_peer()
        taken = old.table.release(1)
        assert taken is not None
        new = early_pair(new_early)
        held = HeldConnection(
            lambda t: None, 1.0, lambda h: h.attach(TcpStream(new.table)), lambda h: None
        )
        held.adopt(*taken)
        new.to_peer()
        new.from_peer(new.peer.accept_stream(1))  # OPEN_OK on the new session
        return transport

    return asyncio.run(run())


def test_a_moved_stream_reads_again_whatever_its_old_session_left_it_at() -> None:
    assert moved(old_early=0, new_early=0, old_paused=False).reading
    assert moved(old_early=0, new_early=64, old_paused=False).reading  # paused there
    assert moved(old_early=64, new_early=64, old_paused=True).reading  # output full there
