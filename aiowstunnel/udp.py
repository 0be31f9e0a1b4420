"""UDP tunnels: a session's datagram flows and the UDP sockets at both ends
(docs/protocol.md, Datagram flows).

The listener side binds one :class:`UdpEndpoint`; each source address that sends to it
becomes a flow (a stream opened with FLOW_OPEN), and the replies go back to that source.
The dialing side gives each flow its own connected UDP socket toward the target
(:func:`udp_dialer`), so the target's answers come back to the right flow.
:class:`FlowTable` holds one session's flows and decides the fate of every datagram: it
is sent at once, or dropped and counted by reason, never queued behind anything, so a
flood of UDP neither grows memory nor stalls the session's TCP streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from .addresses import format_peer, host_port
from .dial import failure_label
from .errors import LocalProtocolError, describe
from .limits import QuietLog, SessionGuard, Slot
from .logs import escape, quote
from .mux import Mux
from .stats import TunnelStats

log = logging.getLogger("aiowstunnel.session")
quiet = QuietLog(log)

#: Why a datagram was dropped: the ``reason`` label of datagrams_dropped_total, a fixed set.
DROP_REASONS = (
    "no_session",  # the tunnel is down (or going away): no session to carry it
    "queue_full",  # the WebSocket's output, or the UDP socket's, is above its mark
    "too_large",  # the UDP socket refused its size (EMSGSIZE)
    "too_many_flows",  # a new source past the server's stream limits
    "send_failed",  # the UDP socket refused it (an ICMP error came back, no route, ...)
)
#: Datagrams are dropped while the WebSocket's write buffer holds more than this: a quarter
#: of its high-water mark (link.WS_HIGH_WATER), so that datagrams alone never pause the
#: link, and the TCP streams of the same session keep the room above it.
DATAGRAM_MARK = 256 * 1024
#: A UDP socket's write buffer past which datagrams for it are dropped (asyncio's
#: datagram transports otherwise buffer without bound when the socket says EAGAIN).
SOCKET_MARK = 256 * 1024
#: Datagrams a flow keeps while its socket is being made (the dialing side, before OPEN_OK:
#: the opener sends its first datagram with FLOW_OPEN); more are dropped.
PENDING_DATAGRAMS = 32
#: How often idle flows are looked for, as a share of the idle timeout: a flow ends
#: between udp_idle_timeout and 1.25 times that after its last datagram.
SWEEP_SHARE = 0.25
#: The socket buffers every UDP socket here asks for, each way: a burst (a WireGuard
#: handshake's window, 50 DNS clients at once) that lands while the loop is busy waits in
#: the kernel instead of being dropped there. The kernel caps it at net.core.rmem_max and
#: wmem_max (212,992 bytes on a stock Linux; docs/operations.md, UDP).
SOCKET_BUFFER = 2 * 1024 * 1024
MIN_SWEEP = 0.05

SourceAddress = tuple[str, int] | tuple[str, int, int, int]


class FlowHost(Protocol):
    """What a :class:`FlowTable` needs from its session (passed down: no upward import)."""

    @property
    def accepting(self) -> bool: ...  # new flows may open (open, not draining)

    @property
    def sending(self) -> bool: ...  # frames can still be sent (not closed)

    @property
    def output_buffered(self) -> int: ...  # bytes waiting in the link's write buffer

    def send(self, message: bytes) -> None: ...

    def send_datagram(self, stream_id: int, data: bytes) -> None: ...  # one DATAGRAM

    def flush(self) -> None: ...

    def log_extra(self) -> dict[str, str | None]: ...


class FlowDial(Protocol):
    """Makes the UDP socket of a flow the peer opened (the dialing side)."""

    def __call__(
        self, factory: Callable[[], asyncio.DatagramProtocol], origin: str
    ) -> Awaitable[tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]]: ...


def udp_dialer(host: str, port: int, timeout: float) -> FlowDial:
    """A :class:`FlowDial` whose sockets are connected to one fixed UDP target: each flow
    sends from its own port, and the kernel passes it only the target's answers."""
    where = host_port(host, port)

    async def dial(
        factory: Callable[[], asyncio.DatagramProtocol], origin: str
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.create_datagram_endpoint(factory, remote_addr=(host, port)), timeout
            )
        except asyncio.TimeoutError:
            raise TimeoutError(f"UDP socket to {where} timed out after {timeout:g} s") from None
        except OSError as exc:
            raise type(exc)(exc.errno, f"UDP socket to {where} failed: {describe(exc)}") from exc

    return dial


