"""UDP tunnels: a session's datagram flows (docs/protocol.md, Datagram flows).

The listening side has one :class:`~udpsocket.UdpEndpoint`; each source address that
sends to it becomes a flow (a stream opened with FLOW_OPEN), and the replies go back to
that source. The dialing side gives each flow its own connected UDP socket toward the
target, so the target's answers come back to the right flow. :class:`FlowTable` holds one
session's flows and decides the fate of every datagram: it is sent at once, or dropped and
counted by reason, never queued behind anything, so a flood of UDP neither grows memory
nor stalls the session's TCP streams.

The session calls three hooks: :meth:`FlowTable.receive` (the DATAGRAM fast path, as
``Mux.receive_data`` is DATA's), :meth:`FlowTable.took` (the Mux's events about flows)
and :meth:`FlowTable.close_all` (the session ended).
"""

from __future__ import annotations

import asyncio
import logging

from .addresses import format_peer
from .dial import failure_label
from .errors import LocalProtocolError, describe
from .events import (
    DatagramReceived,
    Event,
    FlowRequested,
    StreamAccepted,
    StreamRefused,
    StreamReset,
    StreamViolated,
)
from .limits import QuietLog
from .logs import escape, quote
from .udpflow import Flow, FlowHost
from .udpsocket import FlowDial, FlowSocket, SourceAddress, UdpEndpoint, send, send_error_reason
from .wire import HEADER, HEADER_SIZE, MAX_DATAGRAM, FrameType, datagram_header

log = logging.getLogger("aiowstunnel.session")
quiet = QuietLog(log)

#: Why a datagram was dropped: the ``reason`` label of datagrams_dropped_total, a fixed set.
DROP_REASONS = (
    "no_session",  # the tunnel is down (or going away): no session to carry it
    "detached",  # the session waits for a resume (protocol.md, Resumption): never replayed
    "queue_full",  # the WebSocket's output, or the UDP socket's, is above its mark
    "too_large",  # the UDP socket refused its size (EMSGSIZE)
    "too_many_flows",  # a new source past the server's stream limits
    "send_failed",  # the UDP socket refused it (an ICMP error came back, no route, ...)
)
#: Datagrams are dropped while the WebSocket's write buffer holds more than this: a quarter
#: of its high-water mark (link.WS_HIGH_WATER), so that datagrams alone never pause the
#: link, and the TCP streams of the same session keep the room above it.
DATAGRAM_MARK = 256 * 1024
#: Datagrams a flow keeps while its socket is being made (the dialing side, before OPEN_OK:
#: the opener sends its first datagram with FLOW_OPEN); more are dropped.
PENDING_DATAGRAMS = 32
#: How often idle flows are looked for, as a share of the idle timeout: a flow ends
#: between udp_idle_timeout and 1.25 times that after its last datagram.
SWEEP_SHARE = 0.25
MIN_SWEEP = 0.05
_DATAGRAM = FrameType.DATAGRAM
_LONGEST = HEADER_SIZE + MAX_DATAGRAM


