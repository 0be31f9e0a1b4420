"""UDP through the tunnel: datagrams per second and loss at given rates, with iperf3 -u,
next to socat's UDP relay and no relay at all, in the same run.

    .venv/bin/python benchmarks/udp.py [--rates 100M,500M] [--seconds 5] [--length 1400]
                                       [--label "shared 2-core VM"] [--out FILE]

Every setup relays 127.0.0.1:ENTRY to an iperf3 server on 127.0.0.1; iperf3's control
connection is TCP on the same port, so the tunnel is `protocol = "tcp+udp"` and socat runs
one TCP and one UDP relay. Setups:

- ``direct``: iperf3 client straight to the server (the floor: what the machine does)
- ``socat``: ``socat UDP-LISTEN:ENTRY,fork UDP:127.0.0.1:PORT`` (+ the same for TCP)
- ``aiowstunnel``: two daemons (``[server]``, and a ``[[tunnel]]`` in ``connect`` mode),
  ``python -m aiowstunnel run``, as in production (uvloop where installed)

It prints a Markdown table (and writes it to --out): per setup and rate, the rate the
sender reached, the datagrams per second the iperf3 server received, the loss and the
jitter it reported. Loss through the tunnel is datagrams it dropped (counted in
``aiowstunnel_datagrams_dropped_total``) or the kernel dropped (a socket buffer full):
the WebSocket's TCP itself loses nothing. Run it on a quiet machine, and say in
``--label`` when it was not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "127.0.0.1"
TOKEN = "udp-bench-token"


def free_port() -> int:
    """A port free for both TCP and UDP right now (iperf3 uses both on one number)."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((LOCAL, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((LOCAL, port))
            except OSError:
                continue
            return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOCAL, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {LOCAL}:{port} after {timeout} s")