class Flow:
    """One datagram flow: a stream id and where its datagrams go on this side.

    On the listener side ``source`` is the UDP peer it stands for and ``endpoint`` the
    socket that peer sent to; on the dialing side ``transport`` is the flow's own socket
    (None while it is made, when ``pending`` holds what came meanwhile).
    """

    __slots__ = (
        "endpoint",
        "last",
        "peer",
        "pending",
        "received",
        "sent",
        "slot",
        "source",
        "stream_id",
        "transport",
    )

    def __init__(self, stream_id: int, peer: str) -> None:
        self.stream_id = stream_id
        self.peer = peer
        self.source: SourceAddress | None = None
        self.endpoint: UdpEndpoint | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] | None = None
        self.slot: Slot | None = None
        self.last = 0.0  # loop time of the last datagram either way
        self.sent = 0  # datagrams each way, for the "flow closed" debug line
        self.received = 0


class FlowTable:
    """The datagram flows of one session, by stream id (and by source, listener side).

    Args:
        mux: the session's protocol state (flow ids and states, the frames to send).
        host: the session, as the table sees it.
        stats: where datagrams, drops and flows are counted.
        guard: server side: the limits each flow takes a stream slot in; None for none.

    Attributes:
        dial: the dialing side's :class:`FlowDial`; None refuses the peer's flows.
        idle_timeout: seconds after which the listener side ends a silent flow; 0 = never.
    """

    def __init__(
        self,
        mux: Mux,
        host: FlowHost,
        stats: TunnelStats,
        guard: SessionGuard | None = None,
    ) -> None:
        self.mux = mux
        self.host = host
        self.stats = stats
        self.guard = guard
        self.dial: FlowDial | None = None
        self.idle_timeout = 60.0
        self._flows: dict[int, Flow] = {}
        self._by_source: dict[tuple[UdpEndpoint, SourceAddress], Flow] = {}
        self._dials: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.loop = asyncio.get_running_loop()

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._flows

    def drop(self, reason: str, n: int = 1) -> None:
        self.stats.datagram_drops[reason] += n

    # -- the listener side: datagrams from local UDP peers -------------------------------

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
        if self._closed or not self.host.accepting:
            self.drop("no_session")
            return None
        peer = format_peer(source)
        slot = None
        if self.guard is not None:
            slot = self.guard.stream_slot(peer)
            if slot is None:
                self.stats.stream_open_failures["stream_limit"] += 1
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
        if self.dial is None or self._closed or not self.host.accepting:
            reason = "this side does not accept UDP flows" if self.dial is None else "going away"
            self.host.send(self.mux.refuse_stream(stream_id, reason))
            self.host.flush()
            return
        slot = None
        if self.guard is not None:
            slot = self.guard.stream_slot(origin)
            if slot is None:
                self.stats.stream_open_failures["stream_limit"] += 1
                self.host.send(self.mux.refuse_stream(stream_id, "server stream limit reached"))
                self.host.flush()
                return
        flow = Flow(stream_id, origin)
        flow.pending, flow.slot = [], slot
        self._add(flow)
        task = self.loop.create_task(self._dial(flow, origin))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _dial(self, flow: Flow, origin: str) -> None:
        assert self.dial is not None
        try:
            transport, _ = await self.dial(lambda: FlowSocket(self, flow), origin)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            label = failure_label(exc)
            self.stats.stream_open_failures[label] += 1
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
        """One datagram into the tunnel: sent now, or dropped (never queued)."""
        host = self.host
        # protocol.md, Datagram flows: above the mark the datagram is dropped, so the
        # WebSocket's buffer stays the TCP streams' and memory stays bounded.
        if host.output_buffered > DATAGRAM_MARK or not host.sending:
            self.drop("queue_full" if host.sending else "no_session")
            return
        if not self.mux.may_send_datagram(flow.stream_id):  # it crossed our RST
            self.drop("no_session")
            return
        host.send_datagram(flow.stream_id, data)
        host.flush()  # what the FLOW_OPEN left queued, if anything
        flow.last = self.loop.time()
        flow.sent += 1
        stats = self.stats
        stats.datagrams_sent += 1
        stats.sent_bytes += len(data)

    def deliver(self, stream_id: int, data: memoryview) -> None:
        """The peer's DATAGRAM: to the flow's source (listener side) or its target."""
        flow = self._flows.get(stream_id)
        if flow is None:
            return
        flow.last = self.loop.time()
        if flow.endpoint is not None:
            assert flow.source is not None
            if flow.endpoint.send_to(self, bytes(data), flow.source):
                self._delivered(flow, len(data))
        elif flow.transport is not None:
            self._to_socket(flow, flow.transport, bytes(data))
        elif flow.pending is not None and len(flow.pending) < PENDING_DATAGRAMS:
            flow.pending.append(bytes(data))  # sent once the socket is made
        else:
            self.drop("queue_full")

    def _to_socket(self, flow: Flow, transport: asyncio.DatagramTransport, data: bytes) -> None:
        if transport.is_closing():
            self.drop("no_session")
            return
        if _buffered(transport) > SOCKET_MARK:
            self.drop("queue_full")
            return
        try:
            transport.sendto(data)
        except OSError as exc:  # uvloop raises some at once; asyncio reports them later
            self.drop(send_error_reason(exc))
            return
        self._delivered(flow, len(data))

    def _delivered(self, flow: Flow, n: int) -> None:
        flow.received += 1
        self.stats.datagrams_received += 1
        self.stats.received_bytes += n

    # -- the peer's verdicts --------------------------------------------------------------

    def refused(self, stream_id: int, reason: str) -> None:
        """OPEN_FAIL for a flow we opened: it ends; the source's next datagram tries again."""
        flow = self._flows.get(stream_id)
        if flow is None:
            return
        self.stats.stream_open_failures["peer_refused"] += 1
        quiet.warning(
            "udp-refused",
            "UDP flow %d from %s refused by the other side: %s",
            stream_id,
            flow.peer,
            quote(reason),
            extra=self.host.log_extra(),
        )
        self._remove(flow)

    def ended(self, stream_id: int) -> None:
        """The flow ended on the other side (RST: its idle timeout, its socket, a
        violation): forget it."""
        flow = self._flows.get(stream_id)
        if flow is not None:
            self._remove(flow)

    # -- idle flows and the end -----------------------------------------------------------

    def _add(self, flow: Flow) -> None:
        flow.last = self.loop.time()
        self._flows[flow.stream_id] = flow
        self.stats.flows_opened += 1
        self.stats.flows_active += 1
        if log.isEnabledFor(logging.DEBUG):
            extra = self.host.log_extra()
            log.debug("UDP flow %d opened: %s", flow.stream_id, flow.peer, extra=extra)
        if self._sweeper is None and flow.endpoint is not None and self.idle_timeout > 0:
            self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        period = max(self.idle_timeout * SWEEP_SHARE, MIN_SWEEP)
        self._sweeper = self.loop.call_later(period, self._sweep)

    def _sweep(self) -> None:
        """End the flows idle for udp_idle_timeout: only the listener side decides (it
        stands for the UDP peers), with an RST the other side forgets the flow by."""
        self._sweeper = None
        deadline = self.loop.time() - self.idle_timeout
        idle = [f for f in self._flows.values() if f.endpoint is not None and f.last <= deadline]
        for flow in idle:
            if self.host.sending and flow.stream_id in self.mux:
                self.host.send(self.mux.reset_stream(flow.stream_id, "idle timeout"))
            self.stats.flows_expired += 1
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
        self.stats.flows_active -= 1
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


