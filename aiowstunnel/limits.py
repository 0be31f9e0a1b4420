"""The server's resource limits: their settings, the counts they bound, and a log that a
flood cannot turn into a flood of lines.

Every count is taken synchronously, before the first ``await`` of the path that needs it,
and given back exactly once (:class:`Slot`), so that concurrent requests can never all see
room for one more (docs/reliability.md, Limits). Defaults that cost file descriptors are
derived from the process's RLIMIT_NOFILE, so the limits are hit before the kernel's is.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

#: The ``limit`` label of ``aiowstunnel_limit_hits_total``: a fixed set, each one a
#: setting of :class:`ServerLimits` (or of ``[metrics]``), never anything a peer sent.
LIMIT_NAMES = (
    "handshakes",  # max_handshakes: upgrades in progress, in total
    "handshakes_per_address",  # max_handshakes_per_address
    "handshake_bytes",  # max_handshake_bytes: request head (and what follows it) too large
    "sessions",  # max_sessions_total
    "client_streams",  # max_client_streams: streams of one client entry
    "streams",  # max_streams_total
    "send_buffer",  # max_send_buffer: a peer that does not read
    "violations",  # max_violations: protocol violations of one session
    "metrics_connections",  # [metrics] max_connections
    "detached_sessions",  # max_detached_sessions: detached sessions, in total
    "detached_per_client",  # max_detached_per_client: detached sessions of one client entry
    "detached_bytes",  # max_detached_bytes: replay bytes detached sessions hold, in total
)

#: File descriptors kept out of every budget: listeners, journald, the notify socket,
#: token and config files read on reload, the exporter's scrapes.
FD_RESERVE = 64
DEFAULT_MAX_HANDSHAKE_BYTES = 16 * 1024
DEFAULT_MAX_SEND_BUFFER = 8 * 1024 * 1024
DEFAULT_MAX_VIOLATIONS = 100
DEFAULT_METRICS_CONNECTIONS = 64
#: Detached sessions (protocol.md, Resumption) hold their streams' sockets and what their
#: peer has not confirmed; these bound them below max_sessions_total, which counts them too.
DEFAULT_MAX_DETACHED_SESSIONS = 1024
DEFAULT_MAX_DETACHED_PER_CLIENT = 16
DEFAULT_MAX_DETACHED_BYTES = 256 * 1024 * 1024
#: Protocol violations of one session that are logged; the rest are only counted.
LOGGED_VIOLATIONS = 3


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE the process has now (the one the kernel enforces)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (what systemd's LimitNOFILE= allows).

    Returns:
        (soft before, soft now, hard). If the kernel refuses, soft now == soft before.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft, hard
        return soft, target, hard
    return soft, soft, hard


@dataclass(frozen=True)
class ServerLimits:
    """What one tunnel server may be made to hold. ``None``: derived from the fd limit
    by :meth:`resolve` (config leaves them ``None`` unless the operator set them)."""

    max_handshakes: int | None = None
    max_handshakes_per_address: int | None = None
    max_handshake_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES
    max_sessions_total: int | None = None
    max_streams_total: int | None = None
    max_client_streams: int | None = None
    max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER
    max_violations: int = DEFAULT_MAX_VIOLATIONS
    max_detached_sessions: int = DEFAULT_MAX_DETACHED_SESSIONS
    max_detached_per_client: int = DEFAULT_MAX_DETACHED_PER_CLIENT
    max_detached_bytes: int = DEFAULT_MAX_DETACHED_BYTES

    def resolve(self, open_files: int | None = None) -> ServerLimits:
        """Every ``None`` filled from ``open_files`` (default: the process's soft limit).

        Each handshake and each stream holds one descriptor, each session up to two (its
        socket and a LISTEN port); what is left after the reserve, the handshakes and the
        sessions is the streams' share, and one client entry may take half of it.
        """
        nofile = open_files if open_files is not None else open_files_limit()
        budget = max(64, nofile - FD_RESERVE)
        handshakes = self.max_handshakes or min(512, max(16, budget // 8))
        # Half: one address never starves the others, and one client daemon with many
        # tunnels, or many users behind one NAT, reconnecting at once after a server
        # restart is not refused (a fixed 32 refused a tenth of 1,000 tunnels and tripled
        # the time until all were back: docs/performance.md, A thousand tunnels).
        per_address = self.max_handshakes_per_address or max(1, handshakes // 2)
        sessions = self.max_sessions_total or min(4096, max(8, budget // 16))
        streams = self.max_streams_total or max(16, budget - handshakes - 2 * sessions)
        client_streams = self.max_client_streams or max(8, streams // 2)
        return replace(
            self,
            max_handshakes=handshakes,
            max_handshakes_per_address=per_address,
            max_sessions_total=sessions,
            max_streams_total=streams,
            max_client_streams=client_streams,
        )


class Slots:
    """A count bounded by ``limit``, per key (``key`` None: the total only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.by_key: Counter[Hashable] = Counter()

    def full(self, key: Hashable = None, limit: int | None = None) -> bool:
        """Whether one more would exceed ``limit`` (default: this one's), for ``key``."""
        bound = self.limit if limit is None else limit
        if key is None:
            return self.total >= bound
        return self.by_key.get(key, 0) >= bound

    def take(self, key: Hashable = None) -> None:
        self.total += 1
        if key is not None:
            self.by_key[key] += 1

    def give_back(self, key: Hashable = None) -> None:
        self.total -= 1
        if key is not None:
            self.by_key[key] -= 1
            if self.by_key[key] <= 0:
                del self.by_key[key]


class Slot:
    """One unit taken from one or more :class:`Slots`; :meth:`release` gives it back once,
    whichever path gets there first (answered, refused, failed, closed, cancelled)."""

    __slots__ = ("_held",)

    def __init__(self, *held: tuple[Slots, Hashable]) -> None:
        self._held = held
        for slots, key in held:
            slots.take(key)

    def release(self) -> None:
        held, self._held = self._held, ()
        for slots, key in held:
            slots.give_back(key)

    @property
    def held(self) -> bool:
        return bool(self._held)


class QuietLog:
    """Rate-limited logging: at most ``burst`` lines per ``key`` in each ``period``
    seconds; what is left out is counted and said in the next line that gets through.

    A flood then costs a few lines, not one per frame (issue: 20,000 WINDOW frames once
    wrote 20,003 WARNING lines), and the operator still learns how many there were.
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 5,
        period: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self.clock = clock
        self._windows: dict[Hashable, list[float | int]] = {}  # key -> [start, lines, dropped]

    def log(self, level: int, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log unless ``key`` used up its lines in this period. Returns True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period:
            dropped = int(window[2]) if window is not None else 0
            window = self._windows[key] = [now, 0, 0]
            if len(self._windows) > 1024:  # keys are call sites; keep it bounded anyway
                self._windows = {key: window}
        else:
            dropped = 0
        if window[1] >= self.burst:
            window[2] += 1
            return False
        window[1] += 1
        if dropped:
            msg += f" ({dropped} similar lines left out in the last {self.period:g} s)"
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def warning(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args, **kwargs)

    def info(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args, **kwargs)


class SessionGuard:
    """The server's limits as one session sees them (the session imports nothing of the
    server's): its handshake slot, its streams' slots, and where a limit hit is reported.

    Args:
        limits: resolved settings.
        handshakes, per_address: upgrades in progress, in total and by source address.
        streams, client_streams: open streams, in total and by client entry.
        on_hit: called with a name of :data:`LIMIT_NAMES` and the peer, once per refusal.
        busy: connections over a handshake limit being told to come back later (None:
            they are dropped at once).
    """

    def __init__(
        self,
        limits: ServerLimits,
        handshakes: Slots,
        per_address: Slots,
        streams: Slots,
        client_streams: Slots,
        on_hit: Callable[[str, str], None],
        busy: Slots | None = None,
    ) -> None:
        self.limits = limits
        self._busy = busy
        self.max_handshake_bytes = limits.max_handshake_bytes
        self.max_send_buffer = limits.max_send_buffer
        self.max_violations = limits.max_violations
        self._per_address = per_address
        self._streams = streams
        self._client_streams = client_streams
        self._on_hit = on_hit
        self.client: str | None = None  # the client entry, once accepted
        # Taken when the connection is accepted (before TLS): counts every descriptor.
        self._handshake: Slot | None = None if handshakes.full() else Slot((handshakes, None))
        self._address: Slot | None = None
        self._early_busy: Slot | None = None  # told before TLS to come back later
        #: the handshake's deadline (serveradmit's timer), cancelled once the session opens
        self.deadline: asyncio.TimerHandle | None = None

    def admit(self, peer: str, address: str) -> bool:
        """At connection_made (after TLS): False (and the hit reported) when over a
        handshake limit; True at once for a connection admitted before its TLS."""
        if self._handshake is None or not self._handshake.held:  # over, or out of time
            self._on_hit("handshakes", peer)
            return False
        if self._address is not None:
            return True
        if self._early_busy is not None:  # told before TLS: counted then
            return False
        if self._per_address.full(address):
            self._on_hit("handshakes_per_address", peer)
            return False  # its handshake slot goes back with the connection
        self._address = Slot((self._per_address, address))
        return True

    def admit_before_tls(self, peer: str, address: str) -> bool:
        """A TLS connection as it arrives, before its handshake: False (and the hit
        reported) to drop it with nothing read. Within the address's share it takes its
        place now; over it, a place among those told to come back later (the 503 goes
        out over TLS), or none left: dropped."""
        if self._handshake is None:
            self._on_hit("handshakes", peer)
            return False
        if not self._per_address.full(address):
            self._address = Slot((self._per_address, address))
            return True
        self._on_hit("handshakes_per_address", peer)
        self._early_busy = self.busy_slot()
        return self._early_busy is not None

    def busy_slot(self) -> Slot | None:
        """A place among the connections told to come back later, or None (drop it). Only
        one that holds a handshake slot gets one: it keeps that slot until it is gone, so
        that the answer costs no descriptor beyond the handshakes' budget. The caller
        releases it (one taken before TLS is handed over here)."""
        early, self._early_busy = self._early_busy, None
        if early is not None:
            return early
        if self._handshake is None or not self._handshake.held:
            return None
        if self._busy is None or self._busy.full():
            return None
        return Slot((self._busy, None))

    def answered(self) -> None:
        """The handshake ended (answered, failed or dropped): its slots go back."""
        for slot in (self._handshake, self._address, self._early_busy):
            if slot is not None:
                slot.release()

    def settled(self) -> None:
        """The handshake is over for good (the 101 sent, or the connection gone before it
        was served): the slots go back and the deadline is not needed any more. A refusal
        keeps it (answered): it bounds a peer that never closes."""
        self.answered()
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def stream_slot(self, peer: str) -> Slot | None:
        """A slot for one more stream of this session's client, or None (hit reported)."""
        if self._streams.full():
            self._on_hit("streams", peer)
            return None
        if self._client_streams.full(self.client):
            self._on_hit("client_streams", peer)
            return None
        return Slot((self._streams, None), (self._client_streams, self.client))

    def hit(self, limit: str, peer: str) -> None:
        self._on_hit(limit, peer)
