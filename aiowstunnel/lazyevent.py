"""LazyEvent: asyncio.Event's set / clear / is_set / wait, the Event itself made only when
something waits. An asyncio.Event is 0.76 KiB; a session has two that nothing waits on
while it is idle (its stream table's "idle", its detachment's "changed"), and a server holds
thousands of idle sessions (docs/performance.md, A thousand tunnels on one server)."""

from __future__ import annotations

import asyncio


class LazyEvent:
    __slots__ = ("_event", "_set")

    def __init__(self, initially: bool = False) -> None:
        self._set = initially
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def clear(self) -> None:
        self._set = False
        if self._event is not None:
            self._event.clear()

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()
