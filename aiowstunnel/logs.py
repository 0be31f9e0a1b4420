"""Logging setup: journald with structured TUNNEL=/PEER= fields when running under systemd,
otherwise one line per event on stderr. Also ``tunnel_logger``, which stamps every record with
the tunnel's name so that each line says which tunnel it is about.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .addresses import format_peer

SYSLOG_IDENTIFIER = "aiowstunnel"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Record attributes (set with ``extra=``) that become journald fields and stderr prefixes.
# ``origin`` is what a peer says a stream comes from: its claim, kept apart from ``peer``.
CONTEXT_FIELDS = ("client", "tunnel", "peer", "origin")

_JOURNAL_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]*")


def _context(record: logging.LogRecord) -> str:
    parts = []
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            parts.append(f"{name}={format_peer(value) if name == 'peer' else value}")
    return "".join(part + " " for part in parts)


class ContextFormatter(logging.Formatter):
    """Puts ``tunnel=... peer=...`` (those present) before the message."""

    def __init__(self, with_time: bool = True) -> None:
        fmt = "%(asctime)s %(levelname)s %(context)s%(message)s" if with_time else None
        super().__init__(fmt or "%(context)s%(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        context = record.__dict__["context"] = _context(record)  # the format's %(context)s
        text = super().format(record)
        if self.with_time and "\n" in text:
            # On stderr every line of a multi-line record (every error of a reload, a
            # traceback) carries the time, level and context, so grep and sort keep it
            # whole; journald keeps a record's lines together by itself.
            prefix = f"{record.asctime} {record.levelname} {context}"
            first, *rest = text.split("\n")
            text = "\n".join([first, *(prefix + line for line in rest)])
        return text


def under_journal() -> bool:
    """Whether stderr is connected to the journal, as systemd.exec(5) says to detect it.

    Returns:
        True if $JOURNAL_STREAM is ``device:inode`` of the file that stderr is.
    """
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = stream.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (AttributeError, OSError, ValueError):  # no stderr, a pseudo-file, a bad variable
        return False


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd import journal
    except ImportError:
        return None

    def send(message: str, /, **fields: Any) -> None:
        # JournalHandler passes the whole record.__dict__ (msg, args, even `message`, hence
        # the positional-only parameter): journald drops lowercase names, so keep valid
        # field names only and lift our context fields to uppercase.
        out = {key: value for key, value in fields.items() if _JOURNAL_FIELD.fullmatch(key)}
        for name in CONTEXT_FIELDS:
            value = fields.get(name)
            if value is not None:
                out[name.upper()] = format_peer(value) if name == "peer" else str(value)
        journal.send(message, **out)

    handler: logging.Handler = journal.JournalHandler(
        sender_function=send, SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER
    )
    # The fields are also in MESSAGE, so a plain `journalctl -u aiowstunnel` shows them.
    handler.setFormatter(ContextFormatter(with_time=False))
    return handler


def setup_logging(level: str, journald: bool | None = None) -> logging.Handler:
    """Send the root logger's records to journald or stderr, replacing an earlier setup.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error`` (any case).
        journald: True for journald, False for stderr; None picks journald when stderr is
            connected to the journal. journald needs systemd-python; without it the records
            go to stderr.

    Returns:
        The handler now installed on the root logger.

    Raises:
        ValueError: an unknown level.
    """
    try:
        levelno = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LEVELS)}") from None
    if journald is None:
        journald = under_journal()
    handler = _journal_handler() if journald else None
    journal_missing = journald and handler is None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ContextFormatter())
    handler._aiowstunnel = True  # type: ignore[attr-defined]

    root = logging.getLogger()
    # Replace only what an earlier call installed (a reload may call it again) and leave other
    # handlers, an embedding application's or pytest's, alone.
    for old in [h for h in root.handlers if getattr(h, "_aiowstunnel", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    # websockets logs every frame at debug: that is per-chunk logging (docs/architecture.md,
    # Design rules: Logs).
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if journal_missing:
        logging.getLogger(__name__).warning("systemd-python is missing: logging to stderr")
    return handler


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter takes a type argument from Python 3.11 on
    _Adapter = logging.LoggerAdapter


class TunnelLogger(_Adapter):
    """A LoggerAdapter that adds ``tunnel=`` and merges per-call ``extra=`` (e.g. ``peer``)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def tunnel_logger(
    name: str | None, logger: logging.Logger | None = None, **context: object
) -> TunnelLogger:
    """A logger whose records all carry ``tunnel=name`` (and ``context``'s fields).

    Args:
        name: the tunnel's (or server client entry's) name.
        logger: the logger to wrap; defaults to the ``aiowstunnel`` logger.
        context: more of :data:`CONTEXT_FIELDS` (``client=``, ``peer=``) for every record.

    Returns:
        The adapter; call it as ``log.info("connected", extra={"peer": peer})``.
    """
    extra: Mapping[str, object] = {"tunnel": name, **context}
    return TunnelLogger(logger or logging.getLogger("aiowstunnel"), extra)


#: The most of a peer's text that one log line carries.
MAX_PEER_TEXT = 200


def escape(text: object, limit: int = MAX_PEER_TEXT) -> str:
    """Text a peer sent, made safe for one log line or journald field.

    Control characters (newlines, ANSI escapes, C1, bidi overrides: anything not
    printable) and backslashes become ``\\xNN``/``\\uNNNN`` escapes, so the peer cannot
    forge a line or a field; the result is cut to ``limit`` characters.
    """
    text = str(text)
    cut = len(text) > limit
    out = []
    for char in text[:limit]:
        if char.isprintable() and char != "\\":
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(out) + ("..." if cut else "")


def quote(text: object, limit: int = MAX_PEER_TEXT) -> str:
    """:func:`escape` in double quotes (a quote inside is escaped too): the peer's words
    as one field of a line, which they cannot close or leave."""
    return '"' + escape(text, limit).replace('"', "\\x22") + '"'
