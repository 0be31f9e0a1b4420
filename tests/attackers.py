"""Hostile tunnel clients, written by hand over websockets' sans-I/O ClientProtocol, for the
exhaustion tests: they send what a real Client never would, and may never read.

Every loop here is bounded in count and in time; sources are loopback addresses only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from aiowstunnel import wire
from aiowstunnel.handshake import HEADER_ADDRESS, HEADER_MODE

LOCAL = "127.0.0.1"


def client_frame(opcode: Opcode, data: bytes) -> bytes:
    """One masked frame, as a client must send it."""
    return Frame(opcode, data).serialize(mask=True)


def ping_frame(size: int = 125) -> bytes:
    return client_frame(Opcode.PING, b"p" * size)


def binary_frame(message: bytes) -> bytes:
    return client_frame(Opcode.BINARY, message)


def upgrade_request(
    port: int,
    token: str | None,
    mode: str = "connect",
    address: str = "127.0.0.1:1",
    extra: Iterable[tuple[str, str]] = (),
    path: str = "/aiowstunnel",
) -> bytes:
    """The bytes of a complete upgrade request, as aiowstunnel's client writes it."""
    uri = parse_uri(f"ws://{LOCAL}:{port}{path}")
    protocol = ClientProtocol(uri, subprotocols=[wire.SUBPROTOCOL])
    request = protocol.connect()
    request.headers[HEADER_MODE] = mode
    request.headers[HEADER_ADDRESS] = address
    if token is not None:
        request.headers["Authorization"] = f"Bearer {token}"
    for key, value in extra:
        request.headers[key] = value
    return request.serialize()


class RawSession:
    """One attacker session: a socket from ``source``, the upgrade, then raw frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol: ClientProtocol | None = None
        self.response: Response | None = None

    @classmethod
    async def connect(cls, port: int, source: str = LOCAL) -> RawSession:
        reader, writer = await asyncio.open_connection(
            LOCAL, port, local_addr=(source, 0), limit=1 << 20
        )
        return cls(reader, writer)

    @classmethod
    async def open(
        cls,
        port: int,
        token: str,
        mode: str = "connect",
        address: str = "127.0.0.1:1",
        source: str = LOCAL,
        timeout: float = 10.0,
        extra: Iterable[tuple[str, str]] = (),
        status: int = 101,
    ) -> RawSession:
        """Connect and upgrade with ``extra`` headers; raises AssertionError unless the
        answer has ``status`` (101 by default; the answer is in :attr:`response`)."""
        session = await cls.connect(port, source)
        protocol = ClientProtocol(
            parse_uri(f"ws://{LOCAL}:{port}/aiowstunnel"), subprotocols=[wire.SUBPROTOCOL]
        )
        request = protocol.connect()
        request.headers[HEADER_MODE] = mode
        request.headers[HEADER_ADDRESS] = address
        request.headers["Authorization"] = f"Bearer {token}"
        for key, value in extra:
            request.headers[key] = value
        protocol.send_request(request)
        session.protocol = protocol
        session.flush()

        async def answer() -> None:
            while session.response is None:
                data = await session.reader.read(65536)
                assert data, "closed during the handshake"
                protocol.receive_data(data)
                for event in protocol.events_received():
                    if isinstance(event, Response):
                        session.response = event

        await asyncio.wait_for(answer(), timeout)
        assert session.response.status_code == status, session.response.status_code
        return session

    def flush(self) -> None:
        assert self.protocol is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.writer.write(chunk)

    def send(self, message: bytes) -> None:
        """One binary message through websockets (masked, in order with its pongs)."""
        assert self.protocol is not None
        self.protocol.send_binary(message)
        self.flush()

    async def frames(self, timeout: float) -> list[Frame]:
        """The frames that arrive within ``timeout``, pings and pongs left out (websockets
        answers the pings; a link pings at once when it opens)."""
        assert self.protocol is not None
        protocol = self.protocol
        got: list[Frame] = []

        async def read() -> None:
            while data := await self.reader.read(65536):
                protocol.receive_data(data)
                got.extend(
                    e
                    for e in protocol.events_received()
                    if isinstance(e, Frame) and e.opcode not in (Opcode.PING, Opcode.PONG)
                )
                self.flush()

        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(read(), timeout)
        return got

    async def push(self, chunk: bytes, total: int, stall: float = 1.0) -> int:
        """Write ``chunk`` repeatedly, never reading, up to ``total`` bytes or until the
        socket accepts nothing for ``stall`` seconds. Returns the bytes written."""
        sent = 0
        while sent < total:
            self.writer.write(chunk)
            try:
                await asyncio.wait_for(self.writer.drain(), stall)
            except (asyncio.TimeoutError, ConnectionError):
                break
            sent += len(chunk)
        return sent

    def close(self) -> None:
        self.writer.transport.abort()
