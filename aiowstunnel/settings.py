"""The settings of one session, typed and with each default written once.

Both ends of a tunnel take these: the config builds one per ``[server]`` and per
``[[tunnel]]``; the library's ``Server`` and ``Client`` build one from their keyword
arguments; the session is given it whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import wire
from .handshake import DEFAULT_UDP_IDLE, MAX_UDP_IDLE

#: The smallest ``max_frame``: a peer's largest DATA frame (header + payload) must fit in
#: one WebSocket message.
MIN_MAX_FRAME = wire.DEFAULT_MAX_DATA + wire.HEADER_SIZE


@dataclass(frozen=True)
class SessionSettings:
    """Every per-session knob (docs/configuration.md names the keys that set them).

    Attributes:
        window: receive window per stream, in bytes (1..wire.MAX_WINDOW).
        max_streams: streams the peer may have open at once.
        max_frame: the largest WebSocket message accepted, in bytes: a full DATA frame
            (1 MiB) and its header, with room to spare.
        ping_interval: seconds between keepalive pings; None sends none.
        ping_timeout: seconds a peer may stay silent after a ping before it is dead.
        handshake_timeout: seconds for TLS and the WebSocket upgrade.
        connect_timeout: seconds to dial a target (or the tunnel server).
        resume_timeout: seconds a session whose connection broke is kept, its streams open,
            for a resume (docs/protocol.md, Resumption); 0 turns resumption off.
        udp_idle_timeout: seconds after which the listening side ends a silent UDP flow;
            0 = never (protocol.md, Datagram flows).
    """

    window: int = wire.DEFAULT_WINDOW
    max_streams: int = wire.DEFAULT_MAX_STREAMS
    max_frame: int = 1024 * 1024 + 64
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    resume_timeout: float = 60.0
    udp_idle_timeout: float = DEFAULT_UDP_IDLE

    def __post_init__(self) -> None:
        # The config reports these with the key's name first; this is for library callers.
        if not 0 < self.window <= wire.MAX_WINDOW:
            raise ValueError(f"window {self.window} out of range 1..{wire.MAX_WINDOW}")
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {self.max_streams}")
        # Below MIN_MAX_FRAME a peer's full DATA frame is refused with 1009: the config file
        # holds to the minimum, the library allows it (a test of that refusal uses it).
        if self.max_frame < 1:
            raise ValueError(f"max_frame must be >= 1, got {self.max_frame}")
        for name in ("ping_interval", "ping_timeout", "handshake_timeout", "connect_timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.resume_timeout) and self.resume_timeout >= 0):
            raise ValueError(
                f"resume_timeout must be a finite number >= 0, got {self.resume_timeout}"
            )
        if not 0 <= self.udp_idle_timeout <= MAX_UDP_IDLE:  # NaN fails this too
            raise ValueError(
                f"udp_idle_timeout must be 0..{MAX_UDP_IDLE:g} (0: never), "
                f"got {self.udp_idle_timeout}"
            )

    @classmethod
    def given(cls, settings: SessionSettings | None, **values: object) -> SessionSettings:
        """The settings of a library ``Server`` or ``Client``: ``settings`` whole, or one
        built from the keyword arguments (``values``, each at its default unless given).

        Raises:
            TypeError: both ``settings`` and a keyword argument other than its default.
            ValueError: a value out of range.
        """
        if settings is None:
            return cls(**values)  # type: ignore[arg-type]
        both = sorted(name for name, value in values.items() if value != getattr(cls, name))
        if both:
            raise TypeError(f"give settings= or {', '.join(both)}, not both")
        return settings
