"""UDP tunnels in the real daemons (issue 18): a UDP flood at a tunnel's listen port
while a TCP stream of the same session moves 64 MiB. The stream finishes intact, the
daemons' memory stays bounded, and the datagrams they could not carry are counted."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from aiowstunnel.addresses import Address

from ..helpers import echo_roundtrip, proc_memory, start_backend
from ..udp_helpers import UdpSink, udp_server
from .daemon_process import LOCAL, Daemon, free_port, scrape, wait_healthy

MiB = 1024 * 1024
#: growth of both daemons' peak RSS together under the flood; what the design allows is a
#: few MiB (the WebSocket's buffer, 1 MiB each way, UDP sockets' buffers are the
#: kernel's), the rest is the allocator's slack.
FLOOD_BOUND = 24 * MiB
FLOOD_SECONDS = 60.0  # the flooder's own bound; it is stopped once the transfer is done

#: Sends 16,000-byte datagrams (more bytes a second than one loop frames into the
#: WebSocket, so that the tunnel's own drops are sure to show, not only the kernel's) from
#: 16 source ports as fast as it can, until killed, for at
#: most argv[2] seconds or 20 million datagrams; prints how many it sent.
FLOODER = """
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
for s in socks:
    s.setblocking(False)
payload, sent, end = b"f" * 16000, 0, time.monotonic() + seconds
while sent < 20_000_000 and time.monotonic() < end:
    for s in socks:
        try:
            s.sendto(payload, ("127.0.0.1", port))
            sent += 1
        except OSError:
            pass
"""


@pytest.mark.timeout(120)
async def test_udp_flood_leaves_the_tcp_stream_of_its_session_intact(tmp_path: Path) -> None:
    backend = await start_backend()  # the TCP echo, and a UDP sink on the same port
    sink_transport, sink, _ = await udp_server(UdpSink, backend.port)
    ws_port, entry, metrics = free_port(), free_port(), free_port()
    for side in ("s", "c"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "token").write_text("udp-flood-token\n")
    target = f"{LOCAL}:{backend.port}"
    server = Daemon(
        tmp_path / "s",
        '[metrics]\nenabled = false\n\n[log]\nlevel = "warning"\n\n'
        f'[server]\nlisten = "{LOCAL}:{ws_port}"\n\n[[server.client]]\n'
        f'name = "flood"\ntoken_file = "token"\nallow_connect = ["{target}", "udp:{target}"]\n',
    )
    client = Daemon(
        tmp_path / "c",
        f'[metrics]\nlisten = "{LOCAL}:{metrics}"\n\n[log]\nlevel = "warning"\n\n'
        '[[tunnel]]\nname = "both"\nmode = "connect"\nprotocol = "tcp+udp"\n'
        f'server = "ws://{LOCAL}:{ws_port}/aiowstunnel"\ntoken_file = "token"\n'
        f'listen = "{LOCAL}:{entry}"\nconnect = "{target}"\n',
    )
    flooder = None
    try:
        await server.start()
        await client.start()
        await wait_healthy(metrics)
        where = Address(LOCAL, entry)
        sent, got = await echo_roundtrip(where, 8 * MiB)  # warms the allocator
        assert sent == got
        pids = [server.proc.pid, client.proc.pid]
        before = [proc_memory(pid, "VmHWM") for pid in pids]
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(entry), str(FLOOD_SECONDS)])
        await asyncio.sleep(0.5)  # the flood is on before the transfer starts
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent, got = await echo_roundtrip(where, 64 * MiB)
        elapsed = loop.time() - started
        assert flooder.poll() is None, "the flood ended before the transfer did"
        flooder.kill()
        flooder.wait(5)
        after = [proc_memory(pid, "VmHWM") for pid in pids]
        samples = await asyncio.to_thread(scrape, metrics)
        drops = {
            dict(labels)["reason"]: value
            for (name, labels), value in samples.items()
            if name == "aiowstunnel_datagrams_dropped_total"
        }
        carried = samples[("aiowstunnel_datagrams_sent_total", (("tunnel", "both"),))]
        grown = sum(after) - sum(before)
        print(
            f"\n64 MiB echoed in {elapsed:.1f} s under a UDP flood; {carried:,.0f} datagrams "
            f"carried, {sink.count:,} reached the target, dropped by the client: {drops}; "
            f"peak RSS server {before[0] / MiB:.1f} -> {after[0] / MiB:.1f} MiB, client "
            f"{before[1] / MiB:.1f} -> {after[1] / MiB:.1f} MiB"
        )
        assert sent == got  # the TCP stream: every byte, in order (sha256)
        assert grown < FLOOD_BOUND, f"the daemons grew by {grown / MiB:.1f} MiB"
        assert carried > 0 and sink.count > 0  # UDP went through too, as much as it could
        assert drops.get("queue_full", 0) > 0  # and what it could not was counted
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait(5)
        await client.stop()
        await server.stop()
        backend.server.close()
        sink_transport.close()
