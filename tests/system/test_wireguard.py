"""WireGuard over the WebSocket tunnel (issue 18), as users run it: wireguard-go and wg
from Debian in two network namespaces the test makes, the real daemons between them.

The namespaces share no network at all: the WebSocket's TCP connection crosses from
one to the other through a Unix socket in the test's folder (socat at each end), so the
tunnel is the only path WireGuard has. Inside the WireGuard link: ping, and 64 MiB over
TCP checked by sha256 at both ends.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon_process import Daemon

MiB = 1024 * 1024
TOOLS = ("ip", "wg", "wireguard-go", "ping", "socat")
#: inside the test's own namespaces, where nothing else listens: fixed ports are safe
WS_PORT, ENTRY_PORT, WG_PORT, TRANSFER_PORT = 9000, 51821, 51820, 5001
WG_A, WG_B = "10.99.18.1", "10.99.18.2"
TRANSFER = 64 * MiB

#: receiver in B: one connection, every byte into sha256; prints "<bytes> <hex>"
RECEIVER = f"""
import hashlib, socket
server = socket.create_server(("{WG_B}", {TRANSFER_PORT}))
print("LISTENING", flush=True)
conn, _ = server.accept()
digest, total = hashlib.sha256(), 0
while data := conn.recv(1 << 20):
    digest.update(data)
    total += len(data)
print(total, digest.hexdigest(), flush=True)
"""
#: sender in A: 64 MiB of seeded random bytes; prints "<bytes> <hex>"
SENDER = f"""
import hashlib, random, socket
data = random.Random(18).randbytes({TRANSFER})
conn = socket.create_connection(("{WG_B}", {TRANSFER_PORT}), timeout=60)
conn.sendall(data)
conn.shutdown(socket.SHUT_WR)
conn.recv(1)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def run(*args: str, input: str | None = None) -> str:
    return subprocess.run(
        args, check=True, capture_output=True, text=True, input=input, timeout=20
    ).stdout.strip()


