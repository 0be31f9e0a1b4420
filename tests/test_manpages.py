"""The man pages: every key the loader accepts is in aiowstunnel.toml(5) and in
docs/configuration.md, under its own table; `man -l` renders both pages without a warning."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aiowstunnel import config as config_module
from aiowstunnel import configtable
from aiowstunnel.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MAN8 = ROOT / "man" / "aiowstunnel.8"
MAN5 = ROOT / "man" / "aiowstunnel.toml.5"
DOC = ROOT / "docs" / "configuration.md"

#: Every table, with each of its sub-tables present, so that each reader of the loader runs.
EVERY_TABLE = """
[metrics]
[log]
[daemon]
[server]
listen = "127.0.0.1:1"
[[server.client]]
name = "a"
[[tunnel]]
name = "t"
backoff = {}
"""
#: where each table's keys are documented: (man page section title, configuration.md heading)
SECTIONS = {
    "metrics": ("[metrics]", "`[metrics]`"),
    "log": ("[log]", "`[log]`"),
    "daemon": ("[daemon]", "`[daemon]`"),
    "server": ("[server]", "`[server]`"),
    "server.client": ("[[server.client]]", "`[[server.client]]`"),
    "tunnel": ("[[tunnel]]", "`[[tunnel]]`"),
    "tunnel.backoff": ("backoff", "`[[tunnel]]`"),  # the prose after the tunnel table
}


def accepted_keys(monkeypatch) -> dict[str, set[str]]:
    """The keys the loader takes, by table: recorded as each table is closed."""
    seen: dict[str, set[str]] = {}
    close = configtable.Table.close

    def recording(table) -> None:
        shape = ".".join(p for p in table.path if isinstance(p, str))
        seen.setdefault(shape, set()).update(table._taken)
        close(table)

    monkeypatch.setattr(configtable.Table, "close", recording)
    # Required keys are missing, so it raises: every table was read all the same.
    with contextlib.suppress(ConfigError):
        config_module.load_config(EVERY_TABLE, Path("/"), "keys", lambda path: "token")
    seen.pop("", None)  # the root's keys are the tables themselves
    return seen


def man_sections(text: str) -> dict[str, str]:
    parts = re.split(r"^\.SS (.*)$", text, flags=re.M)
    return {title.strip('"'): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def md_sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.*)$", text, flags=re.M)
    return {
        title.split(" (")[0].strip(): body
        for title, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def test_every_key_is_documented_in_both(monkeypatch) -> None:
    keys = accepted_keys(monkeypatch)
    assert set(keys) == set(SECTIONS), f"a table without a documented section: {set(keys)}"
    man = man_sections(MAN5.read_text())
    md = md_sections(DOC.read_text())
    missing = []
    for table, names in keys.items():
        man_title, md_title = SECTIONS[table]
        man_body = next(b for t, b in man.items() if t.startswith(man_title))
        md_body = md[md_title]
        for key in sorted(names - {"client"}):  # [[server.client]] is its own section
            if not re.search(rf"^\.B {re.escape(key)}$", man_body, flags=re.M):
                missing.append(f"aiowstunnel.toml(5) {man_title}: {key}")
            if f"`{key}`" not in md_body and f"{key} =" not in md_body:
                missing.append(f"docs/configuration.md {md_title}: {key}")
    assert not missing, "\n".join(missing)


@pytest.mark.skipif(not shutil.which("man"), reason="man-db is in scripts/apt-packages.txt")
@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_man_renders_without_warnings(page: Path, tmp_path) -> None:
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"}

    def render(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["man", "--warnings", "-E", "UTF-8", "-l", str(path)],
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip

    # the warnings channel works: a page with an undefined macro is reported
    broken = tmp_path / "broken.1"
    broken.write_text(".TH BROKEN 1\n.SH NAME\nbroken \\- a test\n.BOGUS\n")
    assert "BOGUS" in render(broken).stderr
    result = render(page)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "NAME" in result.stdout and len(result.stdout.splitlines()) > 40