class FlowTable:
    """The datagram flows of one session, by stream id (and by source, listening side).

    Attributes:
        dial: the dialing side's :class:`~udpsocket.FlowDial`; None refuses the peer's flows.
        idle_timeout: seconds after which the listening side ends a silent flow; 0 = never
            (the session's udp_idle_timeout; a LISTEN server takes the client's).
    """

    def __init__(self, host: FlowHost) -> None:
        self.host = host
        self.mux = host.mux
        self.dial: FlowDial | None = None
        self.idle_timeout = host.settings.udp_idle_timeout
        self._flows: dict[int, Flow] = {}
        self._by_source: dict[tuple[UdpEndpoint, SourceAddress], Flow] = {}
        self._dials: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.loop = asyncio.get_running_loop()

    def drop(self, reason: str, n: int = 1) -> None:
        self.host.stats.datagram_drops[reason] += n

    # -- the session's hooks -------------------------------------------------------------

    def receive(self, message: bytes | bytearray | memoryview) -> bool:
        """A DATAGRAM on a flow that may carry it: delivered, True. False for any other
        message, which then goes through ``Mux.receive`` (nothing was changed)."""
        if not message or message[0] != _DATAGRAM or not HEADER_SIZE <= len(message) <= _LONGEST:
            return False
        stream_id = HEADER.unpack_from(message)[1]
        if not self.mux.datagram_ok(stream_id, outgoing=False):
            return False  # Mux.receive names the violation, or drops a late one
        self.deliver(stream_id, memoryview(message)[HEADER_SIZE:])
        return True

    def took(self, event: Event) -> bool:
        """An event of the Mux about a flow, acted on: True. False for the others, and for
        a flow's violation, which the session counts as any stream's (once forgotten here)."""
        if isinstance(event, DatagramReceived):
            self.deliver(event.stream_id, event.data)
            return True
        if isinstance(event, FlowRequested):
            self.requested(event.stream_id, event.origin)
            return True
        if not isinstance(event, StreamAccepted | StreamRefused | StreamReset | StreamViolated):
            return False
        flow = self._flows.get(event.stream_id)
        if flow is None:
            return False
        # Accepted: nothing to do (the opener sends from FLOW_OPEN on). Refused: the
        # source's next datagram tries again. Reset or broken: the other side ended it.
        if isinstance(event, StreamRefused):
            self.refused(flow, event.reason)
        elif not isinstance(event, StreamAccepted):
            self._remove(flow, "ended by the other side")
        return not isinstance(event, StreamViolated)

    # -- the listening side: datagrams from local UDP peers -------------------------------

    def from_source(self, endpoint: UdpEndpoint, data: bytes, source: SourceAddress) -> None:
        """A datagram that ``source`` sent to ``endpoint``: into its flow (opened now if it
        is the source's first), or dropped."""
        flow = self._by_source.get((endpoint, source))
        if flow is None:
            flow = self._open(endpoint, source)
            if flow is None:
                return
        self._forward(flow, data)

    def _open(self, endpoint: UdpEndpoint, source: SourceAddress) -> Flow | None:
        # Detached, a flow still opens: its FLOW_OPEN is logged and replayed by the resume.
        if self._closed or not self.host.accepting:
            self.drop("no_session")
            return None
        peer = format_peer(source)
        slot = None
        if self.host.guard is not None:
            slot = self.host.guard.stream_slot(peer)
            if slot is None:
                self.host.stats.stream_open_failures["stream_limit"] += 1
                self.drop("too_many_flows")
                return None
        try:
            sid, message = self.mux.open_flow(peer)
        except LocalProtocolError:  # ids exhausted or GOAWAY: the session is ending
            if slot is not None:
                slot.release()
            self.drop("no_session")
            return None
        flow = Flow(sid, peer)
        flow.source, flow.endpoint, flow.slot = source, endpoint, slot
        self._by_source[endpoint, source] = flow
        self._add(flow)
        self.host.send(message)
        return flow

    # -- the dialing side: flows the peer opens ---------------------------------------------

    def requested(self, stream_id: int, origin: str) -> None:
        """FLOW_OPEN from the peer: make the flow's socket, then OPEN_OK (or OPEN_FAIL)."""
        host = self.host
        if self.dial is None or self._closed or not host.accepting:
            reason = "this side does not accept UDP flows" if self.dial is None else "going away"
            host.send(self.mux.refuse_stream(stream_id, reason))
            host.flush()
            return
        slot = None
        if host.guard is not None:
            slot = host.guard.stream_slot(origin)
            if slot is None:
                host.stats.stream_open_failures["stream_limit"] += 1
                host.send(self.mux.refuse_stream(stream_id, "server stream limit reached"))
                host.flush()
                return
        flow = Flow(stream_id, origin)
        flow.pending, flow.slot = [], slot
        self._add(flow)
        task = self.loop.create_task(self._dial(flow, origin))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _dial(self, flow: Flow, origin: str) -> None:
        assert self.dial is not None

        def factory() -> FlowSocket:
            return FlowSocket(
                lambda data: self.from_target(flow, data), lambda exc: self.target_error(flow, exc)
            )

        try:
            transport, _ = await self.dial(factory, origin)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            label = failure_label(exc)
            self.host.stats.stream_open_failures[label] += 1
            quiet.warning(
                ("udp-dial", label),
                "UDP flow %d%s not opened: %s",
                flow.stream_id,
                f" for {quote(origin)}" if origin else "",
                describe(exc),
                extra={**self.host.log_extra(), "origin": escape(origin)},
            )
            if self._flows.get(flow.stream_id) is flow:
                self._remove(flow)
                self.host.send(self.mux.refuse_stream(flow.stream_id, describe(exc)))
                self.host.flush()
            return
        if self._flows.get(flow.stream_id) is not flow or not self.host.sending:
            transport.close()  # reset while the socket was made
            return
        flow.transport = transport
        self.host.send(self.mux.accept_stream(flow.stream_id))
        self.host.flush()
        pending, flow.pending = flow.pending or [], None
        for data in pending:
            self._to_socket(flow, transport, data)

    def from_target(self, flow: Flow, data: bytes) -> None:
        """A datagram the target sent to a flow's own socket (the dialing side)."""
        if self._flows.get(flow.stream_id) is flow:
            self._forward(flow, data)

    def target_error(self, flow: Flow, exc: Exception) -> None:
        """The flow's socket reported an error (an ICMP port unreachable, mostly): a
        datagram sent before was lost (asyncio reports a refused send here too)."""
        self.drop(send_error_reason(exc))
        quiet.warning(
            ("udp-error", type(exc).__name__),
            "UDP flow %d to its target: %s",
            flow.stream_id,
            describe(exc),
            extra=self.host.log_extra(),
        )

    # -- both sides -------------------------------------------------------------------------

    def _forward(self, flow: Flow, data: bytes) -> None:
        """One datagram into the tunnel: sent now, or dropped (never queued, never logged
        for a resume: datagrams are lossy by contract)."""
        host = self.host
        link = host.link
        if not host.sending:
            self.drop("no_session")
            return
        if link.lost:  # the session lives on, detached: the resume will not replay this
            self.drop("detached")
            return
        transport = link.transport
        # protocol.md, Datagram flows: above the mark the datagram is dropped, so the
        # WebSocket's buffer stays the TCP streams' and memory stays bounded.
        if transport is not None and transport.get_write_buffer_size() > DATAGRAM_MARK:
            self.drop("queue_full")
            return
        if not link.can_send or not self.mux.datagram_ok(flow.stream_id, outgoing=True):
            self.drop("no_session")  # closing, or the flow crossed our RST
            return
        link.send_frame(datagram_header(flow.stream_id), data)
        host.flush()  # what the FLOW_OPEN left queued, if anything
        flow.last = self.loop.time()
        flow.sent += 1
        stats = host.stats
        stats.datagrams_sent += 1
        stats.sent_bytes += len(data)

    def deliver(self, stream_id: int, data: memoryview) -> None:
        """The peer's DATAGRAM: to the flow's source (listening side) or its target."""
        flow = self._flows.get(stream_id)
        if flow is None:
            return
        flow.last = self.loop.time()
        if flow.endpoint is not None:
            assert flow.source is not None
            dropped = flow.endpoint.send_to(bytes(data), flow.source)
            if dropped:
                self.drop(dropped)
            else:
                self._delivered(flow, len(data))
        elif flow.transport is not None:
            self._to_socket(flow, flow.transport, bytes(data))
        elif flow.pending is not None and len(flow.pending) < PENDING_DATAGRAMS:
            flow.pending.append(bytes(data))  # sent once the socket is made
        else:
            self.drop("queue_full")

    def _to_socket(self, flow: Flow, transport: asyncio.DatagramTransport, data: bytes) -> None:
        dropped = send(transport, data)
        if dropped:
            self.drop(dropped)
        else:
            self._delivered(flow, len(data))

    def _delivered(self, flow: Flow, n: int) -> None:
        flow.received += 1
        stats = self.host.stats
        stats.datagrams_received += 1
        stats.received_bytes += n

    def refused(self, flow: Flow, reason: str) -> None:
        """OPEN_FAIL for a flow we opened: it ends; the source's next datagram tries again."""
        self.host.stats.stream_open_failures["peer_refused"] += 1
        quiet.warning(
            "udp-refused",
            "UDP flow %d from %s refused by the other side: %s",
            flow.stream_id,
            flow.peer,
            quote(reason),
            extra=self.host.log_extra(),
        )
        self._remove(flow, "refused")

    # -- idle flows and the end -----------------------------------------------------------

    def _add(self, flow: Flow) -> None:
        flow.last = self.loop.time()
        self._flows[flow.stream_id] = flow
        stats = self.host.stats
        stats.flows_opened += 1
        stats.flows_active += 1
        if log.isEnabledFor(logging.DEBUG):
            extra = self.host.log_extra()
            log.debug("UDP flow %d opened: %s", flow.stream_id, flow.peer, extra=extra)
        if self._sweeper is None and flow.endpoint is not None and self.idle_timeout > 0:
            self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        period = max(self.idle_timeout * SWEEP_SHARE, MIN_SWEEP)
        self._sweeper = self.loop.call_later(period, self._sweep)

    def _sweep(self) -> None:
        """End the flows idle for udp_idle_timeout: only the listening side decides (it
        stands for the UDP peers), with an RST the other side forgets the flow by (sent,
        or logged while detached and replayed by the resume)."""
        self._sweeper = None
        deadline = self.loop.time() - self.idle_timeout
        idle = [f for f in self._flows.values() if f.endpoint is not None and f.last <= deadline]
        for flow in idle:
            if self.host.sending and flow.stream_id in self.mux:
                self.host.send(self.mux.reset_stream(flow.stream_id, "idle timeout"))
            self.host.stats.flows_expired += 1
            self._remove(flow, "idle timeout")
        if idle:
            self.host.flush()
        if any(f.endpoint is not None for f in self._flows.values()) and not self._closed:
            self._schedule_sweep()

    def _remove(self, flow: Flow, how: str = "") -> None:
        if self._flows.get(flow.stream_id) is not flow:
            return
        del self._flows[flow.stream_id]
        if flow.endpoint is not None and flow.source is not None:
            self._by_source.pop((flow.endpoint, flow.source), None)
        if flow.transport is not None:
            flow.transport.close()
        if flow.slot is not None:
            flow.slot.release()
        self.mux.forget(flow.stream_id)
        self.host.stats.flows_active -= 1
        if log.isEnabledFor(logging.DEBUG):  # one line per flow, never per datagram
            log.debug(
                "UDP flow %d closed: %s, %d datagrams sent, %d received%s",
                flow.stream_id,
                flow.peer,
                flow.sent,
                flow.received,
                f"; {how}" if how else "",
                extra=self.host.log_extra(),
            )

    def close_all(self) -> int:
        """The session is gone: forget every flow, close their sockets. Returns how many."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in self._dials:
            task.cancel()
        flows = list(self._flows.values())
        for flow in flows:
            self._remove(flow, "the session ended")
        return len(flows)
