"""What the daemon runs on, as a user sees it: ``aiowstunnel --version`` names the event loop
and the data path, and a plain ``pip install`` of the package brings uvloop."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

import aiowstunnel
from aiowstunnel.runtime import data_path, event_loop_runner

ROOT = Path(__file__).resolve().parents[1]
VERSION_LINE = re.compile(
    r"aiowstunnel (?P<version>\S+) \(event loop: (?P<loop>uvloop \S+|asyncio); "
    r"data path: (?P<path>\w+)\)"
)

pytestmark = pytest.mark.timeout(30)


def version_line(
    command: tuple[str, ...] = (sys.executable, "-m", "aiowstunnel"),
    cwd: Path | None = None,
    **env: str,
) -> re.Match[str]:
    proc = subprocess.run(
        [*command, "--version"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **env},
        cwd=cwd,
        check=True,
    )
    match = VERSION_LINE.fullmatch(proc.stdout.strip())
    assert match, proc.stdout
    return match


def uvloop_version() -> str:
    import uvloop  # a dependency on this platform: the test below checks the marker

    return uvloop.__version__


def test_version_names_uvloop_and_the_python_data_path() -> None:
    line = version_line(AIOWSTUNNEL_EVENT_LOOP="auto")
    assert line["version"] == aiowstunnel.__version__
    assert line["loop"] == f"uvloop {uvloop_version()}"
    assert line["path"] == "python" == data_path()


def test_version_follows_the_forced_event_loop() -> None:
    assert version_line(AIOWSTUNNEL_EVENT_LOOP="asyncio")["loop"] == "asyncio"
    assert version_line(AIOWSTUNNEL_EVENT_LOOP="uvloop")["loop"] == f"uvloop {uvloop_version()}"
    assert event_loop_runner("asyncio")[1] == "asyncio"


def test_version_refuses_an_unknown_event_loop() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aiowstunnel", "--version"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "AIOWSTUNNEL_EVENT_LOOP": "tokio"},
        check=False,
    )
    assert proc.returncode == 1
    assert "AIOWSTUNNEL_EVENT_LOOP='tokio': expected auto, uvloop or asyncio" in proc.stderr


def test_uvloop_is_a_dependency_where_it_installs() -> None:
    """The marker in pyproject.toml: Linux and macOS CPython get uvloop, Windows and PyPy not."""
    from importlib.metadata import requires

    found = [Requirement(r) for r in requires("aiowstunnel") or []]
    uvloop = [r for r in found if r.name == "uvloop" and "extra" not in str(r.marker)]
    assert len(uvloop) == 1, found
    marker = uvloop[0].marker
    assert marker is not None
    here = default_environment()
    assert marker.evaluate(here)
    for platform, implementation, wanted in (
        ("linux", "CPython", True),
        ("darwin", "CPython", True),
        ("win32", "CPython", False),
        ("linux", "PyPy", False),
    ):
        env = {**here, "sys_platform": platform, "platform_python_implementation": implementation}
        assert marker.evaluate(env) is wanted, (platform, implementation)


@pytest.mark.timeout(240)
def test_plain_pip_install_of_the_wheel_runs_on_uvloop(tmp_path: Path) -> None:
    """A wheel built from the tree, installed with plain ``pip install`` (no extras) into a
    fresh venv: the installed command runs on uvloop. Needs the package index, like
    scripts/bootstrap (about 10 s with pip's cache)."""
    src = tmp_path / "src"
    src.mkdir()
    # A private copy: other builds in the tree write build/ and *.egg-info beside the sources.
    shutil.copytree(
        ROOT / "aiowstunnel", src / "aiowstunnel", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheels"), str(src)],
                   check=True, timeout=120, capture_output=True)  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("aiowstunnel-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, timeout=180, capture_output=True)  # fmt: skip
    # The installed command, from a folder without the sources (``-m`` would find the tree's).
    command = (str(venv / "bin" / "aiowstunnel"),)
    line = version_line(command, tmp_path, AIOWSTUNNEL_EVENT_LOOP="auto")
    assert line["version"] == aiowstunnel.__version__
    assert line["loop"].startswith("uvloop "), line[0]