class FlowSocket(asyncio.DatagramProtocol):
    """The protocol of one flow's own UDP socket (the dialing side)."""

    def __init__(self, table: FlowTable, flow: Flow) -> None:
        self.table = table
        self.flow = flow

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ask_for_buffers(transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.table.from_target(self.flow, data)

    def error_received(self, exc: Exception) -> None:
        self.table.target_error(self.flow, exc)


class UdpEndpoint(asyncio.DatagramProtocol):
    """The UDP socket of a tunnel's listener side (the client's ``listen`` in CONNECT mode,
    the server's in LISTEN mode). It outlives sessions: each datagram goes to the flow
    table of the session up now (``flows()``), or is dropped as ``no_session``.

    Args:
        flows: the current session's flow table, or None while there is none.
        stats: where drops without a session are counted.
    """

    def __init__(self, flows: Callable[[], FlowTable | None], stats: TunnelStats) -> None:
        self.flows = flows
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        ask_for_buffers(transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        table = self.flows()
        if table is None:
            self.stats.datagram_drops["no_session"] += 1
            return
        table.from_source(self, data, cast(SourceAddress, addr))

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for a reply we sent to a source that is gone: nothing to do but
        # count it (the flow ends by its idle timeout).
        reason = send_error_reason(exc) if isinstance(exc, OSError) else "send_failed"
        self.stats.datagram_drops[reason] += 1

    def send_to(self, table: FlowTable, data: bytes, source: SourceAddress) -> bool:
        """A reply to ``source``; False (and counted in ``table``) if it was dropped."""
        transport = self.transport
        if transport is None or transport.is_closing():
            table.drop("no_session")
            return False
        if _buffered(transport) > SOCKET_MARK:
            table.drop("queue_full")
            return False
        try:
            transport.sendto(data, source)
        except OSError as exc:
            table.drop(send_error_reason(exc))
            return False
        return True

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        sockname = self.transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def bind_endpoint(
    host: str | None,
    port: int,
    flows: Callable[[], FlowTable | None],
    stats: TunnelStats,
    sock: socket.socket | None = None,
) -> UdpEndpoint:
    """Bind a :class:`UdpEndpoint` on ``host:port`` (or serve ``sock``, handed over).

    Raises:
        OSError: the address cannot be bound; the message names it.
    """
    loop = asyncio.get_running_loop()
    try:
        if sock is not None:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: UdpEndpoint(flows, stats), sock=sock
            )
        else:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: UdpEndpoint(flows, stats), local_addr=(host or "0.0.0.0", port)
            )
    except OSError as exc:
        where = host_port(host or "", port)
        raise OSError(exc.errno, f"cannot listen on udp {where}: {describe(exc)}") from exc
    return protocol


def ask_for_buffers(transport: asyncio.BaseTransport) -> None:
    """SOCKET_BUFFER each way on a UDP socket, as much of it as the kernel grants."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def _buffered(transport: asyncio.DatagramTransport) -> int:
    """What a UDP socket's transport holds unsent (asyncio's and uvloop's both tell,
    though typeshed's DatagramTransport does not declare it)."""
    return cast(asyncio.WriteTransport, transport).get_write_buffer_size()


def send_error_reason(exc: Exception) -> str:
    """The drop reason of a UDP send the OS refused."""
    too_large = isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE
    return "too_large" if too_large else "send_failed"
