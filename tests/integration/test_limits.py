"""Issue 11, in one process: the server's counts are reserved before any await, peer text
never becomes a label or a raw log line, and nothing pipelined is answered before the 101.

Each test here failed on the code before the limits (6d70293); the whole-daemon floods,
measured from outside, are in tests/system/test_exhaustion.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

import aiowstunnel
from aiowstunnel import wire
from aiowstunnel.addresses import AddressRule
from aiowstunnel.limits import ServerLimits
from aiowstunnel.policy import ClientPolicy, token_digest
from aiowstunnel.server import Server

from ..attackers import RawSession, binary_frame, client_frame, ping_frame, upgrade_request
from .conftest import LOCAL, echo_roundtrip

TOKEN = "s3cret-token"


def app(*connect: str, listen: tuple[str, ...] = (), max_sessions: int = 16) -> ClientPolicy:
    return ClientPolicy(
        "app",
        token_digest(TOKEN),
        tuple(AddressRule.parse(r) for r in connect),
        tuple(AddressRule.parse(r) for r in listen),
        max_sessions=max_sessions,
    )


async def started(**kw) -> Server:
    server = Server(LOCAL, 0, **kw)
    await server.listen()
    return server


async def exchange(port: int, data: bytes, source: str = LOCAL, timeout: float = 5.0) -> bytes:
    """Write ``data`` at once, read until the server closes (or ``timeout``)."""
    reader, writer = await asyncio.open_connection(LOCAL, port, local_addr=(source, 0))
    writer.write(data)
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            out += chunk
    except (asyncio.TimeoutError, ConnectionError):
        pass
    writer.transport.abort()
    return out


def split_response(raw: bytes) -> tuple[int, bytes, bytes]:
    """(status, body, what came after the body) of one HTTP response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, rest[:length], rest[length:]


@pytest.mark.timeout(30)
async def test_max_sessions_holds_under_200_concurrent_upgrades_awaiting_the_resolver(
    echo_backend,
):
    # Finding 5: a CIDR rule and a name target make the check await getaddrinfo; before,
    # every one of the 200 saw no session registered yet and all were accepted.
    server = await started(clients=[app("127.0.0.0/8:*", max_sessions=2)])
    request = upgrade_request(server.port, TOKEN, address=f"localhost:{echo_backend.port}")
    sources = [f"127.0.0.{2 + i % 10}" for i in range(200)]  # 20 per address
    try:
        answers = await asyncio.gather(
            *(exchange(server.port, request, s, timeout=2.0) for s in sources)
        )
        statuses = [int(a.split(b" ", 2)[1]) if a else 0 for a in answers]
        assert statuses.count(101) == 2, sorted(set(statuses))
        assert statuses.count(429) == 198
        assert server.stats.rejected["too_many_sessions"] == 198
    finally:
        await server.close(1)
    # every path released its reservation: the count is back to 0
    admission = server.admission
    assert admission.client_sessions.total == 0 and admission.sessions_total.total == 0


@pytest.mark.timeout(30)
async def test_a_full_server_and_one_shutting_down_are_told_apart_by_the_client(echo_backend):
    # Both answer 503 without Retry-After; the label comes from X-Aiowstunnel-Refusal.
    from aiowstunnel.backoff import BackoffPolicy
    from aiowstunnel.client import Client

    server = await started(
        clients=[app(f"{LOCAL}:{echo_backend.port}")], limits=ServerLimits(max_sessions_total=1)
    )

    def client() -> Client:
        return Client(
            aiowstunnel.CONNECT, LOCAL, server.port, LOCAL, 0, LOCAL, echo_backend.port,
            token=TOKEN, backoff=BackoffPolicy(initial=30, max=60), random=lambda: 0.1,
        )  # fmt: skip

    async def first_failure(c: Client) -> str:
        for _ in range(500):
            if c.stats.connect_failures:
                return next(iter(c.stats.connect_failures))
            await asyncio.sleep(0.01)
        raise AssertionError("no connection attempt failed")

    first, second, third = client(), client(), client()
    first.start()
    try:
        await first.wait_up(5)
        second.start()
        assert await first_failure(second) == "server_full"
        assert server.stats.rejected["server_full"] == 1
        assert second.last_error is not None
        assert "maximum of 1 sessions" in second.last_error
        server._closing = True  # as close() sets it: requests still arriving are refused
        third.start()
        assert await first_failure(third) == "shutting_down"
        assert server.stats.rejected["shutting_down"] == 1
    finally:
        for c in (first, second, third):
            await c.close(1)
        await server.close(1)


