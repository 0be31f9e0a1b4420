"""The container harness itself: boot, run, copy, scrape from the host, and clean up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import require_boot, seconds
from .container import Container, _mounts_under, can_boot, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

PYTHON = {"bookworm": "3.11", "trixie": "3.13"}


def test_can_boot_gives_a_reason() -> None:
    ok, why = can_boot()
    assert isinstance(ok, bool)
    assert why


def test_boots_runs_and_copies(box: Container, tmp_path: Path) -> None:
    state = box.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert box.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    version = box.run(["python3", "-c", "import sys; print(sys.version)"]).stdout
    assert version.startswith(PYTHON[box.suite])

    box.write_file("/etc/aiowstunnel-test/secret", "s3cret\n", mode=0o600)
    assert box.read_file("/etc/aiowstunnel-test/secret") == "s3cret\n"
    assert box.run(["stat", "-c", "%a", "/etc/aiowstunnel-test/secret"]).stdout.strip() == "600"

    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.txt").write_text("a")
    box.copy_in(tmp_path / "tree", "/srv/copied")
    assert box.read_file("/srv/copied/a.txt") == "a"

    failing = box.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (failing.returncode, failing.stdout, failing.stderr) == (3, "out\n", "err\n")


def test_host_reaches_a_port_inside(box: Container) -> None:
    # A web server inside (a transient unit, so systemd owns it), fetched by the host.
    box.write_file("/srv/www/hello.txt", "hello from the container\n")
    server = "python3 -m http.server 8123 --bind 127.0.0.1 --directory /srv/www"
    box.run(["systemd-run", "--unit=www", "--property=Type=exec", *server.split()])

    def fetch() -> tuple[int, str] | None:
        try:
            return box.http_get(8123, "/hello.txt", timeout=seconds(5))
        except OSError:
            return None

    status, body = wait_for(fetch, seconds(30), "the web server inside")
    assert (status, body) == (200, "hello from the container\n")


@pytest.mark.parametrize("suite", ["bookworm"])
def test_stop_leaves_nothing_behind(suite: str) -> None:
    require_boot()
    with Container(suite) as box:
        state, leader = box.state, box.leader
        cgroups = (state / "cgroups").read_text().split()
        assert state is not None and _mounts_under(state)
    assert not state.exists()
    assert not _mounts_under(state)
    assert not any(Path(c).exists() for c in cgroups)
    assert not Path(f"/proc/{leader}").exists()


def test_stale_boot_is_reaped(tmp_path: Path) -> None:
    # A test process killed with SIGKILL cannot clean up; the next Container start does.
    require_boot()
    script = (
        "import os, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from container import Container\n"
        "box = Container('bookworm'); box.start()\n"
        "print(box.state, flush=True)\n"
        "os._exit(0)  # no stop(): leaves the container running, as a SIGKILL would\n"
    )
    here = str(Path(__file__).parent)
    proc = subprocess.run(
        ["python3", "-c", script, here], capture_output=True, text=True, timeout=seconds(300)
    )
    assert proc.returncode == 0, proc.stderr
    stale = Path(proc.stdout.strip())
    assert stale.exists()
    with Container("bookworm"):
        assert not stale.exists()
