"""A raw WebSocket peer sending broken frames gets the defined answer (protocol.md,
Errors); the server keeps serving its other sessions."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

import aiowstunnel
from aiowstunnel import wire
from aiowstunnel.addresses import Address
from aiowstunnel.handshake import TunnelRequest

from .conftest import echo_roundtrip


async def raw_session(server, target_port: int):
    """A hand-driven WebSocket to the server, as a buggy or hostile client would be."""
    request = TunnelRequest(aiowstunnel.CONNECT, Address("127.0.0.1", target_port))
    return await connect(
        f"ws://127.0.0.1:{server.port}/aiowstunnel",
        subprotocols=[wire.SUBPROTOCOL],
        additional_headers=request.headers(),
        compression=None,
        ping_interval=None,
    )


async def expect_close(ws, code: int, reason_part: str) -> None:
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == code, (ws.close_code, ws.close_reason)
    assert reason_part in ws.close_reason


async def expect_rst(ws, stream_id: int, reason_part: str) -> None:
    frame = wire.parse_frame(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(frame, wire.Rst), frame
    assert frame.stream_id == stream_id
    assert reason_part in frame.reason


SESSION_FAULTS = [
    (b"\x63\x00\x00\x00\x01payload", "unknown frame type 99"),
    (b"\x01\x00", "truncated frame"),
    (b"\x05\x00\x00\x00\x01\x00\x00", "WINDOW payload is 2 bytes"),
    (b"\x08\x00\x00\x00\x07", "GOAWAY on stream 7"),
    (b"\x01\x00\x00\x00\x02\x00\x01\x00\x00", "of our parity"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("message", "reason"), SESSION_FAULTS, ids=[r for _, r in SESSION_FAULTS])
async def test_session_level_fault_closes_with_1002_and_reason(
    make_tunnel, echo_backend, message, reason
):
    tunnel = await make_tunnel(aiowstunnel.CONNECT, echo_backend.port)
    ws = await raw_session(tunnel.server, echo_backend.port)
    await ws.send(message)
    await expect_close(ws, 1002, reason)
    # Everyone else is unaffected.
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 20)
    assert sent == received


@pytest.mark.timeout(30)
async def test_text_message_closes_session(make_tunnel, echo_backend):
    tunnel = await make_tunnel(aiowstunnel.CONNECT, echo_backend.port)
    ws = await raw_session(tunnel.server, echo_backend.port)
    await ws.send("hello")
    await expect_close(ws, 1002, "binary messages only")


@pytest.mark.timeout(30)
async def test_stream_level_faults_get_rst_and_session_survives(make_tunnel, echo_backend):
    # A window smaller than one message may be, so a single DATA frame can overrun it
    # (the default, 2 MiB, is larger than the largest frame the server accepts).
    tunnel = await make_tunnel(aiowstunnel.CONNECT, echo_backend.port, server_kw={"window": 65536})
    ws = await raw_session(tunnel.server, echo_backend.port)

    # DATA before OPEN: the stream does not exist.
    await ws.send(wire.Data(1, b"early").serialize())
    await expect_rst(ws, 1, "unknown stream 1")
    # WINDOW for a stream never opened.
    await ws.send(wire.WindowUpdate(99, 10).serialize())
    await expect_rst(ws, 99, "unknown stream 99")

    # A real stream, then one byte more than the credit the server gave.
    await ws.send(wire.Open(3, 65536).serialize())
    ok = wire.parse_frame(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(ok, wire.OpenOk) and ok.window == 65536
    await ws.send(wire.Data(3, b"x" * (ok.window + 1)).serialize())
    frame = wire.parse_frame(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(frame, wire.Rst), frame
    assert frame.stream_id == 3
    assert "window overflow" in frame.reason

    # The session itself is still good: a new stream echoes.
    await ws.send(wire.Open(5, 65536).serialize())
    assert isinstance(wire.parse_frame(await asyncio.wait_for(ws.recv(), 5)), wire.OpenOk)
    await ws.send(wire.Data(5, b"ping").serialize())
    echoed = wire.parse_frame(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(echoed, wire.Data) and bytes(echoed.data) == b"ping"
    await ws.close()
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 20)
    assert sent == received


@pytest.mark.timeout(30)
async def test_oversized_message_is_refused_with_1009(make_tunnel, echo_backend):
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT, echo_backend.port, server_kw={"max_frame": 64 * 1024}
    )
    ws = await raw_session(tunnel.server, echo_backend.port)
    await ws.send(wire.Data(1, b"z" * (128 * 1024)).serialize())
    await expect_close(ws, 1009, "")


@pytest.mark.timeout(30)
async def test_open_flood_beyond_stream_limit_is_refused(make_tunnel, echo_backend):
    tunnel = await make_tunnel(aiowstunnel.CONNECT, echo_backend.port, server_kw={"max_streams": 4})
    ws = await raw_session(tunnel.server, echo_backend.port)
    for sid in range(1, 40, 2):
        await ws.send(wire.Open(sid, 65536).serialize())
    answers = [wire.parse_frame(await asyncio.wait_for(ws.recv(), 5)) for _ in range(20)]
    accepted = [f for f in answers if isinstance(f, wire.OpenOk)]
    refused = [f for f in answers if isinstance(f, wire.OpenFail)]
    assert len(accepted) == 4
    assert len(refused) == 16
    assert all("too many streams" in f.reason for f in refused)
    await ws.close()


@pytest.mark.timeout(30)
async def test_unknown_subprotocol_refused_with_reason(make_tunnel, echo_backend):
    from websockets.exceptions import InvalidStatus

    tunnel = await make_tunnel(aiowstunnel.CONNECT, echo_backend.port)
    with pytest.raises(InvalidStatus) as caught:
        await connect(
            f"ws://127.0.0.1:{tunnel.server.port}/aiowstunnel", subprotocols=["aiowstunnel.v9"]
        )
    assert caught.value.response.status_code == 400
    assert b"aiowstunnel.v1" in caught.value.response.body


@pytest.mark.timeout(30)
async def test_nothing_after_a_session_fault_is_relayed(make_tunnel):
    """A violation fails the session: a DATA frame that follows it, even one split across
    reads, must not reach the target (websockets discards everything after a failure, and
    the data path hands it the connection when the session fails). Driven with websockets'
    sans-I/O client over a plain socket, so that each write lands exactly as sent."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State
    from websockets.uri import parse_uri

    got = bytearray()
    opened, ended = asyncio.Event(), asyncio.Event()

    async def record(reader, writer):
        opened.set()
        try:
            while data := await reader.read(65536):
                got.extend(data)
        except ConnectionError:
            pass  # the failed session aborts the stream
        finally:
            ended.set()
            writer.close()

    backend = await asyncio.start_server(record, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    tunnel = await make_tunnel(aiowstunnel.CONNECT, port)
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.server.port)
    ws = ClientProtocol(
        parse_uri(f"ws://127.0.0.1:{tunnel.server.port}/aiowstunnel"),
        subprotocols=[wire.SUBPROTOCOL],
    )
    upgrade = ws.connect()
    for key, value in TunnelRequest(aiowstunnel.CONNECT, Address("127.0.0.1", port)).headers():
        upgrade.headers[key] = value
    ws.send_request(upgrade)
    writer.writelines(ws.data_to_send())

    async def frames() -> list:  # the server's ping at open left out (websockets answers it)
        events: list = []
        while not events:
            ws.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            events = [
                e
                for e in ws.events_received()
                if not (isinstance(e, Frame) and e.opcode in (Opcode.PING, Opcode.PONG))
            ]
        writer.writelines(ws.data_to_send())  # the pong
        return events

    await frames()  # the 101
    assert ws.state is State.OPEN
    ws.send_binary(wire.Open(1, wire.DEFAULT_WINDOW, "test").serialize())
    writer.writelines(ws.data_to_send())
    (accepted,) = await frames()
    assert isinstance(wire.parse_frame(accepted.data), wire.OpenOk)
    await asyncio.wait_for(opened.wait(), 5)
    ws.send_binary(wire.Data(1, b"before").serialize())
    writer.writelines(ws.data_to_send())

    def masked(message: bytes) -> bytes:
        return Frame(Opcode.BINARY, message).serialize(mask=True, extensions=[])

    after = masked(wire.Data(1, b"after").serialize())
    writer.write(masked(b"\x63\x00\x00\x00\x01bad") + after[:4])  # one read: fault + a part
    (close,) = await frames()
    assert close.opcode is Opcode.CLOSE and b"unknown frame type 99" in close.data
    writer.write(after[4:])  # the rest of the DATA frame, in a later read
    writer.close()  # the server half-closed after failing: we close too, as a client does
    await asyncio.wait_for(ended.wait(), 10)  # the stream ends with the session
    assert got == b"before"
    backend.close()