@pytest.mark.timeout(30)
async def test_streams_per_client_and_in_total_are_bounded(make_tunnel, echo_backend):
    # Finding 6: one client may hold max_client_streams, all of them max_streams_total.
    from aiowstunnel.limits import ServerLimits

    rule = f"{LOCAL}:{echo_backend.port}"
    other = ClientPolicy("other", token_digest("other-token"), (AddressRule.parse(rule),))
    limits = ServerLimits(max_client_streams=5, max_streams_total=8)
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"clients": [app(rule), other], "limits": limits},
        client_kw={"token": TOKEN},
    )
    held = []
    for _ in range(7):  # 5 get through, 2 are refused
        reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
        writer.write(b"x")
        try:
            got = await asyncio.wait_for(reader.read(1), 5)
        except ConnectionError:
            got = b""
        held.append((writer, got))
    assert [got for _, got in held].count(b"x") == 5
    stats = entry_stats(tunnel.server, "app")
    assert stats.stream_open_failures["stream_limit"] == 2
    assert tunnel.server.limit_stats.hits["client_streams"] == 2
    # the other client still has the 3 left in the total, and not one more
    client = aiowstunnel.Client(
        aiowstunnel.CONNECT,
        LOCAL,
        tunnel.server.port,
        LOCAL,
        0,
        LOCAL,
        echo_backend.port,
        token="other-token",
    )
    client.start()
    try:
        await client.wait_up(10)
        sent, received = await echo_roundtrip(client.listen_address, 1 << 20)
        assert sent == received
        assert tunnel.server.limit_stats.hits["streams"] == 0
    finally:
        await client.close(1)
        for writer, _ in held:
            writer.close()
    # released on every close: the same client opens streams again
    for _ in range(100):
        if tunnel.server.admission.streams_total.total == 0:
            break
        await asyncio.sleep(0.02)
    assert tunnel.server.admission.streams_total.total == 0
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 16)
    assert sent == received


@pytest.mark.timeout(30)
async def test_open_fail_text_never_becomes_a_label():
    # Finding 7: 500 distinct OPEN_FAIL reasons once made 500 series of stream_open_failures.
    server = await started(clients=[app(listen=("127.0.0.1:*",))])
    attacker = await RawSession.open(server.port, TOKEN, mode="listen", address="127.0.0.1:0")
    assert attacker.response is not None
    bound = attacker.response.headers["X-Aiowstunnel-Bound"]
    port = int(bound.rsplit(":", 1)[1])
    users = []
    try:
        for _ in range(500):
            _, writer = await asyncio.open_connection(LOCAL, port)
            users.append(writer)
        refused = 0
        while refused < 500:
            frames = await attacker.frames(0.5)
            assert frames, f"only {refused} OPENs came"
            for frame in frames:
                opened = wire.parse_frame(frame.data)
                if isinstance(opened, wire.Open):
                    attacker.send(wire.OpenFail(opened.stream_id, f"reason {refused}").serialize())
                    refused += 1
        await asyncio.sleep(0.2)
        failures = entry_stats(server, "app").stream_open_failures
        assert dict(failures) == {"peer_refused": 500}
    finally:
        for writer in users:
            writer.close()
        attacker.close()
        await server.close(1)


@pytest.mark.timeout(30)
async def test_peer_text_is_escaped_and_kept_out_of_the_peer_field(caplog, echo_backend):
    # Finding 8: OPEN origin, OPEN_FAIL/GOAWAY/close reasons and the request path reached
    # the log raw; the origin became the PEER= field.
    server = await started(clients=[app("127.0.0.1:1", listen=("127.0.0.1:*",))])
    evil = "evil\nFORGED LINE peer=10.0.0.1 \x1b[31m\u202e"
    caplog.set_level(logging.DEBUG, logger="aiowstunnel")
    try:
        # a dial that fails logs the origin
        attacker = await RawSession.open(server.port, TOKEN, address="127.0.0.1:1")
        attacker.send(wire.Open(1, 65536, evil).serialize())
        await attacker.frames(0.5)
        attacker.send(wire.GoAway(0, evil).serialize())
        await attacker.frames(0.2)
        attacker.close()
        closer = await RawSession.open(server.port, TOKEN, address="127.0.0.1:1")
        assert closer.protocol is not None
        closer.protocol.send_close(1000, evil)
        closer.flush()
        await closer.frames(0.5)
        closer.close()
        # a refused path is logged before any auth
        await exchange(server.port, upgrade_request(server.port, TOKEN, path="/x%0a\x7fy"))
        await asyncio.sleep(0.2)
    finally:
        await server.close(1)
    records = [r for r in caplog.records if r.name.startswith("aiowstunnel")]
    assert any("evil" in r.getMessage() for r in records)
    for record in records:
        text = record.getMessage()
        assert "\n" not in text and "\x1b" not in text and "\u202e" not in text, text
        assert "evil" not in str(getattr(record, "peer", "")), record.getMessage()
    assert any("evil" in str(getattr(r, "origin", "")) for r in records)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pipelined", ["ping", "close"])
