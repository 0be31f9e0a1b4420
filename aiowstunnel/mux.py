"""The protocol state of one session, sans-I/O: every stream, both directions
(docs/protocol.md, Streams and Flow control).

:class:`Mux` takes the peer's messages and returns events; each of its send methods
returns the message to send, and every answer it makes to the peer's frames comes back as
a :class:`Reply` event among the others: one output channel, as websockets' and h2's. It
allocates stream ids, runs each stream's transitions (``wire.TRANSITIONS``) and holds its
windows (``windows``), and answers questions about a stream, so that nothing above it
reads its tables.
"""

from __future__ import annotations

from .errors import LocalProtocolError, ProtocolViolation
from .events import (
    CreditGranted,
    DatagramReceived,
    DataReceived,
    Event,
    FlowRequested,
    GoAwayReceived,
    Reply,
    StreamAccepted,
    StreamEnded,
    StreamLimited,
    StreamRefused,
    StreamRequested,
    StreamReset,
    StreamViolated,
)
from .windows import ReceiveWindow, Window
from .wire import (
    DEFAULT_MAX_DATA,
    DEFAULT_MAX_STREAMS,
    DEFAULT_WINDOW,
    EARLY_DATA,
    HEADER_SIZE,
    MAX_WINDOW,
    TRANSITIONS,
    Data,
    Datagram,
    Fin,
    FlowOpen,
    Frame,
    GoAway,
    Move,
    Open,
    OpenFail,
    OpenOk,
    Rst,
    StreamState,
    WindowUpdate,
    data_stream,
    parse_frame,
)

#: the states in which DATA from the peer is legal (the RECV_DATA moves of TRANSITIONS)
_RECEIVES_DATA = frozenset(state for state, move in TRANSITIONS if move is Move.RECV_DATA)
#: the states in which we may send DATA. Neither data move changes a stream's state
#: (tests/test_wire.py holds that), so the per-message paths only check membership.
_SENDS_DATA = frozenset(state for state, move in TRANSITIONS if move is Move.SEND_DATA)
#: the states in which credit is of no more use to the peer (it sent FIN, or all is over)
_PEER_SENDS_NO_MORE = frozenset((StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED))
#: the states in which we have not sent FIN yet (an EOF of the local socket still waits)
_FIN_UNSENT = frozenset((StreamState.OPENING, StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE))


def _may_send(machine: StreamMachine) -> bool:
    """DATA may go out on the stream, credit permitting: it is open, or it is ours and
    opening with early data (``early`` is zeroed at OPEN_OK)."""
    return machine.state in _SENDS_DATA or machine.early > 0


class StreamMachine:
    """The protocol state of one stream: its state and both credit windows."""

    __slots__ = ("datagram", "early", "recv_window", "send_window", "state", "stream_id")

    def __init__(self, stream_id: int, window: int, datagram: bool = False, early: int = 0) -> None:
        self.stream_id = stream_id
        self.state = StreamState.OPENING
        self.recv_window = ReceiveWindow(window)  # what the peer may still send us
        #: what we may still send; set by OPEN / OPEN_OK, until then the early data
        self.send_window = Window(early)
        #: a stream we opened: the early data the peer takes before its OPEN_OK (0: none)
        self.early = early
        #: a datagram flow (FLOW_OPEN): DATAGRAM frames only, outside the windows
        self.datagram = datagram
        if datagram:
            # No DATA is legal on a flow: with no credit, receive_data's fast path never
            # takes one, and the dispatch names the violation.
            self.recv_window.available = 0

    def move(self, move: Move, by_peer: bool) -> None:
        new = TRANSITIONS.get((self.state, move))
        if new is None:
            who = "peer" if by_peer else "local side"
            raise ProtocolViolation(
                f"{move.name} is illegal in state {self.state.value} ({who})", self.stream_id
            )
        self.state = new


