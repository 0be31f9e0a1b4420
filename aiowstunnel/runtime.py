"""What this process runs on: the event loop (uvloop where installed) and the data path.

Kept apart from ``daemon`` so that ``aiowstunnel --version`` can say both without importing
the daemon, and so that the answer comes from the same choice the daemon makes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

#: The environment variable that forces the event loop: ``auto``, ``uvloop`` or ``asyncio``.
EVENT_LOOP_ENV = "AIOWSTUNNEL_EVENT_LOOP"


def event_loop_runner(
    choice: str | None = None,
) -> tuple[Callable[[Coroutine[Any, Any, int]], int], str]:
    """How to run the daemon: uvloop where installed (a dependency on Linux and macOS
    CPython, vendored by the Debian package), else asyncio.

    uvloop measured better in every column of benchmarks/run.py (docs/performance.md):
    +11 % / +20 % bulk, -9 % rtt, +37 % connections/s, -28 % peak memory.
    ``AIOWSTUNNEL_EVENT_LOOP=asyncio`` forces the standard loop; ``=uvloop`` requires uvloop.

    Returns:
        The runner (``uvloop.run`` or ``asyncio.run``) and its name with the version, as
        the start log line and ``--version`` print it (``uvloop 0.21.0``, ``asyncio``).
    """
    choice = choice or os.environ.get(EVENT_LOOP_ENV, "auto")
    if choice not in ("auto", "uvloop", "asyncio"):
        raise SystemExit(f"{EVENT_LOOP_ENV}={choice!r}: expected auto, uvloop or asyncio")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit(f"{EVENT_LOOP_ENV}=uvloop but uvloop is not installed") from None
        else:
            return uvloop.run, f"uvloop {uvloop.__version__}"
    return asyncio.run, "asyncio"


def data_path() -> str:
    """The implementation that moves DATA through a session: ``native`` (the compiled
    ``aiowstunnel._datapath`` behind wsframe's and wire's per-message functions) where it
    loads, else ``python`` (wsframe.py and wire.py themselves, the specification).
    ``AIOWSTUNNEL_DATA_PATH=python`` or ``=native`` forces either; a forced path that cannot
    run is a one-line error naming why, like a forced event loop."""
    try:
        from .wsframe import DATA_PATH
    except ImportError as exc:  # wsframe.DataPathError: the message says what and why
        raise SystemExit(str(exc)) from None
    return DATA_PATH


def describe() -> str:
    """``event loop: uvloop 0.21.0; data path: native``, for ``--version`` and the log."""
    return f"event loop: {event_loop_runner()[1]}; data path: {data_path()}"
