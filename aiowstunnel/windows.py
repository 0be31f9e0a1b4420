"""Credit windows (protocol.md, Flow control), pure: what a side may still send on a
stream, and the one decision of when a receiver returns credit.

As h2's ``windows.py``: :class:`Window` is the sender's credit; :class:`ReceiveWindow` is
the receiver's, and alone decides when a WINDOW is due: after a quarter of the window was
consumed (so a steady sender always keeps 3/4 of its credit and never stalls on WINDOW),
and never while the local socket is write-paused (protocol.md: "credit is returned only as
the socket accepts the bytes"), so memory per stream stays bounded by the window.
"""

from __future__ import annotations

from .errors import ProtocolViolation
from .wire import MAX_WINDOW


class Window:
    """A credit window (as h2's): how many bytes one side may still send on a stream."""

    __slots__ = ("available",)

    def __init__(self, size: int) -> None:
        self.available = size

    def consume(self, n: int) -> None:
        if n > self.available:
            raise ProtocolViolation(f"window overflow: {n} bytes sent with {self.available} credit")
        self.available -= n

    def grant(self, n: int) -> None:
        if self.available + n > MAX_WINDOW:
            raise ProtocolViolation(f"window overflow: credit would exceed {MAX_WINDOW}")
        self.available += n


class ReceiveWindow(Window):
    """Our receive window on one stream: what the peer may still send us, and when the
    credit for what we consumed goes back.

    ``available`` is the peer's credit as we count it (DATA consumes it, a WINDOW we send
    restores it). Bytes :meth:`processed` (written to the local socket) are owed to the
    peer until enough piled up; while :attr:`held` (the local socket's write buffer is
    over its high-water mark) nothing is returned, so a slow reader stops its sender.
    """

    __slots__ = ("held", "owed", "size", "threshold")

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size  # as announced in OPEN / OPEN_OK
        self.owed = 0  # processed, not yet returned to the peer
        self.held = False
        self.threshold = max(1, size // 4)

    def processed(self, n: int, flush: bool = False) -> int:
        """``n`` bytes left our buffers. Returns the increment to send now, 0 for none
        (``flush``: whatever is owed, without waiting for the threshold)."""
        owed = self.owed + n  # (inline, not _due: this runs for every DATA message)
        if self.held or owed == 0 or (owed < self.threshold and not flush):
            self.owed = owed
            return 0
        self.grant(owed)
        self.owed = 0
        return owed

    def hold(self, held: bool) -> int:
        """Hold back credit (``True``: the local socket is write-paused) or release it;
        returns the increment due now (0 for none)."""
        self.held = held
        return self._due(False)

    def drop(self) -> None:
        """The peer will send no more (it sent FIN, or the stream ended): nothing is owed."""
        self.owed = 0

    def _due(self, flush: bool) -> int:
        owed = self.owed
        if self.held or owed == 0 or (owed < self.threshold and not flush):
            return 0
        self.grant(owed)
        self.owed = 0
        return owed
