"""The module map of docs/architecture.md is the import order: each module imports only those
below it (Design rules, "Layers point down only"). Read from the code, not trusted."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aiowstunnel"


def module_map() -> list[str]:
    """The modules of the map, top first (a line may name several: ``server, client``)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("```\n", 2)[1]
    names: list[str] = []
    for line in block.splitlines():
        match = re.match(r"^([a-z_0-9]+(?:, [a-z_0-9]+)*)\s{2,}", line)
        if match:
            names += [name.strip() for name in match.group(1).split(",")]
    return names


def imports(source: str) -> set[str]:
    """The package's modules a source imports (``from .x import``, ``from . import x, y``)."""
    found = set(re.findall(r"^\s*from \.(\w+) import", source, re.M))
    for group in re.findall(r"^\s*from \. import ([\w, ]+)", source, re.M):
        found.update(name.strip() for name in group.split(","))
    return found


def test_every_module_is_on_the_map() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules - set(module_map()) == set()


def test_every_import_points_down() -> None:
    rank = {name: i for i, name in enumerate(module_map())}
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in ("__init__", "__main__"):
            continue
        for name in imports(path.read_text()):
            # a line naming two peers (server, client) shares a layer: neither is above
            if name in rank and rank[name] < rank[path.stem] and name != path.stem:
                upward.append(f"{path.stem} imports {name}, which the map puts above it")
    assert upward == []


def test_the_check_sees_an_upward_import() -> None:
    rank = {name: i for i, name in enumerate(module_map())}
    assert rank["wire"] > rank["session"]  # so "wire imports session" would be caught
    assert "session" in imports("from .session import Session\n")
