"""Network namespaces for tests that need several machines: one per server, each joined to
this host by a veth pair, so that every server can bind the same port (a LISTEN tunnel's).

Namespace i has ``10.217.N.2`` on its side and the host ``10.217.N.1`` on its own, N
derived from the test process's pid (two runs at once use different subnets), and a
default route through the host: every namespace reaches any of the host's addresses, and
nothing else exists for it. Only addresses of these namespaces and the host's are used
(the project's rule: never any other address). Root is needed (``ip netns``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


def can_create() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if shutil.which("ip") is None:
        return False, "the ip command (iproute2) is missing"
    return True, ""


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str  # this namespace's side of the veth
    host: str  # the host's side, reached through the namespace's default route

    def exec(self) -> list[str]:
        """The command prefix that runs a program in this namespace."""
        return ["ip", "netns", "exec", self.name]


class Namespaces:
    """``count`` namespaces, created on enter and deleted (with their veths) on exit."""

    def __init__(self, count: int) -> None:
        pid = os.getpid()
        assert count <= 3
        # Subnets 10.217.base+i.0/24, i < 3: from the pid, past any another run holds now.
        taken = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        base = (pid % 80) * 3
        for step in range(80):
            base = ((pid + step) % 80) * 3
            if f"10.217.{base}." not in taken:
                break
        self.items = [
            Namespace(f"aws17-{pid}-{i}", f"10.217.{base + i}.2", f"10.217.{base + i}.1")
            for i in range(count)
        ]
        self._veths = [f"a17h{pid % 100000}{i}" for i in range(count)]

    def __enter__(self) -> list[Namespace]:
        try:
            for ns, veth in zip(self.items, self._veths, strict=True):
                peer = veth.replace("a17h", "a17n")
                for cmd in (
                    ["ip", "netns", "add", ns.name],
                    ["ip", "link", "add", veth, "type", "veth", "peer", "name", peer],
                    ["ip", "link", "set", peer, "netns", ns.name],
                    ["ip", "addr", "add", f"{ns.host}/24", "dev", veth],
                    ["ip", "link", "set", veth, "up"],
                    ["ip", "-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", peer],
                    ["ip", "-n", ns.name, "link", "set", peer, "up"],
                    ["ip", "-n", ns.name, "link", "set", "lo", "up"],
                    ["ip", "-n", ns.name, "route", "add", "default", "via", ns.host],
                ):
                    subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        except BaseException:
            self.__exit__()
            raise
        return self.items

    def __exit__(self, *_: object) -> None:
        for ns, veth in zip(self.items, self._veths, strict=True):
            # Deleting the namespace deletes the peer, and with it the host's end.
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
            subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=10)