class Mux:
    """The protocol state of one session: every stream, both directions.

    Send methods return the message (bytes) to send; :meth:`receive` takes one message and
    returns events, any answer to the peer among them as a :class:`Reply`.

    Args:
        client_side: True on the WebSocket client. Client-opened streams have odd ids,
            server-opened even ids, so ids never collide (protocol.md, Stream ids).
        window: our receive window per stream (announced in OPEN / OPEN_OK).
        max_data: the largest DATA payload we send.
        max_streams: streams the peer may have open with us at once.

    Early data (protocol.md): :attr:`early_receive` is what we take on each stream the peer
    opens before our OPEN_OK (we announce it in the handshake); :attr:`early_send` what the
    peer announced it takes on ours (0 until the handshake says, and for older peers).
    """

    def __init__(
        self,
        client_side: bool,
        window: int = DEFAULT_WINDOW,
        max_data: int = DEFAULT_MAX_DATA,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"window {window} out of range 1..{MAX_WINDOW}")
        self.client_side = client_side
        self.window = window
        self.max_data = max_data
        self.max_streams = max_streams
        self.early_receive = min(EARLY_DATA, window)
        self.early_send = 0
        self._streams: dict[int, StreamMachine] = {}
        self._next_id = 1 if client_side else 2
        self._peer_last_id = 0  # highest stream id the peer opened
        self.goaway_sent = False
        self.goaway_received = False

    # -- questions about the streams -------------------------------------------------

    def __contains__(self, stream_id: object) -> bool:
        """True while the stream is known here (not yet closed on both sides)."""
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def state(self, stream_id: int) -> StreamState | None:
        """The stream's state; None once it is closed and forgotten (or never was)."""
        machine = self._streams.get(stream_id)
        return None if machine is None else machine.state

    def accepted(self, stream_id: int) -> bool:
        """OPEN_OK was exchanged and the stream is still known: data may flow."""
        machine = self._streams.get(stream_id)
        return machine is not None and machine.state is not StreamState.OPENING

    def sendable(self, stream_id: int) -> bool:
        """We may send DATA on the stream now, credit permitting: it is open, or ours and
        opening with early data (protocol.md, Early data)."""
        machine = self._streams.get(stream_id)
        return machine is not None and _may_send(machine)

    def fin_unsent(self, stream_id: int) -> bool:
        """We may still send FIN on the stream (it is known and we have not sent one)."""
        machine = self._streams.get(stream_id)
        return machine is not None and machine.state in _FIN_UNSENT

    def credit(self, stream_id: int) -> int:
        """What we may send on the stream now."""
        machine = self._streams.get(stream_id)
        if machine is None or not _may_send(machine):
            return 0
        return machine.send_window.available

    # -- helpers ---------------------------------------------------------------------

    def _ours(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == self.client_side

    def _seen(self, stream_id: int) -> bool:
        """True when this id was opened once (it may be closed now)."""
        if self._ours(stream_id):
            return stream_id < self._next_id
        return stream_id <= self._peer_last_id

    def _end(self, machine: StreamMachine) -> None:
        if machine.state is StreamState.CLOSED:
            self._streams.pop(machine.stream_id, None)

    # -- sending -------------------------------------------------------------------

    def open_stream(self, origin: str = "", target: str = "") -> tuple[int, bytes]:
        """Allocate a stream id and build its OPEN (``target``: see :class:`~wire.Open`).
        Returns (stream id, message)."""
        if self.goaway_received or self.goaway_sent:
            raise LocalProtocolError("no new streams after GOAWAY")
        if self._next_id > 0xFFFFFFFF:
            raise LocalProtocolError("stream ids exhausted")
        stream_id = self._next_id
        self._next_id += 2
        early = min(self.early_send, EARLY_DATA)
        self._streams[stream_id] = StreamMachine(stream_id, self.window, early=early)
        return stream_id, Open(stream_id, self.window, origin, target).serialize()

    def open_flow(self, origin: str = "") -> tuple[int, bytes]:
        """Allocate a stream id for a datagram flow and build its FLOW_OPEN.
        Returns (stream id, message)."""
        stream_id, _ = self.open_stream(origin)
        self._streams[stream_id] = StreamMachine(stream_id, self.window, datagram=True)
        return stream_id, FlowOpen(stream_id, origin).serialize()

    def datagram_ok(self, stream_id: int, outgoing: bool) -> bool:
        """A DATAGRAM may go out (``outgoing``) or come in on the stream now: it is a flow,
        open, or opening and opened by the side that sends (protocol.md, Datagram flows:
        the opener sends from FLOW_OPEN on, the other side once it accepted). No credit."""
        machine = self._streams.get(stream_id)
        if machine is None or not machine.datagram:
            return False
        return machine.state is StreamState.OPEN or (
            machine.state is StreamState.OPENING and self._ours(stream_id) == outgoing
        )

    def accept_stream(self, stream_id: int) -> bytes:
        machine = self._streams[stream_id]
        machine.move(Move.SEND_OPEN_OK, by_peer=False)
        return OpenOk(stream_id, self.window).serialize()

    def refuse_stream(self, stream_id: int, reason: str) -> bytes:
        return self._close_locally(stream_id, OpenFail(stream_id, reason))

    def reset_stream(self, stream_id: int, reason: str) -> bytes:
        return self._close_locally(stream_id, Rst(stream_id, reason))

    def forget(self, stream_id: int) -> None:
        """Drop a stream without a frame: nothing can be sent for it any more (the
        session is closing); a late frame for it is then ignored as for a closed one."""
        self._streams.pop(stream_id, None)

    def _close_locally(self, stream_id: int, frame: Frame) -> bytes:
        machine = self._streams.pop(stream_id, None)
        if machine is not None:
            machine.move(Move.CLOSE, by_peer=False)
        return frame.serialize()

    def reserve_data(self, stream_id: int, size: int) -> int:
        """Take credit for up to ``size`` bytes of DATA; returns how many may be sent.

        The caller then sends that many bytes in DATA messages of at most
        :attr:`max_data` bytes each, each headed by ``wire.data_header`` (the session
        builds them straight into WebSocket frames, without a message object).
        """
        machine = self._streams[stream_id]
        if not _may_send(machine):
            machine.move(Move.SEND_DATA, by_peer=False)  # raises: illegal in this state
        window = machine.send_window
        n = min(size, window.available)
        window.available -= n  # (Window.consume's check holds: n is at most what is there)
        return n

    def send_fin(self, stream_id: int) -> bytes:
        machine = self._streams[stream_id]
        machine.move(Move.SEND_FIN, by_peer=False)
        self._end(machine)
        return Fin(stream_id).serialize()

    def grant(self, stream_id: int, n: int, flush: bool = False) -> bytes | None:
        """``n`` bytes of the stream left our buffers (written to the local socket).

        Returns the WINDOW message when the stream's :class:`~windows.ReceiveWindow`
        says credit is due (or, with ``flush``, whatever is owed), else None. Credit for
        a stream the peer can no longer use is dropped.
        """
        machine = self._streams.get(stream_id)
        if machine is None or machine.state in _PEER_SENDS_NO_MORE:
            return None
        increment = machine.recv_window.processed(n, flush)
        return WindowUpdate(stream_id, increment).serialize() if increment else None

    def hold_credit(self, stream_id: int, held: bool) -> bytes | None:
        """Hold back the stream's credit (its local socket is write-paused) or release
        it; returns the WINDOW message due on release, if any."""
        machine = self._streams.get(stream_id)
        if machine is None:
            return None
        if machine.state in _PEER_SENDS_NO_MORE:
            machine.recv_window.drop()
        return self._window_update(stream_id, machine.recv_window.hold(held))

    @staticmethod
    def _window_update(stream_id: int, increment: int) -> bytes | None:
        return WindowUpdate(stream_id, increment).serialize() if increment else None

    def goaway(self, reason: str) -> bytes:
        self.goaway_sent = True
        return GoAway(0, reason).serialize()

    # -- receiving -----------------------------------------------------------------

    def receive_data(
        self, message: bytes | bytearray | memoryview
    ) -> tuple[int, memoryview] | None:
        """:meth:`receive` for the common message, DATA on an open stream within its credit.

        Returns (stream id, payload), or None for any other message, which must then go through
        :meth:`receive` (nothing was changed). Same outcome as :meth:`receive`, without
        building the frame, the event list and the dispatch (the per-message cost of
        every rtt, docs/performance.md).
        """
        stream_id = data_stream(message)  # native where built (wsframe.DATA_PATH)
        if not stream_id:
            return None
        machine = self._streams.get(stream_id)
        if machine is None or machine.state not in _RECEIVES_DATA:
            return None
        window = machine.recv_window
        n = len(message) - HEADER_SIZE
        if n > window.available:
            return None
        window.available -= n
        return stream_id, memoryview(message)[HEADER_SIZE:]

    def receive(self, message: bytes | bytearray | memoryview) -> list[Event]:
        """Process one WebSocket message from the peer.

        Returns:
            The events for the session. A stream-level fault comes back as
            :class:`StreamViolated`, followed by the :class:`Reply` carrying its RST.

        Raises:
            ProtocolViolation: a session-level fault (the session closes with 1002).
        """
        frame = parse_frame(message)
        try:
            return self._dispatch(frame)
        except ProtocolViolation as exc:
            if exc.stream_id is None:
                raise
            machine = self._streams.pop(exc.stream_id, None)
            events: list[Event] = [StreamViolated(exc.stream_id, str(exc))]
            if machine is not None or not isinstance(frame, Rst | OpenFail):
                events.append(Reply(Rst(exc.stream_id, str(exc)).serialize()))
            return events

    def _dispatch(self, frame: Frame) -> list[Event]:
        sid = frame.stream_id
        if isinstance(frame, Datagram):
            return self._receive_datagram(frame)
        if isinstance(frame, Data):
            machine = self._known(sid, frame)
            if machine is None:
                return []
            if machine.datagram:
                raise ProtocolViolation("DATA on a datagram flow", sid)
            if machine.state is StreamState.OPENING and not self._ours(sid):
                return self._receive_early(machine, frame)
            machine.move(Move.RECV_DATA, by_peer=True)
            try:
                machine.recv_window.consume(len(frame.data))
            except ProtocolViolation as exc:
                raise ProtocolViolation(str(exc), sid) from None
            return [DataReceived(sid, frame.data)]  # type: ignore[arg-type]
        if isinstance(frame, WindowUpdate):
            machine = self._known(sid, frame)
            if machine is None:
                return []
            if machine.state is StreamState.OPENING:
                raise ProtocolViolation("WINDOW before the stream is open", sid)
            if machine.datagram:
                raise ProtocolViolation("WINDOW on a datagram flow", sid)
            try:
                machine.send_window.grant(frame.increment)
            except ProtocolViolation as exc:
                raise ProtocolViolation(str(exc), sid) from None
            return [CreditGranted(sid)]
        if isinstance(frame, Open | FlowOpen):
            return self._receive_open(frame)
        if isinstance(frame, OpenOk):
            machine = self._known(sid, frame)
            if machine is None:
                return []
            if not self._ours(sid):
                raise ProtocolViolation("OPEN_OK for a stream the peer opened", sid)
            machine.move(Move.RECV_OPEN_OK, by_peer=True)
            # The early data we sent counts against the window the peer announces now.
            early_sent = machine.early - machine.send_window.available
            if early_sent > frame.window:
                raise ProtocolViolation(
                    f"OPEN_OK window {frame.window} is smaller than the {early_sent} bytes "
                    "of early data it took",
                    sid,
                )
            machine.early = 0
            machine.send_window = Window(frame.window - early_sent)
            return [StreamAccepted(sid)]
        if isinstance(frame, Fin):
            machine = self._known(sid, frame)
            if machine is None:
                return []
            if machine.datagram:
                raise ProtocolViolation("FIN on a datagram flow (a flow ends with RST)", sid)
            machine.move(Move.RECV_FIN, by_peer=True)
            self._end(machine)
            return [StreamEnded(sid)]
        if isinstance(frame, Rst | OpenFail):
            # Never answered, even for an unknown stream: two sides that each RST what
            # they do not know would otherwise bounce RSTs forever.
            machine = self._streams.pop(sid, None)
            if machine is None:
                return []
            machine.move(Move.CLOSE, by_peer=True)
            if isinstance(frame, OpenFail):
                return [StreamRefused(sid, frame.reason)]
            return [StreamReset(sid, frame.reason)]
        assert isinstance(frame, GoAway)
        self.goaway_received = True
        return [GoAwayReceived(frame.reason)]

    def _receive_early(self, machine: StreamMachine, frame: Data) -> list[Event]:
        """DATA on a stream the peer opened, before our OPEN_OK: early data, taken up to
        what we announced (the dialing side keeps it until the target is connected)."""
        window = machine.recv_window
        taken = window.size - window.available + len(frame.data)
        if taken > self.early_receive:
            announced = self.early_receive
            raise ProtocolViolation(
                f"DATA before OPEN_OK beyond the {announced} bytes of early data announced "
                f"({taken})"
                if announced
                else "DATA before OPEN_OK (this side announced no early data)",
                machine.stream_id,
            )
        window.available -= len(frame.data)
        return [DataReceived(machine.stream_id, frame.data)]  # type: ignore[arg-type]

    def _known(self, sid: int, frame: Frame) -> StreamMachine | None:
        """The stream a frame is for; None to ignore a late frame on a closed stream."""
        machine = self._streams.get(sid)
        if machine is not None:
            return machine
        if self._seen(sid):
            # Frames in flight when the stream closed (e.g. DATA crossing our RST).
            return None
        raise ProtocolViolation(f"{frame.type.name} for unknown stream {sid}", sid)

    def _receive_datagram(self, frame: Datagram) -> list[Event]:
        sid = frame.stream_id
        machine = self._known(sid, frame)
        if machine is None:
            return []  # crossed our RST: dropped, as any late frame
        if not machine.datagram:
            raise ProtocolViolation("DATAGRAM on a byte stream", sid)
        # The opener may send from FLOW_OPEN on; the dialing side only after its OPEN_OK
        # (the check of udp.FlowTable's fast path, so both take the same datagrams).
        if not self.datagram_ok(sid, outgoing=False):
            state = machine.state
            where = "before OPEN_OK" if state is StreamState.OPENING else f"in {state.name}"
            raise ProtocolViolation(f"DATAGRAM {where}", sid)
        return [DatagramReceived(sid, frame.data)]  # type: ignore[arg-type]

    def _receive_open(self, frame: Open | FlowOpen) -> list[Event]:
        sid = frame.stream_id
        if self._ours(sid):
            raise ProtocolViolation(f"OPEN with stream id {sid} of our parity")
        if sid <= self._peer_last_id:
            raise ProtocolViolation(f"OPEN reuses stream id {sid} (last was {self._peer_last_id})")
        self._peer_last_id = sid
        if self.goaway_sent:
            return [Reply(OpenFail(sid, "going away").serialize())]
        if len(self._streams) >= self.max_streams:
            reason = f"too many streams (max {self.max_streams})"
            return [StreamLimited(sid, reason), Reply(OpenFail(sid, reason).serialize())]
        if isinstance(frame, FlowOpen):
            self._streams[sid] = StreamMachine(sid, self.window, datagram=True)
            return [FlowRequested(sid, frame.origin)]
        machine = StreamMachine(sid, self.window)
        machine.send_window = Window(frame.window)
        self._streams[sid] = machine
        return [StreamRequested(sid, frame.origin, frame.target)]