async def test_nothing_pipelined_after_the_request_is_answered_before_the_refusal(pipelined):
    # Finding 9: a PONG went out before the 401; a pipelined CLOSE left no HTTP answer.
    server = await started(clients=[app("127.0.0.1:1")])
    frame = ping_frame() if pipelined == "ping" else client_frame(8, b"\x03\xe8bye")
    try:
        raw = await exchange(server.port, upgrade_request(server.port, "wrong") + frame)
        status, body, after = split_response(raw)
        assert status == 401 and b"invalid token" in body
        assert after == b""  # no frame of any kind after the refusal
        # with a good token the ping is answered, after the 101
        raw = await exchange(
            server.port, upgrade_request(server.port, TOKEN) + ping_frame(), timeout=0.5
        )
        assert raw.startswith(b"HTTP/1.1 101 ")
        if pipelined == "ping":
            assert b"\x8a\x7d" + b"p" * 125 in raw.partition(b"\r\n\r\n")[2]  # the PONG
    finally:
        await server.close(1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("header", ["Authorization", "X-Aiowstunnel-Mode", "X-Aiowstunnel-Address"])
async def test_duplicate_single_headers_are_a_400_naming_the_header(header):
    server = await started(clients=[app("127.0.0.1:1")])
    value = {"Authorization": f"Bearer {TOKEN}", "X-Aiowstunnel-Mode": "connect"}.get(
        header, "127.0.0.1:1"
    )
    try:
        raw = await exchange(
            server.port, upgrade_request(server.port, TOKEN, extra=[(header, value)])
        )
        status, body, _ = split_response(raw)
        assert status == 400, raw[:200]
        assert f"duplicate {header} header".encode() in body
        assert server.stats.rejected["internal_error"] == 0
    finally:
        await server.close(1)


@pytest.mark.timeout(30)
async def test_valid_token_with_an_invalid_upgrade_grants_nothing(caplog):
    server = await started(clients=[app(listen=("127.0.0.1:*",))])
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        port = probe.getsockname()[1]
    request = upgrade_request(server.port, TOKEN, mode="listen", address=f"127.0.0.1:{port}")
    request = request.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 99")
    caplog.set_level(logging.INFO, logger="aiowstunnel")
    try:
        raw = await exchange(server.port, request)
        status, _, _ = split_response(raw)
        assert 400 <= status < 500
        with socket.socket() as again:  # the LISTEN port was never bound
            again.bind((LOCAL, port))
        assert not any("session of" in r.getMessage() for r in caplog.records)
        assert server.stats.rejected["bad_upgrade"] == 1
        assert not server.sessions
    finally:
        await server.close(1)


@pytest.mark.timeout(30)
async def test_a_double_slash_path_is_not_read_as_a_host():
    server = await started(clients=[app("127.0.0.1:1")])
    try:
        raw = await exchange(
            server.port, upgrade_request(server.port, TOKEN, path="//evil/aiowstunnel")
        )
        status, body, _ = split_response(raw)
        assert status == 404 and b"//evil/aiowstunnel" in body
    finally:
        await server.close(1)


@pytest.mark.timeout(30)
async def test_head_larger_than_the_budget_gets_a_431_at_once():
    server = await started(clients=[app("127.0.0.1:1")])
    head = b"GET /aiowstunnel HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 8000 + b"\r\n"
    try:
        raw = await exchange(server.port, head * 3)  # never finished
        status, body, _ = split_response(raw)
        assert status == 431 and b"16384" in body
        assert server.stats.rejected["handshake_too_large"] == 1
        assert server.limit_stats.hits["handshake_bytes"] == 1
    finally:
        await server.close(1)


async def unfinished_request(
    port: int, source: str = LOCAL
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from ``source`` whose upgrade request never ends: it holds its
    handshake slot until the server answers or drops it."""
    reader, writer = await asyncio.open_connection(LOCAL, port, local_addr=(source, 0))
    writer.write(b"GET /aiowstunnel HTTP/1.1\r\n")
    return reader, writer


async def slots_back(server: Server, handshakes: int = 0) -> None:
    """Wait until the server holds ``handshakes`` handshake slots and no busy answer."""
    admission = server.admission
    for _ in range(200):
        if (admission.handshakes.total, admission.busy.total) == (handshakes, 0):
            return
        await asyncio.sleep(0.01)
    assert (admission.handshakes.total, admission.busy.total) == (handshakes, 0)


async def told_to_come_back(reader: asyncio.StreamReader) -> bool:
    """True for a connection answered 503 with Retry-After and then closed (over a
    handshake limit); False for one still waiting for the rest of its request (admitted)."""
    try:
        answer = await asyncio.wait_for(reader.read(), 0.5)
    except asyncio.TimeoutError:
        return False
    status, body, _ = split_response(answer)
    assert status == 503 and b"\r\nRetry-After: 1\r\n" in answer, answer
    assert b"too many handshakes in progress" in body
    return True


async def one_address_past_its_share(limits: ServerLimits, connections: int) -> int:
    """Open ``connections`` unfinished upgrades from 127.0.0.2; how many were told to come
    back (each also a limit hit) while 127.0.0.1 is served meanwhile."""
    server = await started(clients=[app("127.0.0.1:1")], limits=limits)
    idle = []
    try:
        for _ in range(connections):
            idle.append(await unfinished_request(server.port, "127.0.0.2"))
        answers = await asyncio.gather(*(told_to_come_back(reader) for reader, _ in idle))
        assert server.limit_stats.hits["handshakes_per_address"] == sum(answers)
        raw = await exchange(server.port, upgrade_request(server.port, "wrong"))
        assert raw.startswith(b"HTTP/1.1 401 ")  # 127.0.0.1 is served meanwhile
        return sum(answers)
    finally:
        for _, writer in idle:
            writer.close()
        await server.close(1)


@pytest.mark.timeout(30)
async def test_handshakes_per_address_are_bounded_and_other_addresses_served():
    # a 503 with Retry-After, then closed: not an RST
    assert await one_address_past_its_share(ServerLimits(max_handshakes_per_address=4), 6) == 2


@pytest.mark.timeout(30)
async def test_by_default_one_address_may_hold_half_of_the_handshakes_and_no_more():
    # One client daemon with many tunnels (or one NAT) reconnecting at once after a server
    # restart holds many upgrades at once: it gets half of max_handshakes, the other
    # addresses the other half. The 41st of 41 is told to come back: 40 are half of 80.
    assert await one_address_past_its_share(ServerLimits(max_handshakes=80), 41) == 1


@pytest.mark.timeout(30)
async def test_the_busy_answers_are_bounded_past_them_a_connection_is_dropped(monkeypatch):
    # Each 503 keeps its connection's handshake slot for up to a second: an eighth of the
    # slots (2 of 16) may be told so at once; past that an address's extra connections are
    # dropped, so one address never holds more than its half and an eighth.
    from aiowstunnel import serverlink
    from aiowstunnel.limits import ServerLimits

    monkeypatch.setattr(serverlink, "BUSY_LINGER", 10.0)  # none expires during the test
    limits = ServerLimits(max_handshakes=16, max_handshakes_per_address=1)
    server = await started(clients=[app("127.0.0.1:1")], limits=limits)
    conns = []
    try:
        for _ in range(5):
            conns.append(await unfinished_request(server.port, "127.0.0.2"))

        async def outcome(reader: asyncio.StreamReader) -> str:
            try:
                answer = await asyncio.wait_for(reader.read(), 0.5)
            except asyncio.TimeoutError:
                return "waiting"
            except ConnectionError:
                return "dropped"
            return "busy" if answer.startswith(b"HTTP/1.1 503 ") else "dropped"

        outcomes = await asyncio.gather(*(outcome(reader) for reader, _ in conns))
        assert sorted(outcomes) == ["busy", "busy", "dropped", "dropped", "waiting"]
        assert server.limit_stats.hits["handshakes_per_address"] == 4
        for _, writer in conns:
            writer.close()
        await slots_back(server)  # every slot goes back with its connection
    finally:
        for _, writer in conns:
            writer.close()
        await server.close(1)


@pytest.mark.timeout(30)
async def test_the_busy_answer_waits_for_the_request_and_a_client_that_never_closes_is_dropped(
    monkeypatch,
):
    # Clients of an older version wrote their request after an answer that came first and
    # failed: the 503 follows the request's first bytes. One that then never closes is
    # dropped after BUSY_LINGER, and its slots go back.
    from aiowstunnel import serverlink
    from aiowstunnel.limits import ServerLimits

    monkeypatch.setattr(serverlink, "BUSY_LINGER", 0.5)
    limits = ServerLimits(max_handshakes=16, max_handshakes_per_address=1)
    server = await started(clients=[app("127.0.0.1:1")], limits=limits)
    _, holder = await unfinished_request(server.port)
    try:
        reader, writer = await asyncio.open_connection(LOCAL, server.port)
        with pytest.raises(asyncio.TimeoutError):  # nothing before the request
            await asyncio.wait_for(reader.read(1), 0.2)
        writer.write(b"GET /aiowstunnel HTTP/1.1\r\n")
        assert await told_to_come_back(reader)
        assert server.admission.busy.total == 1
        # this client never closes: dropped after the linger; the holder's slot stays
        await slots_back(server, handshakes=1)
        writer.close()
    finally:
        holder.close()
        await server.close(1)


@pytest.mark.timeout(30)
async def test_a_server_that_stays_busy_gets_the_backoff_again(echo_backend):
    from aiowstunnel import client as client_module
    from aiowstunnel.backoff import BackoffPolicy
    from aiowstunnel.client import Client
    from aiowstunnel.limits import ServerLimits

    server = await started(
        clients=[app(f"127.0.0.1:{echo_backend.port}")],
        limits=ServerLimits(max_handshakes_per_address=1),
    )
    _, holder = await unfinished_request(server.port)  # holds the one slot
    client = Client(
        aiowstunnel.CONNECT, LOCAL, server.port, LOCAL, 0, LOCAL, echo_backend.port,
        token=TOKEN, backoff=BackoffPolicy(initial=30, max=60), random=lambda: 0.1,
    )  # fmt: skip
    client.start()
    busy = client.stats.connect_failures
    try:
        for _ in range(1000):
            if busy["too_many_handshakes"] > client_module.BUSY_RETRIES:
                break
            await asyncio.sleep(0.01)
        # three times the server's second (0.6 s each); then the backoff: 0.1 x 30 s
        assert busy["too_many_handshakes"] == client_module.BUSY_RETRIES + 1
        assert client.stats.backoff_seconds == pytest.approx(3.0)
    finally:
        holder.close()
        await client.close(1)
        await server.close(1)


@pytest.mark.timeout(30)
async def test_a_client_told_the_server_is_busy_comes_back_when_asked_not_after_its_backoff(
    echo_backend,
):
    from aiowstunnel.backoff import BackoffPolicy
    from aiowstunnel.client import Client
    from aiowstunnel.limits import ServerLimits

    server = await started(
        clients=[app(f"127.0.0.1:{echo_backend.port}")],
        limits=ServerLimits(max_handshakes_per_address=1),
    )
    _, holder = await unfinished_request(server.port)  # 127.0.0.1's one upgrade slot
    # a failure would wait 0.9 x 30 s; the server's Retry-After of 1 s, jittered: 1.4 s
    client = Client(
        aiowstunnel.CONNECT, LOCAL, server.port, LOCAL, 0, LOCAL, echo_backend.port,
        token=TOKEN, backoff=BackoffPolicy(initial=30, max=60), random=lambda: 0.9,
    )  # fmt: skip
    client.start()
    try:
        for _ in range(500):
            if client.stats.connect_failures:
                break
            await asyncio.sleep(0.01)
        assert client.last_error is not None and "server busy" in client.last_error
        assert "retry after 1 s" in client.last_error
        assert client.stats.backoff_seconds == pytest.approx(1.4)
        assert client.stats.connect_failures["too_many_handshakes"] >= 1
        holder.close()
        await client.wait_up(5)  # well before 27 s
        assert client.backoff.attempt == 0  # a busy server is no failure of the tunnel's
        assert client.listen_address is not None
        sent, received = await echo_roundtrip(client.listen_address, 64 * 1024)
        assert sent == received
    finally:
        holder.close()
        await client.close(1)
        await server.close(1)


@pytest.mark.timeout(30)
async def test_a_peer_that_does_not_read_is_not_read_and_dropped_past_the_cap(
    echo_backend, monkeypatch
):
    # Finding 3 in one process: pings from a peer that never reads. The WebSocket stops
    # being read at its high-water mark; a small cap then drops it. The ping budget would
    # drop this peer first (test_exhaustion.py covers that): lifted here, so that the
    # send-buffer mark and cap are what is tested.
    from aiowstunnel import keepalive
    from aiowstunnel.limits import ServerLimits

    monkeypatch.setattr(keepalive, "PING_BURST", 1 << 30)

    server = await started(
        clients=[app("127.0.0.1:1")], limits=ServerLimits(max_send_buffer=256 * 1024)
    )
    try:
        attacker = await RawSession.open(server.port, TOKEN, address="127.0.0.1:1")
        pushed = await attacker.push(ping_frame() * 512, 64 << 20)
        assert pushed < 32 << 20, pushed  # not read without end
        for _ in range(100):
            if server.limit_stats.hits["send_buffer"]:
                break
            await asyncio.sleep(0.05)
        assert server.limit_stats.hits["send_buffer"] == 1
        attacker.close()
    finally:
        await server.close(1)


@pytest.mark.timeout(30)
async def test_stream_violations_close_the_session_after_max_violations(caplog):
    # Finding 4 in one process: 20,000 WINDOW frames for unknown streams once wrote
    # 20,003 WARNING lines; now the first 3 are logged and the session closes with 1002.
    server = await started(clients=[app("127.0.0.1:1")])
    caplog.set_level(logging.INFO, logger="aiowstunnel")
    try:
        attacker = await RawSession.open(server.port, TOKEN, address="127.0.0.1:1")
        flood = b"".join(
            binary_frame(wire.WindowUpdate(2 * i + 1001, 1).serialize()) for i in range(20_000)
        )
        await attacker.push(flood, len(flood))
        frames = await attacker.frames(2.0)
        closes = [f for f in frames if f.opcode == 8]
        assert closes and closes[0].data[:2] == b"\x03\xea"  # 1002
        assert b"too many protocol violations" in closes[0].data
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) <= 5, [r.getMessage() for r in warnings]
        assert server.limit_stats.hits["violations"] == 1
        attacker.close()
    finally:
        await server.close(1)


def entry_stats(server, entry):
    """The counters of ``entry``'s one tunnel (server stats are keyed by entry and tunnel)."""
    (stats,) = (s for (client, _), s in server.client_stats.items() if client == entry)
    return stats


@pytest.mark.timeout(30)
async def test_a_ping_flood_is_dropped_after_the_ping_budget():
    # Each ping costs a PONG and the CPU to make it: past PING_BURST within PING_PERIOD
    # the connection is dropped at once, counted as a violation.
    from aiowstunnel.keepalive import PING_BURST

    server = await started(clients=[app("127.0.0.1:1")])
    try:
        attacker = await RawSession.open(server.port, TOKEN, address="127.0.0.1:1")
        pushed = await attacker.push(ping_frame() * 64, 16 << 20)
        assert pushed < 4 << 20, pushed  # dropped long before 16 MiB
        frames = await attacker.frames(1.0)
        pongs = [f for f in frames if f.opcode == 10]
        assert len(pongs) <= PING_BURST + 1
        assert server.limit_stats.hits["violations"] == 1
        attacker.close()
    finally:
        await server.close(1)


@pytest.mark.timeout(30)
async def test_a_fault_in_a_connection_attempt_is_logged_and_the_tunnel_tries_again(
    echo_backend, monkeypatch, caplog
):
    # An attempt that raised something unforeseen ended the client's task without a word
    # (found with a 503 that came before the request): it is a failure like the others.
    from aiowstunnel import client as client_module
    from aiowstunnel.backoff import BackoffPolicy
    from aiowstunnel.client import Client

    real = client_module.open_session
    calls = 0

    async def faulty(side, *args, **kw):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("Cannot call write() after write_eof()")
        return await real(side, *args, **kw)

    monkeypatch.setattr(client_module, "open_session", faulty)
    server = await started(clients=[app(f"127.0.0.1:{echo_backend.port}")])
    client = Client(
        aiowstunnel.CONNECT, LOCAL, server.port, LOCAL, 0, LOCAL, echo_backend.port,
        token=TOKEN, backoff=BackoffPolicy(initial=0.05, max=0.1),
    )  # fmt: skip
    client.start()
    try:
        await client.wait_up(10)
        assert client.stats.connect_failures["error"] == 1
        assert "connection attempt failed: Cannot call write() after write_eof()" in caplog.text
        assert client.listen_address is not None
        sent, received = await echo_roundtrip(client.listen_address, 64 * 1024)
        assert sent == received
    finally:
        await client.close(1)
        await server.close(1)
