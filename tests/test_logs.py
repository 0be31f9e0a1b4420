"""Tests for aiowstunnel.logs: the stderr line format, journald detection and fields."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiowstunnel.logs import setup_logging, tunnel_logger, under_journal

pytestmark = pytest.mark.timeout(10)

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<rest>.*)")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo setup_logging's changes to the root and websockets loggers."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    ws_level = logging.getLogger("websockets").level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(ws_level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """stderr so far, each line checked for a leading timestamp that is then cut off."""
    out = []
    for line in capsys.readouterr().err.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"no timestamp at the start of {line!r}"
        out.append(match["rest"])
    return out


def test_stderr_line_has_tunnel_and_peer(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", journald=False)
    log = tunnel_logger("app")
    log.info("connected to %s", "wss://host2:9000", extra={"peer": ("1.2.3.4", 5)})
    log.warning("stream refused", extra={"peer": ("::1", 9000, 0, 0)})
    log.info("backing off")
    logging.getLogger("aiowstunnel.daemon").info("reloaded")
    assert lines(capsys) == [
        "INFO tunnel=app peer=1.2.3.4:5 connected to wss://host2:9000",
        "WARNING tunnel=app peer=[::1]:9000 stream refused",
        "INFO tunnel=app backing off",
        "INFO reloaded",
    ]


def test_level_filters_and_websockets_is_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("WARNING", journald=False)
    tunnel_logger("app").info("hidden")
    tunnel_logger("app").error("shown")
    assert lines(capsys) == ["ERROR tunnel=app shown"]

    setup_logging("debug", journald=False)
    logging.getLogger("websockets.client").debug("< BINARY 01 00 00 00 [42 bytes]")
    tunnel_logger("app").debug("seen")
    assert lines(capsys)[-1] == "DEBUG tunnel=app seen"
    assert logging.getLogger("websockets.client").getEffectiveLevel() == logging.WARNING


def test_setup_twice_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    before = len(logging.getLogger().handlers)
    setup_logging("info", journald=False)
    setup_logging("info", journald=False)
    assert len(logging.getLogger().handlers) == before + 1
    tunnel_logger("app").info("once")
    assert lines(capsys) == ["INFO tunnel=app once"]


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match="verbose"):
        setup_logging("verbose", journald=False)


def test_per_call_extra_does_not_stick(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", journald=False)
    log = tunnel_logger("db")
    log.info("a", extra={"peer": "10.1.2.3:22"})
    log.info("b")
    assert lines(capsys) == ["INFO tunnel=db peer=10.1.2.3:22 a", "INFO tunnel=db b"]


def test_under_journal_matches_stderr_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stderr", "w") as fake_stderr:
        monkeypatch.setattr(sys, "stderr", fake_stderr)
        st = os.fstat(fake_stderr.fileno())
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not under_journal()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journal()
        # Inherited by a child whose stderr went elsewhere: not the journal any more.
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not under_journal()
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not under_journal()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no file descriptor at all
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not under_journal()


def test_session_context_on_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    # The server's session lines: client entry, tunnel and peer, set once for the session.
    setup_logging("info", journald=False)
    log = tunnel_logger("db", client="branch", peer=("10.0.0.7", 4242))
    log.info("session opened: %s", "connect to db:5432")
    log.info("session ended", extra={"peer": ("10.0.0.8", 1)})  # a per-call field wins
    assert lines(capsys) == [
        "INFO client=branch tunnel=db peer=10.0.0.7:4242 session opened: connect to db:5432",
        "INFO client=branch tunnel=db peer=10.0.0.8:1 session ended",
    ]


def test_journald_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = pytest.importorskip("systemd.journal")
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(journal, "send", lambda message, **fields: sent.append((message, fields)))
    handler = setup_logging("info", journald=True)
    assert isinstance(handler, journal.JournalHandler)
    tunnel_logger("app").warning("refused", extra={"peer": ("1.2.3.4", 5)})
    logging.getLogger("aiowstunnel").info("plain")
    (message, fields), (plain, plain_fields) = sent
    assert message == "tunnel=app peer=1.2.3.4:5 refused"
    assert fields["TUNNEL"] == "app"
    assert fields["PEER"] == "1.2.3.4:5"
    assert fields["SYSLOG_IDENTIFIER"] == "aiowstunnel"
    assert fields["PRIORITY"] == "4"
    # journald rejects lowercase names; none of the record's attributes leak through.
    assert all(key.isupper() for key in fields)
    assert plain == "plain"
    assert "TUNNEL" not in plain_fields and "PEER" not in plain_fields


def test_auto_picks_journald_under_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = pytest.importorskip("systemd.journal")
    with open(tmp_path / "stderr", "w") as fake_stderr:
        monkeypatch.setattr(sys, "stderr", fake_stderr)
        st = os.fstat(fake_stderr.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert isinstance(setup_logging("info"), journal.JournalHandler)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not isinstance(setup_logging("info"), journal.JournalHandler)


def test_journald_without_systemd_python_falls_back_to_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)  # makes `from systemd import ...` fail
    handler = setup_logging("info", journald=True)
    assert isinstance(handler, logging.StreamHandler)
    tunnel_logger("app").info("still logged")
    assert lines(capsys) == [
        "WARNING systemd-python is missing: logging to stderr",
        "INFO tunnel=app still logged",
    ]


def test_every_line_of_a_multi_line_record_has_the_prefix(capsys: pytest.CaptureFixture[str]):
    setup_logging("info", journald=False)
    log = tunnel_logger("app")
    log.error("reload failed:\nfile: tunnel[0].conect: unknown key\nfile: log.level: bad")
    assert lines(capsys) == [  # lines() checks the timestamp of each
        "ERROR tunnel=app reload failed:",
        "ERROR tunnel=app file: tunnel[0].conect: unknown key",
        "ERROR tunnel=app file: log.level: bad",
    ]


def test_server_lines_carry_client_and_tunnel_once(capsys: pytest.CaptureFixture[str]):
    setup_logging("info", journald=False)
    logging.getLogger("aiowstunnel.server").info(
        "session opened: connect to 127.0.0.1:22",
        extra={"client": "acc", "tunnel": "ssh", "peer": ("10.0.0.1", 4000)},
    )
    assert lines(capsys) == [
        "INFO client=acc tunnel=ssh peer=10.0.0.1:4000 session opened: connect to 127.0.0.1:22"
    ]
