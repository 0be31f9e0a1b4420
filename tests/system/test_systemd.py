"""aiowstunnel under a real systemd: the Debian package, the unit, and the daemon's lifecycle.

Each test installs dist/aiowstunnel_*.deb with apt in a fresh Debian 12 and 13 container. The
package and unit tests run as they are; the daemon tests skip until aiowstunnel/cli.py and
etc/aiowstunnel.toml exist. Waits poll for a state (a port answers, a PID changes), each bounded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .conftest import ROOT, Package, require_daemon, seconds
from .container import Container, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

UNIT = "aiowstunnel.service"
CONFIG = "/etc/aiowstunnel.toml"
DROP_INS = "/etc/systemd/system/aiowstunnel.service.d"
DEFAULT_METRICS_LISTEN = ":9100"  # aiowstunnel.config.DEFAULT_METRICS_LISTEN


# ------------------------------------------------------------------------------ helpers


def show(box: Container, *props: str) -> dict[str, str]:
    """``systemctl show`` properties of the unit, as a dict."""
    out = box.run(["systemctl", "show", UNIT, *(f"--property={p}" for p in props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def systemd_version(box: Container) -> int:
    return int(box.run(["systemctl", "--version"]).stdout.split()[1])


def exposure(box: Container, unit_path: str) -> float:
    out = box.run(["systemd-analyze", "security", "--offline=yes", unit_path]).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out
    return float(match.group(1))


@dataclass(frozen=True)
class Endpoint:
    """A ``host:port`` of the config, as a client on the same machine reaches it."""

    host: str
    port: int

    @classmethod
    def parse(cls, address: str) -> Endpoint:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        # A wildcard listener is reached on loopback.
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return cls(host, int(port))

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"


def installed_config(box: Container) -> dict:
    return tomllib.loads(box.read_file(CONFIG))


def metrics_endpoint(config: dict) -> Endpoint:
    return Endpoint.parse(config.get("metrics", {}).get("listen", DEFAULT_METRICS_LISTEN))


def tunnels_to_metrics(config: dict) -> list[dict]:
    """The example's tunnels that lead to the metrics endpoint (so data through them is
    recognisable). The example is expected to have at least a connect and a listen one."""
    metrics = metrics_endpoint(config)
    found = [t for t in config.get("tunnel", []) if Endpoint.parse(t["connect"]) == metrics]
    assert found, f"no [[tunnel]] in {CONFIG} leads to the metrics endpoint {metrics}"
    return found


def curl(box: Container, url: str) -> str | None:
    """The body at ``url`` fetched inside the container, or None while it fails."""
    proc = box.run(["curl", "-fsS", "--max-time", "5", url], check=False, timeout=seconds(15))
    return proc.stdout if proc.returncode == 0 else None


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None if absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_metric(box: Container, name: str, value: float, **labels: str) -> str:
    """Poll /metrics until ``name{labels}`` equals ``value``; returns that scrape."""
    url = metrics_endpoint(installed_config(box)).url("/metrics")

    def check() -> str | None:
        text = curl(box, url)
        return text if text is not None and metric(text, name, **labels) == value else None

    return wait_for(check, seconds(30), f"{name}{labels or ''} == {value}", interval=0.5)


def start(box: Container) -> int:
    """systemctl start (returns after READY=1, Type=notify); the main PID."""
    box.run(["systemctl", "start", UNIT], timeout=seconds(90))
    props = show(box, "ActiveState", "MainPID")
    assert props["ActiveState"] == "active", props
    return int(props["MainPID"])


def add_drop_in(box: Container, name: str, text: str) -> None:
    box.write_file(f"{DROP_INS}/{name}", text)
    box.run(["systemctl", "daemon-reload"])


def journal(box: Container, *args: str) -> str:
    return box.run(["journalctl", "-u", UNIT, "--no-pager", *args]).stdout


def service_report(box: Container) -> str:
    status = box.run(["systemctl", "status", UNIT, "--no-pager", "-l"], check=False).stdout
    return f"{status}\n{journal(box, '-n', '60')}"


# ------------------------------------------------------------------- package and unit


def test_build_deb_refuses_a_missing_config() -> None:
    proc = subprocess.run(
        [str(ROOT / "packaging" / "build-deb"), "--config", "/nonexistent/aiowstunnel.toml"],
        capture_output=True, text=True, timeout=seconds(60), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "/nonexistent/aiowstunnel.toml does not exist" in proc.stderr


def test_package_installs_user_config_tokens_and_unit(installed: Container) -> None:
    box = installed
    user = box.run(["getent", "passwd", "aiowstunnel"]).stdout.strip().split(":")
    assert int(user[2]) < 1000, "a system user"
    assert user[6].endswith("nologin")

    def stat(path: str) -> str:
        return box.run(["stat", "-c", "%a %U %G", path]).stdout.strip()

    assert stat("/etc/aiowstunnel") == "700 aiowstunnel aiowstunnel"
    assert stat(CONFIG).split()[1] == "root"
    conffiles = box.run(["dpkg-query", "-W", "-f=${Conffiles}", "aiowstunnel"]).stdout
    assert CONFIG in conffiles

    # postinst gave every token_file of the config a random token only the service reads.
    config = installed_config(box)
    server = config.get("server", {})
    token_files = {e["token_file"] for e in [*server.get("client", []), *config.get("tunnel", [])]}
    assert token_files, "the shipped config names no token_file"
    for name in token_files:
        path = name if name.startswith("/") else f"/etc/{name}"
        assert stat(path) == "600 aiowstunnel aiowstunnel"
        assert len(box.read_file(path).strip()) >= 32

    props = show(box, "LoadState", "UnitFileState", "Type", "User", "NotifyAccess")
    assert props == {
        "LoadState": "loaded",
        "UnitFileState": "disabled",  # the admin reviews the config, then enables
        "Type": "notify",
        "User": "aiowstunnel",
        "NotifyAccess": "main",
    }

    # The launcher runs Debian's python3 on the vendored dependencies; websockets masks frames
    # with its C speedups, built for this suite's CPython (3.11 or 3.13).
    probe = (
        "import sys; sys.path.insert(0, '/opt/aiowstunnel/lib'); import json, websockets, "
        "prometheus_client, aiowstunnel; from systemd import daemon; "
        "from websockets.frames import apply_mask; print(json.dumps("
        "[websockets.__file__, prometheus_client.__file__, aiowstunnel.__file__, "
        "type(apply_mask).__name__]))"
    )
    *files, mask = json.loads(box.run(["python3", "-I", "-c", probe]).stdout)
    assert all(f.startswith("/opt/aiowstunnel/lib/") for f in files), files
    assert mask == "builtin_function_or_method", "websockets' C speedups did not load"
    assert box.run(["readlink", "/usr/bin/aiowstunnel"]).stdout.strip() == (
        "/opt/aiowstunnel/bin/aiowstunnel"
    )
    # man aiowstunnel / man aiowstunnel.toml (gzip -9n, as Debian policy asks)
    for page in ("man8/aiowstunnel.8.gz", "man5/aiowstunnel.toml.5.gz"):
        assert stat(f"/usr/share/man/{page}").split()[0] == "644", page
        assert ".TH AIOWSTUNNEL" in box.run(["zcat", f"/usr/share/man/{page}"]).stdout


def test_unit_verifies_and_is_hardened(installed: Container) -> None:
    box = installed
    verify = box.run(["systemd-analyze", "verify", UNIT], check=False)
    assert verify.returncode == 0, verify.stderr
    assert "aiowstunnel" not in verify.stderr, verify.stderr
    assert exposure(box, f"/usr/lib/systemd/system/{UNIT}") <= 1.5


def test_notify_reload_drop_in(installed: Container) -> None:
    box = installed
    if systemd_version(box) < 253:
        pytest.skip("Type=notify-reload needs systemd >= 253")
    add_drop_in(
        box, "notify-reload.conf", box.read_file("/usr/share/aiowstunnel/notify-reload.conf")
    )
    props = show(box, "Type", "ExecReload", "ReloadSignal")
    assert props["Type"] == "notify-reload"
    # systemctl show leaves out an empty command list.
    assert props.get("ExecReload", "") == "", "never ExecReload= and notify-reload at once"
    assert props["ReloadSignal"] == "1"  # SIGHUP
    assert box.run(["systemd-analyze", "verify", UNIT], check=False).returncode == 0


def test_remove_disables_and_purge_deletes(installed: Container) -> None:
    box = installed
    box.run(["systemctl", "enable", UNIT])
    box.run(["apt-get", "remove", "-y", "-q", "aiowstunnel"], timeout=seconds(120))
    assert show(box, "LoadState")["LoadState"] == "not-found"
    wants = "/etc/systemd/system/multi-user.target.wants/aiowstunnel.service"
    assert box.run(["test", "-L", wants], check=False).returncode != 0, "still enabled"
    assert box.run(["test", "-f", CONFIG], check=False).returncode == 0, "remove keeps config"

    box.run(["apt-get", "purge", "-y", "-q", "aiowstunnel"], timeout=seconds(120))
    for path in (CONFIG, "/etc/aiowstunnel", "/opt/aiowstunnel"):
        assert box.run(["test", "-e", path], check=False).returncode != 0, f"{path} left"
    assert box.run(["getent", "passwd", "aiowstunnel"], check=False).returncode == 0


# ---------------------------------------------------------------------- the daemon


@pytest.fixture
def daemon(installed: Container, deb: Package) -> Iterator[Container]:
    """``installed``, skipped until the daemon exists. Its status and journal are printed at
    teardown, which pytest shows for a failed test only."""
    require_daemon(deb)
    yield installed
    print(service_report(installed))


def test_cli_version_and_check(daemon: Container) -> None:
    import aiowstunnel

    out = daemon.run(["aiowstunnel", "--version"])
    # Debian's python3 (3.11 in bookworm, 3.13 in trixie) loads the uvloop the package carries,
    # and its one native data path (_datapath.abi3.so, the stable ABI of 3.11).
    line = f"aiowstunnel {aiowstunnel.__version__} (event loop: uvloop "
    assert out.stdout.startswith(line) and out.stdout.endswith("; data path: native)\n"), out
    daemon.run(["aiowstunnel", "check", "-c", CONFIG])
    daemon.write_file("/root/bad.toml", "[[tunnel]]\nconect = 1\n")
    bad = daemon.run(["aiowstunnel", "check", "-c", "/root/bad.toml"], check=False)
    assert bad.returncode == 1
    assert "conect" in bad.stdout + bad.stderr


def test_start_is_ready_with_status_and_journal_fields(daemon: Container) -> None:
    box = daemon
    start(box)
    assert show(box, "StatusText")["StatusText"], "no STATUS= line sent"
    status = box.run(["systemctl", "status", UNIT, "--no-pager"], check=False).stdout
    assert "Status: " in status
    # The service itself, not just the command line, runs on the vendored uvloop and the
    # native data path.
    assert re.search(r"event loop: uvloop \S+; data path: native", journal(box)), journal(box)
    # Structured fields reach journald (python3-systemd is installed by the rootfs).
    wait_for(
        lambda: "TUNNEL=" in journal(box, "-o", "verbose"),
        seconds(30),
        "a journal entry with TUNNEL=",
        interval=0.5,
    )


def test_data_flows_through_the_example_tunnels(daemon: Container) -> None:
    box = daemon
    start(box)
    config = installed_config(box)
    modes = set()
    for tunnel in tunnels_to_metrics(config):
        url = Endpoint.parse(tunnel["listen"]).url("/metrics")
        body = wait_for(lambda url=url: curl(box, url), seconds(30), f"metrics through {url}")
        assert "aiowstunnel_tunnel_up" in body
        modes.add(tunnel["mode"])
    assert modes == {"connect", "listen"}, "the example shows both directions"


def test_metrics_scraped_from_the_host(daemon: Container) -> None:
    box = daemon
    start(box)
    endpoint = metrics_endpoint(installed_config(box))

    def scrape() -> tuple[int, str] | None:
        try:
            return box.http_get(endpoint.port, "/metrics", timeout=seconds(5))
        except OSError:
            return None

    status, body = wait_for(scrape, seconds(30), "/metrics from the host")
    assert status == 200
    assert "aiowstunnel_tunnel_up" in body
    assert "process_start_time_seconds" in body  # the process collector survives hardening


STREAM_ACROSS_RELOAD = """
import socket, subprocess, sys, time, urllib.request
host, kept, added = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stream = socket.create_connection((host, kept), timeout=10)
stream.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n")
subprocess.run(["systemctl", "reload", "aiowstunnel"], check=True, timeout=30)
deadline = time.monotonic() + 4  # the exporter gives a request 5 s to arrive in full
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{added}/metrics", timeout=1).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the added tunnel was not up within 4 s of the reload")
        time.sleep(0.05)
