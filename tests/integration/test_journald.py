"""setup_logging against a real systemd-journald: records arrive with TUNNEL= and PEER=.

The test re-runs this file as a script under `unshare --mount --pid --fork`: in that private
mount namespace, tmpfs over /run/systemd and /run/log gives a standalone journald the
well-known socket that libsystemd writes to, without touching the host's journal. The script
exits 77 with a reason when the machine cannot host that journald, and the test then skips.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

JOURNALD = "/lib/systemd/systemd-journald"
CANNOT = 77  # the scenario's exit code for "this machine cannot run it" (as automake's SKIP)
REPO = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 10.0


@pytest.mark.timeout(60)
def test_journald_receives_tunnel_and_peer_fields(tmp_path: Path) -> None:
    missing = [
        what
        for what, ok in [
            ("Linux", sys.platform.startswith("linux")),
            (JOURNALD + " (package systemd)", os.access(JOURNALD, os.X_OK)),
            ("journalctl", shutil.which("journalctl")),
            ("unshare (package util-linux)", shutil.which("unshare")),
            ("systemd-python", _importable("systemd.journal")),
        ]
        if not ok
    ]
    if missing:
        _skip("missing " + ", ".join(missing))
    # Root may mount directly; anyone else needs a user namespace mapped to root.
    userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    cmd = ["unshare", *userns, "--mount", "--pid", "--fork", "--mount-proc"]
    cmd += [sys.executable, __file__, str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), _pythonpath()]))}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=45, env=env, cwd=REPO)
    if proc.returncode == CANNOT:
        _skip(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no reason given")
    if proc.returncode != 0 and "unshare:" in proc.stderr and not proc.stdout:
        _skip(f"unshare refused: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout}\n{proc.stderr}"

    entries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_message = {entry["MESSAGE"]: entry for entry in entries}
    assert "tunnel=app peer=127.0.0.1:5 connected" in by_message, proc.stdout
    entry = by_message["tunnel=app peer=127.0.0.1:5 connected"]
    assert entry["TUNNEL"] == "app"
    assert entry["PEER"] == "127.0.0.1:5"
    assert entry["SYSLOG_IDENTIFIER"] == "aiowstunnel"
    assert entry["PRIORITY"] == "6"  # info
    plain = by_message["no tunnel here"]
    assert "TUNNEL" not in plain and "PEER" not in plain
    assert plain["PRIORITY"] == "4"  # warning


def _skip(reason: str) -> None:
    # Printed as well, so that a skip is visible in CI output even without -rs.
    print(f"SKIP journald test: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


# ---- the scenario, run as a script inside the private namespaces -------------------------------


def _cannot(reason: str) -> None:
    print(f"cannot run journald here: {reason}", file=sys.stderr)
    sys.exit(CANNOT)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=STEP_TIMEOUT)


def _mount_private(workdir: Path) -> None:
    for target in ["/run/systemd", "/run/log", "/var/log/journal", "/etc/systemd/journald.conf.d"]:
        if os.path.isdir(target):
            done = _run("mount", "-t", "tmpfs", "tmpfs", target)
            if done.returncode != 0:
                _cannot(f"mount tmpfs on {target}: {done.stderr.strip()}")
    # Volatile storage and no forwarding, whatever the host's journald.conf says.
    conf = workdir / "journald.conf"
    conf.write_text(
        "[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\n"
        "ForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\n"
    )
    if os.path.exists("/etc/systemd/journald.conf"):
        done = _run("mount", "--bind", str(conf), "/etc/systemd/journald.conf")
        if done.returncode != 0:
            _cannot(f"bind-mount journald.conf: {done.stderr.strip()}")


def _start_journald(workdir: Path) -> subprocess.Popen[bytes]:
    # journald says READY=1 through sd_notify: wait for that instead of polling for a socket.
    ready_path = workdir / "journald-notify.sock"
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(str(ready_path))
    ready.settimeout(STEP_TIMEOUT)
    env = {"NOTIFY_SOCKET": str(ready_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with open(workdir / "journald.log", "wb") as log:  # the child keeps its own copy
        journald = subprocess.Popen([JOURNALD], env=env, stdout=log, stderr=log)
    try:
        while b"READY=1" not in ready.recv(4096).split(b"\n"):
            pass
    except TimeoutError:
        journald.kill()
        output = (workdir / "journald.log").read_text(errors="replace").strip()
        _cannot(f"journald did not report READY=1 within {STEP_TIMEOUT}s: {output[-500:]}")
    finally:
        ready.close()
    return journald


def _scenario(workdir: Path) -> int:
    import logging

    from aiowstunnel.logs import setup_logging, tunnel_logger

    _mount_private(workdir)
    journald = _start_journald(workdir)
    try:
        # As systemd starts a service: stderr is a journal stream named by $JOURNAL_STREAM, and
        # setup_logging's auto-detection must pick journald from that.
        st = os.fstat(sys.stderr.fileno())
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        handler = setup_logging("info")
        assert type(handler).__name__ == "JournalHandler", handler
        tunnel_logger("app").info("connected", extra={"peer": ("127.0.0.1", 5)})
        logging.getLogger("aiowstunnel").warning("no tunnel here")
        logging.getLogger("aiowstunnel").debug("below the level")

        # Varlink Synchronize: returns once journald has written everything sent before it.
        sync = _run("journalctl", "--sync")
        assert sync.returncode == 0, sync.stderr
        read = _run(
            "journalctl",
            "--directory=/run/log/journal",
            "--output=json",
            "--no-pager",
            "SYSLOG_IDENTIFIER=aiowstunnel",
        )
        assert read.returncode == 0, read.stderr
        print(read.stdout, end="")
        messages = [json.loads(line)["MESSAGE"] for line in read.stdout.splitlines()]
        assert "below the level" not in messages
        # The human view shows the field, as an operator would check it.
        verbose = _run("journalctl", "--directory=/run/log/journal", "-o", "verbose", "TUNNEL=app")
        assert "TUNNEL=app" in verbose.stdout, verbose.stdout + verbose.stderr
    finally:
        journald.terminate()
        try:
            journald.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            journald.kill()
            journald.wait()
    return 0


if __name__ == "__main__":
    sys.exit(_scenario(Path(sys.argv[1])))
