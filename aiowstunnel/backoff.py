"""Exponential backoff with full jitter, as a pure object.

Delays grow ``initial * factor**n`` up to ``max``; each actual delay is drawn uniformly from
``[0, that]`` ("full jitter", which spreads a herd of clients restarting together). A
connection that stayed up for at least ``reset_after`` seconds resets the sequence.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float = 1.0
    max: float = 60.0
    factor: float = 2.0
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        numbers = (self.initial, self.max, self.factor, self.reset_after)
        if not all(math.isfinite(n) for n in numbers):
            raise ValueError(f"backoff: every value must be a finite number: {self}")
        if self.reset_after < 0:
            raise ValueError(f"backoff: reset_after ({self.reset_after}) must be >= 0")
        if not 0 < self.initial <= self.max:
            raise ValueError(f"backoff: need 0 < initial ({self.initial}) <= max ({self.max})")
        if self.factor < 1:
            raise ValueError(f"backoff: factor ({self.factor}) must be >= 1")


class Backoff:
    """The delay sequence of one supervised connection.

    Args:
        policy: the numbers.
        random: returns a float in [0, 1); injected so that tests are deterministic.
    """

    def __init__(self, policy: BackoffPolicy, random: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._random = random
        self.attempt = 0
        self.last_delay = 0.0

    def ceiling(self) -> float:
        """The upper bound of the next delay (before jitter)."""
        p = self.policy
        try:
            return min(p.max, p.initial * p.factor**self.attempt)
        except OverflowError:  # factor**attempt beyond a float: long past max anyway
            return p.max

    def next_delay(self, down_for: float | None = None) -> float:
        """The delay before the next attempt; each call counts one more failure.

        ``down_for``: how long the connection has been down. The ceiling is then also at
        most that long (and at least ``initial``): failures in quick succession (a server
        restarting refuses every attempt for half a second) do not push the next attempt
        far past the outage, so a tunnel is back within about the outage's length of the
        server's return, while a long outage still spreads the attempts as wide.
        """
        ceiling = self.ceiling()
        if down_for is not None:
            ceiling = min(ceiling, max(self.policy.initial, down_for))
        self.last_delay = ceiling * self._random()
        self.attempt += 1
        return self.last_delay

    def connection_ended(self, stayed_up: float) -> None:
        """Tell how long the last connection stayed up; a long run resets the sequence."""
        if stayed_up >= self.policy.reset_after:
            self.reset()

    def reset(self) -> None:
        self.attempt = 0
        self.last_delay = 0.0


def asked_delay(asked: float, random: Callable[[], float]) -> float:
    """A busy server's Retry-After (``asked`` seconds) as the wait before the next attempt:
    jittered 0.5-1.5x, so that the clients it turned away together do not return together
    (protocol.md)."""
    return asked * (0.5 + random())
