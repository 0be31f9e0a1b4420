"""LazyEvent behaves as asyncio.Event for set / clear / is_set / wait, and makes no Event
until something waits (the point of it: 0.76 KiB per idle session, twice)."""

from __future__ import annotations

import asyncio

import pytest

from aiowstunnel.lazyevent import LazyEvent


@pytest.mark.timeout(5)
async def test_a_set_event_does_not_block_and_makes_no_event() -> None:
    event = LazyEvent(True)
    await asyncio.wait_for(event.wait(), 1)
    assert event.is_set() and event._event is None


@pytest.mark.timeout(5)
async def test_a_waiter_wakes_on_set_and_blocks_again_after_clear() -> None:
    event = LazyEvent()
    event.set()
    event.clear()  # never waited on: nothing made yet
    assert not event.is_set() and event._event is None
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    event.set()
    await asyncio.wait_for(waiter, 1)
    event.clear()
    again = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    assert not again.done()
    event.set()
    await asyncio.wait_for(again, 1)
