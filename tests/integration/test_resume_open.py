"""An OPEN in flight during a cut ends opened or refused with a reason, never hung
(issue 14, Must show): here every target refuses, so each OPEN_FAIL (or the OPEN itself)
crosses the cut in a replay, and each local socket is reset, the refusal counted."""

from __future__ import annotations

import asyncio

import pytest

import aiowstunnel

from .test_faults import free_port
from .test_resume import Tunnel


@pytest.mark.timeout(60)
async def test_opens_refused_around_a_cut_end_refused_never_hung(caplog):
    closed = free_port()  # nothing listens there: every dial is refused
    tunnel = await Tunnel.start(aiowstunnel.CONNECT, closed)
    try:

        async def one() -> str:
            reader, writer = await asyncio.open_connection(tunnel.entry.host, tunnel.entry.port)
            writer.write(b"hello")
            try:
                data = await asyncio.wait_for(reader.read(), 10)  # never hangs
                return f"eof {data!r}"
            except ConnectionResetError:
                return "reset"
            finally:
                writer.close()

        opening = [asyncio.ensure_future(one()) for _ in range(20)]
        await asyncio.sleep(0)  # their OPENs are on the way (or not yet sent) as it breaks
        tunnel.proxy.cut()
        opening += [asyncio.ensure_future(one()) for _ in range(20)]  # while detached
        ended = await asyncio.gather(*opening)
        assert ended == ["reset"] * 40  # an RST to each: refused, not a clean end
        stats = tunnel.client.stats
        assert stats.stream_resets["open_failed"] == 40  # each with the other side's reason
        assert stats.stream_open_failures["peer_refused"] == 40
        assert stats.resumes["ok"] == 1
        assert any("refused by the other side" in r.getMessage() for r in caplog.records)
    finally:
        await tunnel.close()
