"""UDP test helpers: an echo server, a sink that records what reached it, and a paced
exchange of many datagrams over many flows that checks boundaries, order and content.

Every socket is on loopback; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from dataclasses import dataclass, field

LOCAL = "127.0.0.1"
#: Socket buffers of the test's own sockets: a burst of replies must not overflow them
#: (the kernel caps this at net.core.rmem_max).
BUFFER = 4 * 1024 * 1024


def big_buffers(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)


class UdpEcho(asyncio.DatagramProtocol):
    """Sends every datagram back to where it came from; counts them."""

    def __init__(self) -> None:
        self.count = 0
        self.sources: set[tuple[str, int]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        big_buffers(transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1
        self.sources.add(addr)
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class UdpSink(asyncio.DatagramProtocol):
    """Records what reaches it, answers nothing."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        big_buffers(transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1
        self.bytes += len(data)


async def udp_server(factory, port: int = 0):
    """A UDP server on loopback: (transport, protocol, port)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(factory, local_addr=(LOCAL, port))
    return transport, protocol, transport.get_extra_info("sockname")[1]


@dataclass
class FlowResult:
    sent: int = 0
    intact: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)


class _Flow(asyncio.DatagramProtocol):
    """One source address: sends its datagrams with at most ``window`` in flight and
    matches each reply against what is in flight, oldest first. A reply that matches
    nothing in flight is another flow's, a merged or a split one, or a corrupted one; one
    that matches a later datagram than an earlier one still waiting means the earlier one
    is lost (order is checked, since only earlier ones are skipped, never later ones)."""

    def __init__(self, index: int, payloads: list[bytes], window: int, timeout: float) -> None:
        self.index = index
        self.payloads = payloads
        self.window = window
        self.timeout = timeout
        self.inflight: list[bytes] = []
        #: given up on (no reply within ``timeout``): a reply may still come, late
        self.expired: list[bytes] = []
        self.next = 0
        self.result = FlowResult()
        self.done = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        big_buffers(transport)
        self._fill()

    def _fill(self) -> None:
        while len(self.inflight) < self.window and self.next < len(self.payloads):
            data = self.payloads[self.next]
            self.next += 1
            self.inflight.append(data)
            self.transport.sendto(data)  # type: ignore[attr-defined]
            self.result.sent += 1
        self._arm()
        if not self.inflight and not self.done.done():
            self.done.set_result(self.result)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self.inflight:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expired)

    def _expired(self) -> None:
        self.result.lost += len(self.inflight)  # nothing came back for them in time
        self.expired = (self.expired + self.inflight)[-256:]
        self.inflight.clear()
        self._fill()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            at = self.inflight.index(data)
        except ValueError:
            if data in self.expired:  # late (a stalled loop), but whole: not lost after all
                self.expired.remove(data)
                self.result.lost -= 1
                self.result.intact += 1
                return
            self.result.errors.append(
                f"flow {self.index}: a reply of {len(data)} bytes matches nothing it sent "
                f"(in flight: {[len(d) for d in self.inflight]})"
            )
            return
        self.result.lost += at
        self.result.intact += 1
        del self.inflight[: at + 1]
        # Anything older than this reply should have come before it: from now on one of
        # those would be out of order, an error, not a late arrival.
        self.expired.clear()
        self._fill()

    def error_received(self, exc: Exception) -> None:
        self.result.errors.append(f"flow {self.index}: {exc}")


def payloads_for(flow: int, count: int, rng: random.Random, big_every: int = 0) -> list[bytes]:
    """``count`` datagrams of random sizes 1..1400 (every ``big_every``-th 65,507), each
    starting with the flow's number and carrying its sequence number when it has room, so
    that no two flows' datagrams are alike and one flow's are told apart."""
    pool = os.urandom(70_000)
    out = []
    for seq in range(count):
        size = 65_507 if big_every and seq % big_every == big_every - 1 else rng.randint(1, 1400)
        head = bytes([flow]) + seq.to_bytes(4, "big")
        start = rng.randrange(0, len(pool) - size)
        out.append((head + pool[start : start + size])[:size])
    return out


async def exchange(
    host: str,
    port: int,
    flows: int,
    per_flow: int,
    *,
    window: int = 4,
    big_every: int = 0,
    timeout: float = 1.0,
    seed: int = 18,
) -> list[FlowResult]:
    """Run ``flows`` concurrent sources against an echo at ``host:port``, each sending
    ``per_flow`` datagrams; returns each flow's result once all are done."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    protocols = []
    transports = []
    for index in range(flows):
        payloads = payloads_for(index, per_flow, rng, big_every)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda i=index, p=payloads: _Flow(i, p, window, timeout), remote_addr=(host, port)
        )
        protocols.append(protocol)
        transports.append(transport)
    try:
        return list(await asyncio.gather(*(p.done for p in protocols)))
    finally:
        for transport in transports:
            transport.close()
