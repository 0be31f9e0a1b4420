"""A link's keepalive (protocol.md, Keepalive), and the budget of the peer's pings.

Both take the event loop's clock and report through callbacks, so a link only tells them
what happened (bytes arrived, a ping arrived) and acts on what they decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Pings a peer may send within PING_PERIOD seconds (a keepalive sends one per interval).
PING_BURST = 64
PING_PERIOD = 10.0


class Keepalive:
    """Pings the peer every ``interval``; a peer silent for ``timeout`` after a ping is dead.

    Any byte from the peer since a ping proves it alive (:attr:`last_rx`, set by the link
    at each read): under load the pong may queue behind data, which must not count as
    silence. A peer silent from time s is caught by the first ping after s
    (<= s + interval) plus ``timeout``.

    Args:
        loop: the clock and the timers.
        interval, timeout: seconds; ``interval`` None or 0 sends no pings.
        send_ping: sends one ping; returns False when the link can send no more.
        on_silent: called once with the reason when the peer is found dead.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float | None,
        timeout: float,
        send_ping: Callable[[], bool],
        on_silent: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.timeout = timeout
        self._send_ping = send_ping
        self._on_silent = on_silent
        self.last_rx = loop.time()
        self._last_ping = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._stopped = False

    def start(self) -> None:
        if self.interval and not self._stopped:
            self._timer = self.loop.call_later(self.interval, self._ping)

    def stop(self) -> None:
        self._stopped = True
        for timer in (self._timer, self._deadline):
            if timer is not None:
                timer.cancel()

    def _ping(self) -> None:
        if self._stopped or not self._send_ping():
            return
        now = self.loop.time()
        self._last_ping = now
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.timeout, self._check, now)
        self._timer = self.loop.call_later(self.interval or 1.0, self._ping)

    def _check(self, sent_at: float) -> None:
        self._deadline = None
        if self._stopped:
            return
        if self.last_rx < sent_at:
            silent = self.loop.time() - self.last_rx
            self._on_silent(f"peer silent for {silent:.1f} s (no pong within {self.timeout:g} s)")
        elif self._last_ping > sent_at:  # a later ping is still unanswered: watch it
            delay = self._last_ping + self.timeout - self.loop.time()
            self._deadline = self.loop.call_later(max(0.0, delay), self._check, self._last_ping)


class PingBudget:
    """A peer's pings are answered by websockets as they are parsed: a flood of them costs
    a PONG each and the CPU to make it, whoever else waits (docs/reliability.md, Limits).
    A keepalive needs one per interval; more than PING_BURST within PING_PERIOD seconds is
    a violation (the link is then dropped)."""

    __slots__ = ("_pings", "_since")

    def __init__(self) -> None:
        self._pings = 0  # pings received since _since
        self._since = 0.0

    def spend(self, now: float) -> bool:
        """Count one ping at ``now``; False once the peer is over its budget."""
        if now - self._since >= PING_PERIOD:
            self._since, self._pings = now, 0
        self._pings += 1
        return self._pings <= PING_BURST

    @staticmethod
    def reason() -> str:
        return f"ping flood: more than {PING_BURST} pings in {PING_PERIOD:g} s"
