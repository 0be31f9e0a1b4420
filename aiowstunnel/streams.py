"""The tunneled TCP connections of one session: each one's socket protocol, and the table
that moves their bytes between the sockets and the session's :class:`~mux.Mux`.

A stream's local state lives in one place, its :class:`TcpStream`; what the protocol knows
(accepted, FIN sent, credit) is asked of the Mux, never copied. The :class:`StreamTable`
holds the policy: how much a read takes (the stream's credit), what waits when credit is
short (a backlog of at most one small read), when a socket reads, when an EOF becomes a
FIN, and it reports every byte written to a socket to the Mux, whose receive window alone
decides when credit goes back (protocol.md, Flow control).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Protocol

from .errors import LocalProtocolError, describe
from .lazyevent import LazyEvent
from .limits import QuietLog, SessionGuard
from .logs import quote
from .mux import Mux
from .resets import Cut, reset
from .stats import TunnelStats
from .tcp import READ_SIZE, SPILL_READ, TcpStream, thread_read_buffer
from .wire import StreamState

log = logging.getLogger("aiowstunnel.session")
#: the peer can cause these lines: a few per period, not one per frame
quiet = QuietLog(log)


class StreamHost(Protocol):
    """What a :class:`StreamTable` needs from its session (passed down: no upward import)."""

    @property
    def accepting(self) -> bool: ...  # new streams may open (open, not draining)

    @property
    def sending(self) -> bool: ...  # frames can still be sent (not closed)

    @property
    def paused(self) -> bool: ...  # the output is full: no stream reads until it drains

    @property
    def peer(self) -> str: ...  # the session's peer, for the limits' reports

    def send(self, message: bytes) -> None: ...

    def send_data(self, stream_id: int, data: memoryview) -> None: ...  # credit taken

    def flush(self) -> None: ...

    def ids_exhausted(self, reason: str) -> None: ...  # go away: the client reconnects

    def streams_idle(self) -> None: ...  # the last stream ended

    def log_extra(self) -> dict[str, str | None]: ...


class StreamTable:
    """The open streams of one session, by id, and the policy that moves their bytes.

    Args:
        mux: the session's protocol state (credit, states, the frames to send).
        host: the session, as the table sees it.
        stats: the counters the streams' bytes, opens and resets go to.
        guard: server side: the limits each stream takes a slot in; None for none.
    """

    def __init__(
        self,
        mux: Mux,
        host: StreamHost,
        stats: TunnelStats,
        guard: SessionGuard | None = None,
    ) -> None:
        self.mux = mux
        self.host = host
        self.stats = stats
        self.guard = guard
        self._streams: dict[int, TcpStream] = {}
        #: the peer's OPENs accepted whose dial is under way: open streams for the drain (an
        #: OPEN that arrived before our GOAWAY finishes on this session, dialed or refused)
        self.dialing = 0
        #: dialing side: the early data of streams still being dialed (protocol.md, Early
        #: data), written to the socket once it connects; at most Mux.early_receive each
        self._early: dict[int, bytearray] = {}
        #: listener side: the streams the peer refuses as it goes away move to another
        #: session (release; the client's CONNECT tunnels), so each keeps a copy of the
        #: early data it sent until OPEN_OK
        self.keeps_early = False
        self.idle = LazyEvent(True)  # set while no stream is open (drain waits on it)
        #: where every stream reads into; see read_buffer()
        self.read_view = thread_read_buffer()

    # -- questions -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._streams) + self.dialing

    def dial_started(self) -> None:
        self.dialing += 1
        self.idle.clear()

    def dial_ended(self, stream_id: int) -> None:
        """A dial is over (its stream registered, or refused): maybe the last one."""
        self._early.pop(stream_id, None)  # refused, or reset meanwhile: it goes nowhere
        self.dialing = max(0, self.dialing - 1)  # cut_all may have counted it out
        if not len(self):
            self.idle.set()
            self.host.streams_idle()

    def __iter__(self) -> Iterator[TcpStream]:
        return iter(list(self._streams.values()))

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def get(self, stream_id: int) -> TcpStream | None:
        return self._streams.get(stream_id)

    def accepted(self, stream: TcpStream) -> bool:
        """OPEN_OK exchanged: the stream's data may flow (asked of the Mux)."""
        return stream.stream_id is not None and self.mux.accepted(stream.stream_id)

    def eof_pending(self, stream: TcpStream) -> bool:
        """The socket's EOF waits to go out as FIN (behind a backlog, or OPEN_OK)."""
        sid = stream.stream_id
        return stream.at_eof and sid is not None and self.mux.fin_unsent(sid)

    # -- a socket's events (from TcpStream) --------------------------------------------

    def connected(self, stream: TcpStream) -> None:
        """A socket is up: a local connection accepted (listener side: ask the peer to
        dial), or the connection a dial made (dialing side: tell the opener)."""
        # A dial ends on its session even after our GOAWAY: its OPEN came before it.
        if not (self.host.accepting if stream.stream_id is None else self.host.sending):
            self.stats.stream_open_failures["tunnel_down"] += 1
            self.cut(stream, Cut.TUNNEL_DOWN, "the tunnel is going down")
            return
        if stream.stream_id is None:  # listener side
            if self.guard is not None and stream.slot is None:  # (socks.py takes it earlier)
                stream.slot = self.guard.stream_slot(stream.peer)
                if stream.slot is None:
                    self.stats.stream_open_failures["stream_limit"] += 1
                    assert stream.transport is not None
                    stream.transport.abort()
                    return
            try:
                stream.stream_id, message = self.mux.open_stream(stream.peer, stream.target)
            except LocalProtocolError as exc:  # stream ids exhausted (2**31 streams)
                self.stats.stream_open_failures["tunnel_down"] += 1
                log.warning(
                    "cannot open a stream for %s: %s; starting a new session",
                    stream.peer,
                    exc,
                    extra=self.host.log_extra(),
                )
                self.cut(stream, Cut.OPEN_FAILED, str(exc))
                self.host.ids_exhausted(str(exc))  # the open streams finish
                return
            self.host.send(message)
            if self.mux.early_send and self.keeps_early:  # a copy for release()
                stream.early = bytearray()
        else:  # dialing side
            if stream.stream_id not in self.mux:  # reset while we dialed
                self.cut(stream, Cut.PEER_RESET, "the other side gave up while we dialed")
                return
            self.host.send(self.mux.accept_stream(stream.stream_id))
        sid = stream.stream_id
        self._streams[sid] = stream
        early = self._early.pop(sid, None)
        if early is not None:  # after a PROXY header (before_open), before anything else
            self.deliver(sid, memoryview(early))
        self.idle.clear()
        self.stats.streams_opened += 1
        self.stats.streams_active += 1
        stream.opened_at = time.monotonic()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "stream %d opened: %s %s",
                sid,
                "to" if self.accepted(stream) else "from",  # dialing side: accepted already
                stream.peer,
                extra=self.host.log_extra(),
            )
        self.update_reading(stream)
        self.host.flush()

    def read_buffer(self, stream: TcpStream) -> memoryview:
        """Where ``stream``'s next read goes: the thread's read buffer, cut to its credit.

        A read never takes more than can be sent at once, so nothing read waits in memory
        for credit; memory under load stays at the windows in flight, not at one read per
        stream on top (docs/performance.md, memory).
        """
        sid = stream.stream_id
        credit = 0
        # A paused stream reads only when its transport dropped the pause: that read must
        # not take the stream's credit, since it was paused for a reason (no OPEN_OK yet,
        # a backlog, the session's output full).
        if sid is not None and stream.reading and stream.backlog is None:
            credit = self.mux.credit(sid)  # 0 before OPEN_OK
        if credit <= 0:
            return self.read_view[:SPILL_READ]
        return self.read_view[: min(credit, READ_SIZE)]

    def data(self, stream: TcpStream, data: memoryview) -> None:
        """``data`` is a view of :attr:`read_view`: valid only until this returns."""
        sid = stream.stream_id
        if sid is None:
            return
        state = self.mux.state(sid)
        if state is None:  # reset meanwhile
            return
        if stream.backlog is not None:  # rare: reading is paused while a backlog waits
            stream.backlog = memoryview(bytes(stream.backlog) + data)
            self._send_backlog(stream)
            return
        if state is StreamState.OPENING and not self.mux.credit(sid):
            # a read before OPEN_OK with no early data left (or a dropped pause's)
            stream.backlog = memoryview(bytes(data))  # it waits, and outlives the buffer
            self.update_reading(stream)
            return
        n = self._send_data(stream, sid, data)
        if n < len(data):  # what credit did not cover waits, and outlives the buffer
            stream.backlog = memoryview(bytes(data[n:]))
            self.update_reading(stream)
        self.host.flush()

    def eof(self, stream: TcpStream) -> None:
        if stream.backlog is not None or not self.accepted(stream):
            return  # the FIN waits (eof_pending): _send_backlog sends it
        self._send_fin(stream)
        self.host.flush()

    def write_paused(self, stream: TcpStream, paused: bool) -> None:
        """The socket's write buffer crossed its high-water mark (or drained below it):
        the stream's credit is held back meanwhile (the Mux's receive window decides)."""
        sid = stream.stream_id
        if sid is None:
            return
        update = self.mux.hold_credit(sid, paused)
        if update is not None:
            self.host.send(update)
            self.host.flush()

    def lost(self, stream: TcpStream, exc: Exception | None) -> None:
        sid = stream.stream_id
        how = ""
        if sid is not None and sid in self.mux and self.host.sending:
            reason = f"connection lost: {describe(exc)}" if exc else "connection closed"
            how = f"ended here ({reason}), RST sent"
            self.host.send(self.mux.reset_stream(sid, reason))
            self.host.flush()
        self.forget(stream, how)

    # -- the peer's side (the session's event dispatch) ---------------------------------

    def deliver(self, stream_id: int, data: bytes | memoryview) -> None:
        """The peer's DATA: written to the socket, and reported to the Mux as processed
        (it answers with a WINDOW when credit is due; never while the socket is paused)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.transport is None:
            if stream is None and self.mux.state(stream_id) is StreamState.OPENING:
                # early data while we dial (the Mux took only what we announced)
                self._early.setdefault(stream_id, bytearray()).extend(data)
            return
        n = len(data)
        self.stats.received_bytes += n
        stream.received += n
        stream.transport.write(data)  # may call pause_writing: the credit is then held
        update = self.mux.grant(stream_id, n)
        if update is not None:
            self.host.send(update)

    def credit_granted(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._send_backlog(stream)

    def peer_accepted(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.early = None  # delivered: the peer's window now counts it
            stream.opened()
            self._send_backlog(stream)  # early data or EOF, if any; resumes reading

    def peer_ended(self, stream_id: int) -> None:
        """The peer's FIN: half-close the socket, or close it if we had ended too."""
        stream = self._streams.get(stream_id)
        if stream is not None and stream.transport is not None:
            if stream_id in self.mux:
                stream.transport.write_eof()  # after what is buffered (asyncio)
            else:
                self.finish(stream)

    def peer_refused(self, stream_id: int, reason: str) -> None:
        """The peer's OPEN_FAIL for an OPEN of ours: the application is told (a SOCKS5
        reply) where it can be, else its socket is reset."""
        stream = self._streams.get(stream_id)
        # The peer's words are a log field, never a label: labels are a fixed set.
        self.stats.stream_open_failures["peer_refused"] += 1
        quiet.warning(
            "refused",
            "stream %d from %s refused by the other side: %s",
            stream_id,
            stream.peer if stream else "?",
            quote(reason),
            extra=self.host.log_extra(),
        )
        if stream is not None and stream.refused(reason):
            self.forget(stream, f"refused: {reason}")  # its application was told
        else:
            self.cut_id(stream_id, Cut.OPEN_FAILED, reason)

    def limited(self, stream_id: int, reason: str) -> None:
        """The peer opened past our stream limit (the Mux refused it)."""
        self.stats.stream_open_failures["stream_limit"] += 1
        log.debug("stream %d refused: %s", stream_id, reason, extra=self.host.log_extra())

    # -- ending ------------------------------------------------------------------------

    def finish(self, stream: TcpStream) -> None:
        """Both directions ended cleanly: close once the socket's buffer is written."""
        if stream.transport is not None:
            stream.transport.close()
        self.forget(stream)

    def cut(self, stream: TcpStream, cause: Cut, detail: str) -> None:
        """A broken stream: reset its socket (the application sees ECONNRESET, never a
        clean EOF), count it by cause, forget it."""
        if stream.transport is not None:
            reset(stream.transport)
        self.stats.stream_resets[cause.value] += 1
        self.forget(stream, f"reset ({cause}): {detail}" if detail else f"reset ({cause})")

    def cut_id(self, stream_id: int, cause: Cut, detail: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self.cut(stream, cause, detail)
        else:  # reset while we dial: its early data goes nowhere (the dial goes on)
            self._early.pop(stream_id, None)

    def reset_all(self, cause: Cut, reason: str) -> int:
        """Reset every open stream, on both ends (RST to the peer too). Returns how many."""
        streams = list(self._streams.values())
        for stream in streams:
            sid = stream.stream_id
            if sid is not None and sid in self.mux:
                self.host.send(self.mux.reset_stream(sid, reason))
            self.cut(stream, cause, reason)
        self.host.flush()
        return len(streams)

    def cut_all(self, cause: Cut, reason: str) -> int:
        """Reset every stream's socket, sending nothing (the session is gone)."""
        streams = list(self._streams.values())
        for stream in streams:
            self.cut(stream, cause, reason)
        self._streams.clear()
        self._early.clear()
        self.dialing = 0  # the session's end cancels them
        self.idle.set()
        return len(streams)

    def release(self, stream_id: int) -> tuple[asyncio.Transport, bytes, bool] | None:
        """Take back a stream the peer refused before it opened, its socket untouched, for
        another session to open it again: its transport, the bytes read from it (none was
        sent but early data, which is kept until then) and whether it read EOF. None if it
        cannot move."""
        stream = self._streams.get(stream_id)
        transport = stream.transport if stream is not None else None
        if stream is None or transport is None or transport.is_closing():
            return None
        early = stream.early or b""
        if stream.sent != len(early):
            return None
        data = bytes(early) + (bytes(stream.backlog) if stream.backlog is not None else b"")
        stream.transport = None  # nothing here touches the socket any more
        self.forget(stream, "refused as the other side goes away: moved to another session")
        return transport, data, stream.at_eof

    def forget(self, stream: TcpStream, how: str = "") -> None:
        """Drop ``stream`` from the table; ``how`` says why it ended, "" if cleanly."""
        if stream.slot is not None:
            stream.slot.release()
        sid = stream.stream_id
        if sid is None or self._streams.get(sid) is not stream:
            return
        del self._streams[sid]
        self.stats.streams_active -= 1
        self.mux.forget(sid)
        if log.isEnabledFor(logging.DEBUG):  # one line per stream, never per chunk
            log.debug(
                "stream %d closed: %s, %d bytes sent, %d received, %.1f s%s",
                sid,
                stream.peer,
                stream.sent,
                stream.received,
                time.monotonic() - stream.opened_at,
                f"; {how}" if how else "",
                extra=self.host.log_extra(),
            )
        if not len(self):
            self.idle.set()
            self.host.streams_idle()

    # -- reading policy ----------------------------------------------------------------

    def update_reading(self, stream: TcpStream) -> None:
        """A socket reads while its data can go out at once: accepted, nothing waiting,
        and the session's output neither full nor closed."""
        sid = stream.stream_id
        stream.set_reading(
            stream.backlog is None
            and sid is not None
            and self.mux.sendable(sid)
            and self.host.sending
            and not self.host.paused
        )

    def update_all(self) -> None:
        """Set every stream's reading after a change of the session's (its output paused
        or resumed, a full replay log): the session's part is asked once, since this runs
        for hundreds of streams at once, as often as the log fills."""
        host = self.host
        if not host.sending or host.paused:
            for stream in list(self._streams.values()):
                stream.set_reading(False)
            return
        sendable = self.mux.sendable
        for sid, stream in list(self._streams.items()):
            stream.set_reading(stream.backlog is None and sendable(sid))

    # -- sending -------------------------------------------------------------------------

    def _send_data(self, stream: TcpStream, stream_id: int, data: memoryview) -> int:
        n = self.mux.reserve_data(stream_id, len(data))
        if n:
            self.host.send_data(stream_id, data[:n])
            self.stats.sent_bytes += n
            stream.sent += n
            if stream.early is not None:  # before OPEN_OK
                stream.early += data[:n]
        return n

    def _send_backlog(self, stream: TcpStream) -> None:
        """Send what credit allows, then FIN if EOF waits; set reading to match.

        Before OPEN_OK only early data is sent (protocol.md), and never a FIN: reading is
        paused once it is used up, but a transport that dropped that pause
        (TcpStream._repause) may have delivered one read, which waits here.
        """
        sid = stream.stream_id
        if sid is None or not self.mux.sendable(sid):
            self.update_reading(stream)
            return
        backlog = stream.backlog
        if backlog is not None:
            n = self._send_data(stream, sid, backlog)
            stream.backlog = backlog[n:] if n < len(backlog) else None
        if stream.backlog is None and self.eof_pending(stream) and self.mux.accepted(sid):
            self._send_fin(stream)
        self.update_reading(stream)
        self.host.flush()

    def _send_fin(self, stream: TcpStream) -> None:
        sid = stream.stream_id
        if sid is None or sid not in self.mux:
            return
        self.host.send(self.mux.send_fin(sid))
        if sid not in self.mux:  # both sides finished
            self.finish(stream)
