"""Tests for aiowstunnel/errors.py: one exception root, the local/peer split, one describer."""

from __future__ import annotations

import errno
import inspect
import os
import ssl

import pytest

import aiowstunnel.errors
import aiowstunnel.exporter
import aiowstunnel.handshake
from aiowstunnel.errors import LocalProtocolError, ProtocolViolation, TunnelError, describe
from aiowstunnel.handshake import Refusal, RequestRefused
from aiowstunnel.mux import Mux


def test_every_exception_of_the_package_is_under_the_root() -> None:
    modules = (aiowstunnel.errors, aiowstunnel.handshake, aiowstunnel.exporter)
    found = [
        cls
        for module in modules
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == module.__name__
    ]
    assert RequestRefused in found and len(found) >= 8
    assert all(issubclass(cls, TunnelError) for cls in found), found
    with pytest.raises(TunnelError, match="no tunnel endpoint"):
        raise RequestRefused(Refusal.NOT_FOUND, "no tunnel endpoint at /x")


def test_local_misuse_is_not_taken_for_a_peer_violation() -> None:
    mux = Mux(True)
    mux.goaway("stopping")
    with pytest.raises(LocalProtocolError, match="no new streams after GOAWAY") as info:
        mux.open_stream()
    assert not isinstance(info.value, ProtocolViolation)
    assert not issubclass(ProtocolViolation, LocalProtocolError)


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        # asyncio's own wording, on either call: the errno's text instead
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"), os.strerror(111)),
        (
            OSError(98, "error while attempting to bind on address ('::1', 80): address in use"),
            os.strerror(98),
        ),
        # uvloop's (libuv's) lowercase words: the errno's text, as on asyncio
        (OSError(errno.EADDRNOTAVAIL, "address not available"), os.strerror(errno.EADDRNOTAVAIL)),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
        # our own message around an errno, and TLS: kept
        (
            ConnectionRefusedError(111, "connect to db:5432 failed: Connection refused"),
            "connect to db:5432 failed: Connection refused",
        ),
        (ssl.SSLError(524297, "[SSL] PEM lib (_ssl.c:3905)"), "[SSL] PEM lib (_ssl.c:3905)"),
        (FileNotFoundError(2, "No such file or directory"), "No such file or directory"),
        (OSError(errno.EACCES, None), os.strerror(errno.EACCES)),
        (TimeoutError(), "timed out"),
        (ConnectionError("proxy p:3128 refused"), "proxy p:3128 refused"),
        (ValueError(), "ValueError"),
    ],
)
def test_one_failure_reads_the_same_on_every_event_loop(exc: BaseException, text: str) -> None:
    assert describe(exc) == text
    assert "[Errno" not in describe(exc)