stream.sendall(b"\\r\\n")
answer = b""
while chunk := stream.recv(65536):
    answer += chunk
print(answer.split(b"\\r\\n", 1)[0].decode(), len(answer), b"reload-added" in answer)
"""


@pytest.mark.parametrize("reload_type", ["kill-hup", "notify-reload"])
def test_reload_starts_an_added_tunnel(daemon: Container, reload_type: str) -> None:
    box = daemon
    if reload_type == "notify-reload":
        if systemd_version(box) < 253:
            pytest.skip("Type=notify-reload needs systemd >= 253")
        add_drop_in(
            box, "notify-reload.conf", box.read_file("/usr/share/aiowstunnel/notify-reload.conf")
        )
    pid = start(box)
    config = installed_config(box)
    template = next(t for t in tunnels_to_metrics(config) if t["mode"] == "connect")
    port = int(
        box.run(["python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0));"
                 "print(s.getsockname()[1])"]).stdout
    )  # fmt: skip
    added = dict(template, name="reload-added", listen=f"127.0.0.1:{port}")
    scalars = {k: v for k, v in added.items() if isinstance(v, str | int | float | bool)}
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in scalars.items())
    box.write_file(CONFIG, box.read_file(CONFIG) + f"\n[[tunnel]]\n{lines}")

    # A stream through the unchanged tunnel is open across the reload: half an HTTP request
    # before it, the rest after; the answer only arrives if the stream survived.
    kept = Endpoint.parse(template["listen"])
    out = box.run(
        ["python3", "-c", STREAM_ACROSS_RELOAD, kept.host, str(kept.port), str(port)],
        timeout=seconds(60),
    ).stdout.split()
    assert out[:3] == ["HTTP/1.1", "200", "OK"], out
    assert out[-1] == "True", "the answer, made after the reload, lists the added tunnel"
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: curl(box, url), seconds(30), "the added tunnel to carry data")
    wait_metric(box, "aiowstunnel_tunnel_up", 1, tunnel="reload-added")
    wait_metric(box, "aiowstunnel_config_last_reload_successful", 1)
    props = show(box, "ActiveState", "MainPID")
    assert props == {"ActiveState": "active", "MainPID": str(pid)}, "reloaded, not restarted"


def test_invalid_reload_keeps_the_running_config(daemon: Container) -> None:
    box = daemon
    pid = start(box)
    original = box.read_file(CONFIG)
    box.write_file(CONFIG, original + "\n[[tunnel]]\nconect = 'typo'\n")
    box.run(["systemctl", "reload", UNIT], timeout=seconds(60))
    wait_metric(box, "aiowstunnel_config_last_reload_successful", 0)
    assert show(box, "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": str(pid)}
    for tunnel in tunnels_to_metrics(tomllib.loads(original)):
        url = Endpoint.parse(tunnel["listen"]).url("/metrics")
        wait_for(lambda url=url: curl(box, url), seconds(30), f"old tunnel {url} still up")


def test_watchdog_restarts_a_stopped_daemon(daemon: Container) -> None:
    box = daemon
    # Faster than the shipped 30 s, so that the test takes seconds.
    add_drop_in(box, "watchdog.conf", "[Service]\nWatchdogSec=3s\nRestartSec=1s\n")
    pid = start(box)
    box.run(["kill", "-STOP", str(pid)])

    def restarted() -> dict[str, str] | None:
        props = show(box, "ActiveState", "MainPID", "NRestarts")
        ok = props["ActiveState"] == "active" and props["MainPID"] not in ("0", str(pid))
        return props if ok and int(props["NRestarts"]) >= 1 else None

    wait_for(restarted, seconds(60), "systemd to restart the stopped daemon", interval=0.5)
    assert "Watchdog timeout" in journal(box)
    endpoint = metrics_endpoint(installed_config(box))
    wait_for(lambda: curl(box, endpoint.url("/metrics")), seconds(30), "metrics after restart")


def test_stop_exits_cleanly(daemon: Container) -> None:
    box = daemon
    # An inactive unit is unloaded, and its exit status with it: ExecStopPost= sees it first.
    # ($$ keeps systemd from expanding the variables itself.)
    report = (
        "ExecStopPost=/bin/sh -c 'echo \"exit: $${SERVICE_RESULT} $${EXIT_CODE} $${EXIT_STATUS}\"'"
    )
    add_drop_in(box, "exit-status.conf", f"[Service]\n{report}\n")
    start(box)
    box.run(["systemctl", "stop", UNIT], timeout=seconds(60))
    assert show(box, "ActiveState")["ActiveState"] == "inactive"
    # "exited 0": it returned by itself. SIGTERM would read "killed TERM", which systemd
    # also counts as a success.
    wait_for(
        lambda: "exit: success exited 0" in journal(box),
        seconds(10),
        "the exit status in the journal",
        interval=0.5,
    )


@pytest.mark.parametrize("capability", ["granted", "withheld"])
def test_port_below_1024_binds_only_through_cap_net_bind_service(
    daemon: Container, capability: str
) -> None:
    """The service runs as its own user: a tunnel on port 81 binds because the unit grants
    CAP_NET_BIND_SERVICE, and with the capability withheld it fails with the reason logged."""
    box = daemon
    if capability == "withheld":
        add_drop_in(box, "no-bind.conf", "[Service]\nAmbientCapabilities=\n")
    config = installed_config(box)
    template = next(t for t in tunnels_to_metrics(config) if t["mode"] == "connect")
    low = dict(template, name="low-port", listen="127.0.0.1:81")
    scalars = {k: v for k, v in low.items() if isinstance(v, str | int | float | bool)}
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in scalars.items())
    box.write_file(CONFIG, box.read_file(CONFIG) + f"\n[[tunnel]]\n{lines}")
    pid = start(box)
    user = box.run(["ps", "-o", "user=", "-p", str(pid)]).stdout.strip()
    assert user == "aiowstunnel", user
    if capability == "granted":
        body = wait_for(
            lambda: curl(box, "http://127.0.0.1:81/metrics"), seconds(30), "the tunnel on port 81"
        )
        assert "aiowstunnel_tunnel_up" in body
    else:
        wait_for(
            lambda: "cannot listen on 127.0.0.1:81: Permission denied" in journal(box) or None,
            seconds(30),
            "the bind error in the journal",
        )
        assert show(box, "ActiveState")["ActiveState"] == "active"  # the others still run