def cannot_run() -> str:
    """Why this machine cannot run the test, or ""."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (scripts/apt-packages.txt installs them)"
    if os.geteuid() != 0:
        return "network namespaces and TUN devices need root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun: this machine cannot create TUN devices"
    probe = f"aws18p{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "this machine cannot create network namespaces (ip netns add failed)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


class Namespaces:
    """Two namespaces with nothing but loopback, the Unix-socket bridge that carries the
    WebSocket's TCP between them, and what runs inside; all undone by :meth:`close`
    (processes by their own pid, then the namespaces)."""

    def __init__(self, folder: Path) -> None:
        tag = secrets.token_hex(3)
        self.a, self.b = f"aws18a{tag}", f"aws18b{tag}"
        self.wg_a, self.wg_b = f"wga{tag}", f"wgb{tag}"
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def exec(self, ns: str, *args: str) -> str:
        return run("ip", "netns", "exec", ns, *args)

    def up(self) -> None:
        run("ip", "netns", "add", self.a)
        run("ip", "netns", "add", self.b)
        for ns in (self.a, self.b):
            self.exec(ns, "ip", "link", "set", "lo", "up")
        # The WebSocket's way from A's loopback to B's: TCP -> Unix socket -> TCP. A Unix
        # socket is a file, not a network: no IP packet can cross between the namespaces.
        bridge = self.folder / "ws.sock"
        self.spawn(self.b, "socat", f"UNIX-LISTEN:{bridge},fork",
                   f"TCP:127.0.0.1:{WS_PORT}")  # fmt: skip
        self.spawn(self.a, "socat", f"TCP-LISTEN:{WS_PORT},bind=127.0.0.1,fork,reuseaddr",
                   f"UNIX-CONNECT:{bridge}")  # fmt: skip

    def spawn(self, ns: str, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def wireguard(self) -> None:
        keys = {}
        for side in ("a", "b"):
            private = run("wg", "genkey")
            keys[side] = (private, run("wg", "pubkey", input=private))
            (self.folder / f"wg-{side}.key").write_text(private + "\n")
        for ns, dev in ((self.a, self.wg_a), (self.b, self.wg_b)):
            self.spawn(ns, "wireguard-go", "-f", dev, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # fmt: skip
        for ns, dev in ((self.a, self.wg_a), (self.b, self.wg_b)):
            for _ in range(100):  # until wireguard-go made its TUN device (bounded: 5 s)
                if subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "show", dev],
                                  capture_output=True).returncode == 0:  # fmt: skip
                    break
                subprocess.run(["sleep", "0.05"])
        # A's peer is B behind the tunnel's entry; B learns A's endpoint from the packets
        # (the tunnel's flow socket). A keepalive of 1 s keeps the flow warm.
        self.exec(self.a, "wg", "set", self.wg_a, "private-key", str(self.folder / "wg-a.key"),
                  "peer", keys["b"][1], "allowed-ips", f"{WG_B}/32",
                  "endpoint", f"127.0.0.1:{ENTRY_PORT}", "persistent-keepalive", "1")  # fmt: skip
        self.exec(self.b, "wg", "set", self.wg_b, "private-key", str(self.folder / "wg-b.key"),
                  "listen-port", str(WG_PORT), "peer", keys["a"][1],
                  "allowed-ips", f"{WG_A}/32")  # fmt: skip
        # The tunnel adds no IP header of its own: WireGuard's default MTU (1420) fits.
        for ns, dev, ip in ((self.a, self.wg_a, WG_A), (self.b, self.wg_b, WG_B)):
            self.exec(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            self.exec(ns, "ip", "link", "set", dev, "up")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.timeout(120)
async def test_wireguard_between_two_namespaces_through_the_tunnel(tmp_path: Path) -> None:
    reason = cannot_run()
    if reason:
        pytest.skip(reason)
    ns = Namespaces(tmp_path)
    for side in ("s", "c"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "token").write_text("wireguard-test-token\n")
    server = Daemon(
        tmp_path / "s",
        '[metrics]\nenabled = false\n\n[log]\nlevel = "warning"\n\n'
        f'[server]\nlisten = "127.0.0.1:{WS_PORT}"\n\n[[server.client]]\n'
        f'name = "wg"\ntoken_file = "token"\nallow_connect = ["udp:127.0.0.1:{WG_PORT}"]\n',
        prefix=("ip", "netns", "exec", ns.b),
    )
    client = Daemon(
        tmp_path / "c",
        '[metrics]\nenabled = false\n\n[log]\nlevel = "warning"\n\n'
        '[[tunnel]]\nname = "wg"\nmode = "connect"\nprotocol = "udp"\nudp_idle_timeout = 0\n'
        f'server = "ws://127.0.0.1:{WS_PORT}/aiowstunnel"\ntoken_file = "token"\n'
        f'listen = "127.0.0.1:{ENTRY_PORT}"\nconnect = "127.0.0.1:{WG_PORT}"\n',
        prefix=("ip", "netns", "exec", ns.a),
    )
    try:
        ns.up()
        await server.start()
        await client.start()
        ns.wireguard()
        # ping until the handshake went through the tunnel (bounded), then for real
        for _ in range(20):
            probe = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns.a, "ping", "-c", "1", "-W", "1", WG_B,
                stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await probe.wait() == 0:
                break
        pinged = await asyncio.to_thread(ns.exec, ns.a, "ping", "-c", "3", "-i", "0.2", WG_B)
        assert " 0% packet loss" in pinged, pinged
        # B's peer endpoint is the tunnel's flow socket on B's loopback: the only path.
        endpoints = await asyncio.to_thread(ns.exec, ns.b, "wg", "show", ns.wg_b, "endpoints")
        assert "\t127.0.0.1:" in endpoints, endpoints

        receiver = ns.spawn(ns.b, sys.executable, "-c", RECEIVER, stdout=subprocess.PIPE)
        assert receiver.stdout is not None
        ready = await asyncio.to_thread(receiver.stdout.readline)
        assert ready.strip() == b"LISTENING"
        loop = asyncio.get_running_loop()
        started = loop.time()
        sender = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns.a, sys.executable, "-c", SENDER,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        sent, _ = await asyncio.wait_for(sender.communicate(), 90)
        received = await asyncio.to_thread(receiver.stdout.readline)
        elapsed = loop.time() - started
        rtt = pinged.splitlines()[-1]
        print(f"\n64 MiB over WireGuard through the tunnel in {elapsed:.1f} s; ping {rtt}")
        assert sent.split() == received.split() and sent.split()[0] == str(TRANSFER).encode()
    finally:
        for daemon in (client, server):
            if daemon.proc is not None:
                await daemon.stop()
            else:
                daemon.kill()
        ns.close()
