"""The data path's own WebSocket framing, one :class:`Framer` per link.

Once a session is open, websockets neither builds nor parses the BINARY frames of the data
path (docs/architecture.md, "The data path frames its own BINARY messages"): a
:class:`Framer` builds them (``wsframe.binary_frame``; ``wire.data_frames`` for DATA; masked
with ``wsframe.MaskKeys`` on the client side) into websockets' own send queue, or straight to
the transport when nothing is queued before them, and its splitter (``wsframe.BinarySplitter``)
cuts them out of the received bytes, handing websockets every other frame. The link drives
it: when to start and stop cutting, what each received message means, the transport's events.

This is the only module that knows websockets' internals: its send queue ``writes`` and its
reader's ``buffer``. Should a release rename them, :attr:`Framer.own` is False and every
frame goes through websockets' public API, as before the data path existed.
"""

from __future__ import annotations

import asyncio

from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol

from . import wsframe
from .wire import DEFAULT_MAX_DATA, data_frame, data_frames


class Framer:
    """The data path's framing over one websockets sans-I/O protocol.

    Args:
        ws: websockets' protocol of the link (a ClientProtocol masks what it sends).
        max_data: the largest DATA payload in one frame.
    """

    def __init__(
        self, ws: ClientProtocol | ServerProtocol, *, max_data: int = DEFAULT_MAX_DATA
    ) -> None:
        self.ws = ws
        self.max_data = max_data
        client_side = isinstance(ws, ClientProtocol)
        self._expect_mask = not client_side  # a server reads masked frames (RFC 6455)
        self._mask_keys = wsframe.MaskKeys() if client_side else None
        #: The transport, once connected: one frame with nothing queued before it goes
        #: straight there.
        self.transport: asyncio.Transport | None = None
        #: Cuts received BINARY frames, from :meth:`start` on (None until then).
        self.splitter: wsframe.BinarySplitter | None = None
        #: The two attributes of websockets' protocol this framing leans on are there.
        self.own = isinstance(getattr(ws, "writes", None), list) and isinstance(
            getattr(getattr(ws, "reader", None), "buffer", None), bytearray
        )

    # -- incoming -----------------------------------------------------------------------

    def start(self) -> None:
        """Cut BINARY frames from the received bytes from now on, unless websockets holds
        part of a frame. Call only at a message boundary of an open link (the link knows:
        no fragmented message pending, no close begun)."""
        if self.own and self.splitter is None and not self.ws.reader.buffer:
            self.splitter = wsframe.BinarySplitter(
                expect_mask=self._expect_mask, max_size=_max_size(self.ws)
            )

    def stop(self) -> None:
        """Closing: websockets takes the rest (after its fail() it discards every frame)."""
        if self.splitter is not None:
            self.splitter.stop()

    # -- outgoing -----------------------------------------------------------------------

    def send_message(self, message: bytes) -> None:
        """Queue one binary message (sent at the link's next flush), unless closing."""
        if self.ws.state is not State.OPEN:
            return
        if self.own:  # framed as DATA is: no Frame object, no getrandom() each
            keys = self._mask_keys
            self.ws.writes.extend(wsframe.binary_frame(message, b"", keys.next() if keys else None))
        else:
            self.ws.send_binary(message)

    def frame_data(self, stream_id: int, data: memoryview) -> list[list[bytes]]:
        """``data`` as DATA messages of at most :attr:`max_data`, each a BINARY frame
        (masked on the client side) as the chunks to write; none refers to ``data``, so a
        resumable session logs the frames it sends as they are, copied once."""
        keys = self._mask_keys
        if len(data) <= self.max_data:  # one frame: wire.data_frames' first case, a call less
            return [data_frame(stream_id, data, keys.next() if keys is not None else None)]
        return data_frames(stream_id, data, self.max_data, keys)

    def send_frames(self, frames: list[list[bytes]]) -> None:
        """Send frames of :meth:`frame_data`, unless closing: into websockets' own queue
        (``ws.writes``), in order with pings and the close, or, one frame with nothing
        queued before it, straight to the transport, which keeps that order too."""
        if self.ws.state is not State.OPEN:
            return
        if not self.own:  # websockets frames every message (its internals moved)
            for frame in frames:
                self.ws.send_binary(wsframe.frame_message(frame))
            return
        writes = self.ws.writes
        transport = self.transport
        if len(frames) == 1 and not writes and transport is not None:
            # no round through the queue and flush (write_chunks, inline: once per DATA)
            chunks = frames[0]
            if not transport.is_closing():
                if len(chunks) == 1:  # the native path's frame is one chunk
                    transport.write(chunks[0])
                else:
                    transport.writelines(chunks)
            return
        for frame in frames:
            writes.extend(frame)

    def send_frame(self, header: bytes, payload: bytes | memoryview) -> None:
        """One message, ``header + payload`` (a DATAGRAM), framed here as DATA is, behind
        what websockets has queued, so order with pings and the close is kept."""
        if not self.own or self.ws.state is not State.OPEN:
            self.send_message(header + bytes(payload))  # sent only while open
            return
        keys = self._mask_keys
        frame = wsframe.binary_frame(header, payload, keys.next() if keys is not None else None)
        if self.ws.writes or self.transport is None:
            self.ws.writes.extend(frame)
        else:
            write_chunks(self.transport, frame)


def write_chunks(transport: asyncio.Transport, chunks: list[bytes]) -> None:
    """Write ``chunks`` in one call, unless the transport is closing. One write per flush,
    not one per frame: a burst of WINDOW frames would otherwise cost a send() each
    (writelines uses sendmsg() from Python 3.12)."""
    if transport.is_closing() or not chunks:
        return
    if len(chunks) == 1:
        transport.write(chunks[0])
    else:
        transport.writelines(chunks)


def _max_size(ws: ClientProtocol | ServerProtocol) -> int | None:
    """The largest message the WebSocket accepts (the attribute's name changed in 16)."""
    size = getattr(ws, "max_message_size", getattr(ws, "max_size", None))
    return size if isinstance(size, int) else None
