"""What the daemon runs on, as a user sees it: ``aiowstunnel --version`` names the event loop
and the data path, and a plain ``pip install`` of the package brings uvloop and the native
data path (and, without a C compiler, installs all the same and runs the python one)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

import aiowstunnel
from aiowstunnel import wsframe
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


def test_version_names_uvloop_and_the_native_data_path() -> None:
    """scripts/bootstrap builds the extension, so ``auto`` finds it."""
    line = version_line(AIOWSTUNNEL_EVENT_LOOP="auto", AIOWSTUNNEL_DATA_PATH="auto")
    assert line["version"] == aiowstunnel.__version__
    assert line["loop"] == f"uvloop {uvloop_version()}"
    assert line["path"] == "native"
    assert data_path() == wsframe.DATA_PATH  # in this process: what the environment chose


def test_version_follows_the_forced_data_path() -> None:
    assert version_line(AIOWSTUNNEL_DATA_PATH="python")["path"] == "python"
    assert version_line(AIOWSTUNNEL_DATA_PATH="native")["path"] == "native"


def from_copy(folder: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    """The command and environment that run the package in ``folder``, not the tree's (run
    it from ``folder``): without site, whose editable-install finder maps the name to the
    tree, and with the dependencies on PYTHONPATH after the copy."""
    path = f"{folder}{os.pathsep}{sysconfig.get_paths()['purelib']}"
    return (sys.executable, "-S", "-m", "aiowstunnel"), {"PYTHONPATH": path}


def fails(argv: list[str], folder: Path | None = None, **env: str) -> str:
    """Run the CLI, which must exit 1 with one line on stderr (no traceback): that line."""
    command, extra = from_copy(folder) if folder else ((sys.executable, "-m", "aiowstunnel"), {})
    proc = subprocess.run(
        [*command, *argv],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **extra, **env},
        cwd=folder,
        check=False,
    )
    assert proc.returncode == 1, proc
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


def test_an_unknown_data_path_is_refused_by_version_and_run() -> None:
    for argv in (["--version"], ["run", "-c", "/nonexistent.toml"]):
        line = fails(argv, AIOWSTUNNEL_DATA_PATH="rust")
        assert line == "AIOWSTUNNEL_DATA_PATH='rust': expected auto, python or native"


def test_forced_native_without_the_extension_says_why(tmp_path: Path) -> None:
    """A copy of the package without the compiled file: ``auto`` runs the python path,
    ``native`` is refused, naming the module and what builds it."""
    shutil.copytree(
        ROOT / "aiowstunnel",
        tmp_path / "aiowstunnel",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    command, env = from_copy(tmp_path)
    assert version_line(command, tmp_path, **env, AIOWSTUNNEL_DATA_PATH="auto")["path"] == "python"
    for argv in (["--version"], ["run", "-c", "/nonexistent.toml"]):
        line = fails(argv, tmp_path, AIOWSTUNNEL_DATA_PATH="native")
        assert line.startswith(
            "AIOWSTUNNEL_DATA_PATH=native, but the native data path (aiowstunnel._datapath)"
            " does not load: No module named 'aiowstunnel._datapath'"
        ), line
        assert "C compiler" in line


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


def build_wheel(tmp_path: Path, **env: str) -> Path:
    """A wheel of the tree, built by pip from a private copy of the sources (other builds in
    the tree write build/ and *.egg-info beside them; the in-place .so stays out)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(
        ROOT / "aiowstunnel",
        src / "aiowstunnel",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheels"), str(src)],
                   check=True, timeout=120, capture_output=True,
                   env={**os.environ, **env})  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("aiowstunnel-*.whl")
    return wheel


@pytest.mark.timeout(240)
def test_plain_pip_install_of_the_wheel_runs_on_uvloop_and_the_native_path(
    tmp_path: Path,
) -> None:
    """A wheel built from the tree, installed with plain ``pip install`` (no extras) into a
    fresh venv: the installed command runs on uvloop and the native data path, one file
    for every CPython from 3.11 (the stable ABI). Needs the package index, like
    scripts/bootstrap (about 10 s with pip's cache)."""
    wheel = build_wheel(tmp_path)
    if sys.version_info >= (3, 11):
        assert "-cp311-abi3-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as archive:
        compiled = [n for n in archive.namelist() if n.startswith("aiowstunnel/_datapath")]
    assert sorted(compiled) == [
        "aiowstunnel/_datapath.abi3.so" if sys.version_info >= (3, 11) else compiled[0],
        "aiowstunnel/_datapath.pyi",
    ], compiled
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, timeout=180, capture_output=True)  # fmt: skip
    # The installed command, from a folder without the sources (``-m`` would find the tree's).
    command = (str(venv / "bin" / "aiowstunnel"),)
    line = version_line(command, tmp_path, AIOWSTUNNEL_EVENT_LOOP="auto", AIOWSTUNNEL_DATA_PATH="")
    assert line["version"] == aiowstunnel.__version__
    assert line["loop"].startswith("uvloop "), line[0]
    assert line["path"] == "native"


@pytest.mark.timeout(120)
def test_without_a_compiler_the_wheel_builds_and_runs_the_python_path(tmp_path: Path) -> None:
    """The extension is optional: a build where no C compiler runs still succeeds, and the
    package it gives runs the pure-Python data path."""
    wheel = build_wheel(tmp_path, CC=str(tmp_path / "no-such-cc"))
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")]
        archive.extractall(unpacked)
    command, env = from_copy(unpacked)
    assert version_line(command, unpacked, **env, AIOWSTUNNEL_DATA_PATH="auto")["path"] == "python"
