"""Fixtures for the whole-system tests: the Debian package, and fresh containers to install it in.

Every test gets its own container: a boot on the cached rootfs takes about half a second, so no
test ever sees what another one did to systemd, the package or the config.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .container import SUITES, Container, build_rootfs, can_boot

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "etc" / "aiowstunnel.toml"
DAEMON_ENTRY = ROOT / "aiowstunnel" / "cli.py"  # [project.scripts] aiowstunnel.cli:main
# The one knob for every wait in these tests: raise it on a slow machine. The bounds below fit
# in the 600 s pytest-timeout of one test even when that test builds the rootfs (~45 s here).
TIME_SCALE = float(os.environ.get("AIOWSTUNNEL_TEST_TIME_SCALE", "1"))
# Shipped as /etc/aiowstunnel.toml while etc/aiowstunnel.toml is not written yet: enough for the
# package tests (postinst creates its token file); the daemon tests need the real example.
STAND_IN_CONFIG = """\
[metrics]
listen = "127.0.0.1:9100"

[server]
listen = "127.0.0.1:9000"

[[server.client]]
name = "stand-in"
token_file = "aiowstunnel/tokens/stand-in"
allow_connect = ["127.0.0.1:9100"]
"""


def seconds(value: float) -> float:
    """A wait bound, scaled by AIOWSTUNNEL_TEST_TIME_SCALE."""
    return value * TIME_SCALE


@dataclass(frozen=True)
class Package:
    path: Path
    example_config: bool  # built with etc/aiowstunnel.toml (else with STAND_IN_CONFIG)


def require_boot() -> None:
    ok, why = can_boot()
    if not ok:
        pytest.skip(f"cannot boot a systemd container here: {why}")


def require_daemon(package: Package) -> None:
    """Skip a test that runs the daemon until the daemon and its example config exist."""
    if not DAEMON_ENTRY.exists():
        pytest.skip("the daemon is not written yet (aiowstunnel/cli.py)")
    if not package.example_config:
        pytest.skip("etc/aiowstunnel.toml is not written yet")


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Package:
    """dist/aiowstunnel_*.deb, built once per session by packaging/build-deb."""
    require_boot()
    config = EXAMPLE_CONFIG
    if not config.exists():
        config = tmp_path_factory.mktemp("config") / "aiowstunnel.toml"
        config.write_text(STAND_IN_CONFIG)
    cmd = [str(ROOT / "packaging" / "build-deb"), "--config", str(config)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds(150), check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"build-deb failed:\n{proc.stderr[-3000:]}")
    path = ROOT / proc.stdout.strip().splitlines()[-1]
    return Package(path, example_config=config == EXAMPLE_CONFIG)


@pytest.fixture(params=SUITES)
def box(request: pytest.FixtureRequest) -> Iterator[Container]:
    """A freshly booted container of each suite, powered off and discarded after the test."""
    require_boot()
    build_rootfs(request.param, timeout=seconds(400))  # cached after the first test
    with Container(request.param, boot_timeout=seconds(120)) as container:
        yield container


@pytest.fixture
def installed(box: Container, deb: Package) -> Container:
    """``box`` with the package installed the way an admin does: apt install ./x.deb."""
    target = f"/root/{deb.path.name}"
    box.copy_in(deb.path, target)
    box.run(["apt-get", "install", "-y", "-q", target], timeout=seconds(300))
    return box