@contextlib.contextmanager
def processes(*commands: list[str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    # Each in a process group of its own: socat's fork leaves children that outlive their
    # parent, and the group (whose id is the pid we started) takes them along.
    procs = [
        subprocess.Popen(
            c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        for c in commands
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


#: the client daemon's /metrics, while an aiowstunnel relay runs (its drops, per run)
METRICS: dict[str, int] = {}


def tunnel_drops() -> float | None:
    """Datagrams the client daemon dropped so far (all reasons), or None for no tunnel."""
    port = METRICS.get("port")
    if port is None:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{LOCAL}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "aiowstunnel_datagrams_dropped_total"
    )


@contextlib.contextmanager
def relay_direct(target: int) -> Iterator[int]:
    yield target


@contextlib.contextmanager
def relay_socat(target: int) -> Iterator[int]:
    entry = free_port()
    with processes(
        ["socat", f"UDP-LISTEN:{entry},bind={LOCAL},fork,reuseaddr", f"UDP:{LOCAL}:{target}"],
        ["socat", f"TCP-LISTEN:{entry},bind={LOCAL},fork,reuseaddr", f"TCP:{LOCAL}:{target}"],
    ):
        wait_port(entry)
        yield entry


@contextlib.contextmanager
def relay_aiowstunnel(target: int) -> Iterator[int]:
    entry, ws, metrics = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        for side in ("s", "c"):
            (base / side).mkdir()
            token = base / side / "token"
            token.write_text(TOKEN + "\n")
            token.chmod(0o600)
        (base / "s" / "aiowstunnel.toml").write_text(
            '[metrics]\nenabled = false\n[log]\nlevel = "warning"\n'
            f'[server]\nlisten = "{LOCAL}:{ws}"\n[[server.client]]\nname = "bench"\n'
            f'token_file = "token"\nallow_connect = ["{LOCAL}:{target}", "udp:{LOCAL}:{target}"]\n'
        )
        (base / "c" / "aiowstunnel.toml").write_text(
            f'[metrics]\nlisten = "{LOCAL}:{metrics}"\n[log]\nlevel = "warning"\n'
            '[[tunnel]]\nname = "bench"\nmode = "connect"\nprotocol = "tcp+udp"\n'
            f'server = "ws://{LOCAL}:{ws}/aiowstunnel"\ntoken_file = "token"\n'
            f'listen = "{LOCAL}:{entry}"\nconnect = "{LOCAL}:{target}"\n'
        )
        daemon = [sys.executable, "-m", "aiowstunnel", "run", "-c"]
        with processes(
            [*daemon, str(base / "s" / "aiowstunnel.toml")],
            [*daemon, str(base / "c" / "aiowstunnel.toml")],
        ):
            wait_port(entry)
            time.sleep(1.0)  # the tunnel's session: the entry listens before it is up
            METRICS["port"] = metrics
            try:
                yield entry
            finally:
                METRICS.clear()


def wait_bound(port: int, timeout: float = 10.0) -> None:
    """Until something has bound TCP ``port``, without connecting to it (a connection
    would be iperf3 -s -1's one client)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            try:
                probe.bind((LOCAL, port))
            except OSError:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing bound {LOCAL}:{port} after {timeout} s")


RELAYS = {"direct": relay_direct, "socat": relay_socat, "aiowstunnel": relay_aiowstunnel}


def iperf(entry: int, target: int, rate: str, seconds: float, length: int) -> dict[str, float]:
    """One iperf3 -u run through ``entry``; the server's view of what arrived."""
    with processes(["iperf3", "-s", "-1", "-B", LOCAL, "-p", str(target)]):
        wait_bound(target)
        before = tunnel_drops()
        out = subprocess.run(
            ["iperf3", "-c", LOCAL, "-p", str(entry), "-u", "-b", rate, "-l", str(length),
             "-t", str(seconds), "-J"],
            capture_output=True, text=True, timeout=seconds + 30,
        )  # fmt: skip
    result = json.loads(out.stdout)
    if "error" in result:
        raise RuntimeError(result["error"])
    after = tunnel_drops()
    sent = result["end"]["sum_sent"]  # the client's: what it sent
    server_end = result["end"]["sum_received"]  # the server's, as it reported it back
    packets, lost = server_end["packets"], server_end["lost_packets"]
    return {
        "sent_mbps": sent["bits_per_second"] / 1e6,
        "dps": (packets - lost) / server_end["seconds"],
        "loss": 100.0 * lost / packets if packets else 100.0,
        "jitter_ms": server_end["jitter_ms"],
        "packets": packets,
        "drops": (after - before) if after is not None and before is not None else -1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100M,500M")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--length", type=int, default=1400, help="datagram payload, bytes")
    parser.add_argument("--setups", default=",".join(RELAYS))
    parser.add_argument("--label", default="", help="e.g. 'shared 2-core VM, other jobs running'")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for tool in ("iperf3", "socat"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: run benchmarks/setup")
    os.chdir(ROOT)
    version = subprocess.run(
        [sys.executable, "-m", "aiowstunnel", "--version"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"# UDP through the tunnel: iperf3 -u, {args.length}-byte datagrams, "
        f"{args.seconds:g} s per run",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.node()}, "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}; {version}"
        + (f"; **{args.label}**" if args.label else ""),
        "",
        "| setup | rate asked | sender Mbit/s | datagrams/s received | loss % | "
        "dropped by the tunnel | jitter ms |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for setup in args.setups.split(","):
        for rate in args.rates.split(","):
            target = free_port()
            try:
                with RELAYS[setup](target) as entry:
                    r = iperf(entry, target, rate, args.seconds, args.length)
                drops = f"{r['drops']:,.0f}" if r["drops"] >= 0 else ""
                row = (
                    f"| {setup} | {rate} | {r['sent_mbps']:.0f} | {r['dps']:,.0f} | "
                    f"{r['loss']:.2f} | {drops} | {r['jitter_ms']:.3f} |"
                )
            except (RuntimeError, subprocess.SubprocessError, KeyError, ValueError) as exc:
                row = f"| {setup} | {rate} | failed: {exc} | | | | |"
            lines.append(row)
            print(row, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
