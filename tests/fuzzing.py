"""What the standalone fuzzers (tests/fuzz_*.py) share: the record of an unhandled input,
the loop of the stateless ones, the command line, and how the test suite loads them.

A fuzzer is a script (``.venv/bin/python tests/fuzz_wire.py --count 1000000``) and, for a
short run in CI, a module the tests load by path with :func:`load_fuzzer`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")

#: unhandled inputs printed in full; the rest are only counted
SHOWN = 10


@dataclass
class Failure:
    """One input that raised what it must not: what was raised, and the input."""

    what: str
    message: bytes


def printer(limit: int = SHOWN) -> Callable[[Failure], None]:
    """A ``report`` callback that prints the first ``limit`` failures to stderr."""
    shown: list[Failure] = []

    def report(failure: Failure) -> None:
        if len(shown) < limit:
            shown.append(failure)
            print(f"UNHANDLED {failure.what}\n  input: {failure.message.hex()}", file=sys.stderr)

    return report


def count_unhandled(inputs: Iterable[T], check: Callable[[T], None], limit: int = 5) -> int:
    """Feed each input to ``check`` (stateless fuzzers); the inputs it raised on, the first
    ``limit`` printed with their traceback."""
    unhandled = 0
    for item in inputs:
        try:
            check(item)
        except Exception:
            unhandled += 1
            if unhandled <= limit:
                print(f"unhandled for {item!r}:\n{traceback.format_exc()}", file=sys.stderr)
    return unhandled


def cli(description: str | None, run: Callable[[int, int], int], argv: list[str] | None) -> int:
    """The fuzzers' command line: ``--count N --seed S``; ``run(count, seed)`` returns the
    number of unhandled inputs. Prints one summary line; exit 1 if any was unhandled."""
    parser = argparse.ArgumentParser(description=(description or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs to feed")
    parser.add_argument("--seed", type=int, default=0, help="seed (the run is deterministic)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    unhandled = run(args.count, args.seed)
    seconds = time.perf_counter() - started
    print(f"inputs={args.count} unhandled={unhandled} seconds={seconds:.1f}")
    return 1 if unhandled else 0


@functools.cache
def load_fuzzer(name: str) -> ModuleType:
    """tests/<name>.py, a script rather than a test module, imported by its path."""
    # A fuzzer run as a script finds this module as ``fuzzing`` (its folder is first on
    # sys.path); loaded from the suite it must find this same module under that name.
    sys.modules.setdefault("fuzzing", sys.modules[__name__])
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
