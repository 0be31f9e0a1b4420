"""UDP tunnels end to end on loopback (issue 18): datagrams keep their boundaries and
their order within a flow, each source gets its own replies, DNS over both protocols on
one session, idle flows end, and a target the rules refuse never sees a datagram."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess

import pytest

import aiowstunnel
from aiowstunnel.addresses import AddressRule
from aiowstunnel.limits import ServerLimits
from aiowstunnel.policy import ClientPolicy, token_digest

from ..helpers import FAST_BACKOFF, LOCAL
from ..udp_helpers import UdpEcho, UdpSink, exchange, udp_server

pytestmark = pytest.mark.timeout(90)

DATAGRAMS = 100_000
FLOWS = 50


async def wait_until(check, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN])
async def test_100k_datagrams_over_50_flows_come_back_whole_and_in_order(make_tunnel, mode) -> None:
    echo_transport, echo, port = await udp_server(UdpEcho)
    try:
        tunnel = await make_tunnel(mode, port, client_kw={"protocol": "udp"})
        entry = tunnel.entry
        loop = asyncio.get_running_loop()
        started = loop.time()
        # 2,000 per flow, every 1,000th of them 65,507 bytes: 100 of the largest datagrams.
        results = await exchange(
            entry.host,
            entry.port,
            FLOWS,
            DATAGRAMS // FLOWS,
            big_every=1000,
            window=4,
            timeout=5.0,  # a busy machine may stall the loop; late is not lost
        )
        elapsed = loop.time() - started
        errors = [e for r in results for e in r.errors]
        sent = sum(r.sent for r in results)
        intact = sum(r.intact for r in results)
        print(
            f"\n{mode.value}: {intact:,} of {sent:,} datagrams back intact "
            f"({100 * intact / sent:.3f} %), {FLOWS} flows, {elapsed:.1f} s"
        )

        # Never merged, split, reordered, corrupted or crossed over to another flow:
        assert not errors, errors[:5]
        assert sent == DATAGRAMS
        assert intact >= 0.999 * DATAGRAMS
        # Each source was a flow of its own, and the echo saw one socket per flow.
        assert len(echo.sources) == FLOWS
        stats = tunnel.client.stats
        assert stats.flows_opened == FLOWS
        assert stats.datagrams_sent + stats.datagrams_received >= intact
    finally:
        echo_transport.close()


def free_tcp_and_udp_port() -> int:
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((LOCAL, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((LOCAL, port))
            except OSError:
                continue
            return port


async def accepting(dnsmasq: subprocess.Popen, port: int) -> bool:
    """Ready once it accepts on TCP (it binds UDP first): before that, a query would meet
    a closed port (an ICMP error), not a slow server. False if it exited (port taken)."""
    for _ in range(200):  # 10 s
        if dnsmasq.poll() is not None:
            return False
        try:
            _, writer = await asyncio.open_connection(LOCAL, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return True
    return False


@pytest.mark.skipif(not shutil.which("dnsmasq") or not shutil.which("dig"), reason="no dnsmasq")
async def test_dig_over_udp_and_tcp_on_one_session(make_tunnel, tmp_path) -> None:
    # dnsmasq on a port of its own, free for TCP and UDP alike (the tunnel's TCP and UDP
    # sides share its number); another test may take it meanwhile: then another port.
    dnsmasq = None
    for _ in range(5):
        port = free_tcp_and_udp_port()
        dnsmasq = subprocess.Popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                f"--port={port}",
                "--address=/tunnel.test/192.0.2.18",
                f"--pid-file={tmp_path / 'dnsmasq.pid'}",
                "--user=root",
            ],
            stderr=subprocess.DEVNULL,
        )
        if await accepting(dnsmasq, port):
            break
    assert dnsmasq is not None and dnsmasq.poll() is None, "dnsmasq did not start"
    try:
        tunnel = await make_tunnel(aiowstunnel.CONNECT, port, client_kw={"protocol": "tcp+udp"})
        entry = tunnel.entry

        async def dig(*extra: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                "dig", f"@{entry.host}", "-p", str(entry.port), "+short", "+tries=3",
                "+time=2", *extra, "tunnel.test", "A",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            return out.decode().strip()

        assert await dig() == "192.0.2.18"  # over UDP
        assert await dig("+tcp") == "192.0.2.18"  # over TCP
        stats = tunnel.client.stats
        assert stats.connects == 1 and len(tunnel.server.sessions) == 1  # one session
        assert stats.flows_opened >= 1 and stats.streams_opened >= 1
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(5)


async def test_an_idle_flow_ends_and_the_next_datagram_opens_a_new_one(make_tunnel) -> None:
    echo_transport, _, port = await udp_server(UdpEcho)
    try:
        tunnel = await make_tunnel(
            aiowstunnel.CONNECT, port, client_kw={"protocol": "udp", "udp_idle_timeout": 0.2}
        )
        entry = tunnel.entry
        (first,) = await exchange(entry.host, entry.port, 1, 10)
        assert first.intact == 10
        stats = tunnel.client.stats
        await wait_until(lambda: stats.flows_expired == 1)
        assert stats.flows_active == 0
        (server_stats,) = tunnel.server.client_stats.values()
        await wait_until(lambda: server_stats.flows_active == 0)  # its socket closed too
        (second,) = await exchange(entry.host, entry.port, 1, 10)
        assert second.intact == 10 and stats.flows_opened == 2
    finally:
        echo_transport.close()


async def test_a_udp_target_the_rules_do_not_allow_is_refused_and_never_sent_to() -> None:
    sink_transport, sink, port = await udp_server(UdpSink)
    entry = ClientPolicy(
        "dns",
        token_digest("t0ken"),
        # TCP to the port, UDP to another port: neither grants UDP to this target.
        allow_connect=(AddressRule.parse(f"{LOCAL}:{port}"), AddressRule.parse("udp:*:53")),
    )
    server = aiowstunnel.Server(LOCAL, 0, clients=[entry])
    await server.listen()
    client = aiowstunnel.Client(
        aiowstunnel.CONNECT, LOCAL, server.port, LOCAL, 0, LOCAL, port,
        token="t0ken", protocol="udp", backoff=FAST_BACKOFF,
    )  # fmt: skip
    client.start()
    try:
        await wait_until(lambda: client.stats.connect_failures["forbidden"] >= 1)
        assert f"may not connect to udp:{LOCAL}:{port} (not in allow_connect)" in (
            client.last_error
        )
        assert server.stats.rejected["forbidden"] >= 1
        # Datagrams at the tunnel's entry go nowhere: dropped, counted, never sent there.
        loop = asyncio.get_running_loop()
        assert client.listen_address is not None
        sender, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol,
            remote_addr=(client.listen_address.host, client.listen_address.port),
        )
        for _ in range(20):
            sender.sendto(b"let me in")
        await wait_until(lambda: client.stats.datagram_drops["no_session"] >= 20)
        sender.close()
        assert sink.count == 0
    finally:
        await client.close(1)
        await server.close(1)
        sink_transport.close()


async def test_a_tcp_only_tunnel_refuses_flows_and_a_udp_one_refuses_streams(
    make_tunnel,
) -> None:
    echo_transport, _, port = await udp_server(UdpEcho)
    try:
        tunnel = await make_tunnel(aiowstunnel.CONNECT, port, client_kw={"protocol": "udp"})
        session = tunnel.client.session
        assert session is not None
        # A TCP stream on a UDP-only session: the server refuses it with its reason.
        sid, message = session.mux.open_stream("test")
        session.send(message)
        session.flush()
        await wait_until(lambda: tunnel.client.stats.stream_open_failures["peer_refused"] >= 1)
        await wait_until(lambda: sid not in session.mux)
    finally:
        echo_transport.close()


async def test_a_reload_hands_the_udp_port_to_the_new_instance(make_tunnel) -> None:
    echo_transport, _, port = await udp_server(UdpEcho)
    try:
        tunnel = await make_tunnel(aiowstunnel.CONNECT, port, client_kw={"protocol": "tcp+udp"})
        old = tunnel.client
        entry = old.listen_address
        assert entry is not None
        (before,) = await exchange(entry.host, entry.port, 1, 20)
        assert before.intact == 20
        new = aiowstunnel.Client(
            aiowstunnel.CONNECT, LOCAL, tunnel.server.port, LOCAL, entry.port, LOCAL, port,
            protocol="tcp+udp", backoff=FAST_BACKOFF,
        )  # fmt: skip
        new.predecessor = old  # as the supervisor does for a changed tunnel
        new.start()
        try:
            await new.wait_up(10)
            await new.first_bind.wait()
            assert new.listen_address == entry
            await old.close(1)
            (after,) = await exchange(entry.host, entry.port, 1, 20)
            assert after.intact == 20 and new.stats.flows_opened == 1
        finally:
            await new.close(1)
    finally:
        echo_transport.close()


@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN])
async def test_flows_past_the_server_s_stream_limit_are_refused_and_counted(
    make_tunnel, mode
) -> None:
    echo_transport, _, port = await udp_server(UdpEcho)
    try:
        tunnel = await make_tunnel(
            mode,
            port,
            server_kw={"limits": ServerLimits(max_client_streams=3)},
            client_kw={"protocol": "udp"},
        )
        entry = tunnel.entry
        results = await exchange(entry.host, entry.port, 6, 5, timeout=0.3)
        served = [r for r in results if r.intact == 5]
        assert len(served) == 3  # three flows got through whole; the rest got nothing
        assert all(r.intact == 0 for r in results if r not in served)
        (server_stats,) = tunnel.server.client_stats.values()
        assert server_stats.stream_open_failures["stream_limit"] >= 3
        if mode is aiowstunnel.LISTEN:  # the server opens the flows: it drops and counts
            assert server_stats.datagram_drops["too_many_flows"] >= 3
        else:  # the server refuses the flows: the client counts each refusal
            assert tunnel.client.stats.stream_open_failures["peer_refused"] >= 3
    finally:
        echo_transport.close()
