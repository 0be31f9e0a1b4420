"""One table of the configuration file read key by key: typed readers that each take a
key once and record a problem instead of raising, so ``check`` reports every error at once,
each with its key path and the line that sets it (docs/configuration.md, Errors)."""

from __future__ import annotations

import difflib
import enum
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

from .addresses import UNIX_SCHEME, Address, SocketAddress, UnixPath
from .errors import AddressError
from .unixsock import DEFAULT_SOCKET_MODE

#: Names become a metrics label and a journald field value: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")

SecretReader = Callable[[Path], str]

KeyPath = tuple[str | int, ...]
T = TypeVar("T")


class Required(enum.Enum):
    """The default of a key that must be given."""

    REQUIRED = enum.auto()


REQUIRED = Required.REQUIRED


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


# bool is an int in Python, but `ping_interval = true` is a mistake, not 1 second.
def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_string(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


def _is_boolean(value: object) -> TypeGuard[bool]:
    return isinstance(value, bool)


def describe_value(value: object, secret: bool = False) -> str:
    """How a wrong value shows in an error; a secret shows only its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if secret or not isinstance(value, str | int | float):
        kind = {str: "a string", int: "an integer", float: "a number"}.get(type(value))
        return kind or "a date/time"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Table:
    """One TOML table being read: each key is taken once, and ``close`` reports the rest."""

    def __init__(self, loader: Document, path: KeyPath, data: dict[str, Any]) -> None:
        self.loader = loader
        self.path = path
        self.data = data
        self._taken: set[str] = set()

    def error(self, key: str | None, message: str) -> None:
        self.loader.error(self.path if key is None else (*self.path, key), message)

    def has(self, key: str) -> bool:
        return key in self.data

    def take(self, key: str, default: object = REQUIRED) -> Any:
        """The raw value (any TOML value); ``default`` when absent (an error if there is
        none: then None)."""
        self._taken.add(key)
        if key in self.data:
            return self.data[key]
        if default is REQUIRED:
            self.error(key, "required key is missing")
            return None
        return default

    def expect(self, *keys: str) -> None:
        """Mark keys as part of the schema without reading them (for ``close``'s hints)."""
        self._taken.update(keys)

    def close(self) -> None:
        for key in self.data:
            if key not in self._taken:
                hint = difflib.get_close_matches(key, sorted(self._taken), n=1)
                self.error(key, "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))

    # Typed readers: each returns the value, or None after recording an error.

    def _typed(
        self,
        key: str,
        default: T | Required | None,
        check: Callable[[object], TypeGuard[T]],
        kind: str,
    ) -> T | None:
        if key not in self.data:
            self.take(key, default)  # marks it read; records the error if it is required
            return None if isinstance(default, Required) else default
        value = self.take(key)
        if not check(value):
            self.error(key, f"expected {kind}, got {describe_value(value)}")
            return None
        return value

    def string(self, key: str, default: str | Required | None = REQUIRED) -> str | None:
        return self._typed(key, default, _is_string, "a string")

    def boolean(self, key: str, default: bool | Required = REQUIRED) -> bool | None:
        return self._typed(key, default, _is_boolean, "true or false")

    def number(
        self, key: str, default: float, minimum: float = 0.0, strict: bool = True
    ) -> float | None:
        """A float (an integer is accepted); ``strict``: must exceed ``minimum``."""
        value = self._typed(key, default, _is_number, "a number")
        if value is None:
            return None
        if not math.isfinite(value):
            self.error(key, f"expected a finite number, got {value}")
            return None
        if value < minimum or (strict and value == minimum):
            self.error(key, f"must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
            return None
        return float(value)

    def integer(self, key: str, default: int | None, low: int, high: int) -> int | None:
        """An integer in ``low..high``; ``default`` (None: no value) when absent."""
        value = self._typed(key, default, _is_integer, "an integer")
        if value is not None and not low <= value <= high:
            self.error(key, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def address(self, key: str, allow_zero_port: bool, need_host: bool = False) -> Address | None:
        text = self.string(key)
        if text is None:
            return None
        try:
            address = Address.parse(text, allow_zero_port=allow_zero_port)
        except AddressError as exc:
            self.error(key, str(exc))
            return None
        if need_host and not address.host:
            self.error(key, f"{text!r}: a host is required")
            return None
        return address

    def socket_address(
        self, key: str, allow_zero_port: bool, need_host: bool = False
    ) -> SocketAddress | None:
        """:meth:`address`, or a unix socket ``unix:/abs/path``."""
        text = self.data.get(key)
        if not (isinstance(text, str) and text.strip().startswith(UNIX_SCHEME)):
            return self.address(key, allow_zero_port, need_host)
        self.take(key)
        try:
            return UnixPath.parse(text)
        except AddressError as exc:
            self.error(key, str(exc))
            return None

    def socket_mode(self) -> int | None:
        """``socket_mode = "0660"``: a unix socket's file mode, as octal text."""
        text = self.string("socket_mode", None)
        if text is None:
            return DEFAULT_SOCKET_MODE
        if not re.fullmatch(r"0?[0-7]{3}", text):
            self.error("socket_mode", f'{text!r}: expected an octal mode such as "0660"')
            return None
        return int(text, 8)

    def path_value(self, key: str) -> Path | None:
        """An optional file path, resolved against the config file's folder."""
        text = self.string(key, None)
        if text is None:
            return None
        if not text:
            self.error(key, "expected a file path, got ''")
            return None
        return self.loader.base_dir / text

    def name(self, required: bool = True) -> str | None:
        name = self.string("name") if required else self.string("name", None)
        if name is not None and not _NAME.fullmatch(name):
            self.error("name", f"{name!r}: use only letters, digits, '_', '.' and '-'")
            return None
        return name

    def table(self, key: str) -> Table | None:
        """A sub-table, or None when absent (or, after an error, not a table)."""
        value = self.take(key, None)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {describe_value(value)}")
            return None
        return Table(self.loader, (*self.path, key), value)

    def tables(self, key: str, header: str) -> list[Table]:
        """An array of tables (``[[header]]``)."""
        value = self.take(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            got = describe_value(value)
            self.error(key, f"expected an array of tables ([[{header}]]), got {got}")
            return []
        return [Table(self.loader, (*self.path, key, i), v) for i, v in enumerate(value)]

    def strings(self, key: str) -> Iterator[tuple[KeyPath, str]]:
        """An optional array of strings, each with its own path for errors."""
        value = self.take(key, [])
        if not isinstance(value, list):
            self.error(key, f"expected an array of strings, got {describe_value(value)}")
            return
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield (*self.path, key, i), item
            else:
                got = describe_value(item)
                self.loader.error((*self.path, key, i), f"expected a string, got {got}")


class Document:
    """The file being read: where relative paths resolve, how secret files are read, and
    every error so far, each with the line of its key."""

    def __init__(self, text: str, base_dir: Path, read_secret: SecretReader) -> None:
        self.base_dir = base_dir
        self.read_secret = read_secret
        self._found: list[tuple[int, str]] = []
        self._lines = key_lines(text)
        self.token_files: list[Path] = []

    @property
    def errors(self) -> list[str]:
        """Every error so far, in file order (those without a line first)."""
        return [message for _, message in sorted(self._found, key=lambda found: found[0])]

    def error(self, path: KeyPath, message: str) -> None:
        # A missing key has no line of its own: point at its table's header instead.
        line = None
        for n in range(len(path), 0, -1):
            line = self._lines.get(dotted(path[:n]))
            if line is not None:
                break
        suffix = f" (line {line})" if line is not None else ""
        self._found.append((line or 0, f"{dotted(path)}: {message}{suffix}"))


_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')"""
_HEADER_LINE = re.compile(r"^\s*(\[\[|\[)\s*(.+?)\s*(?:\]\]|\])\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=\s*(.*)$")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_KEY_PART})\s*=")


def key_parts(text: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(_KEY_PART, text)]


def key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths (``tunnel[1].listen``) to the line that sets them.

    A plain text scan, good for the files people write; it only adds line numbers to
    messages, so a miss costs nothing but the number.
    """
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}  # [[x]] headers seen so far, by path
    prefix = ""
    in_string: str | None = None  # the closing quotes of a multi-line string we are in
    for number, line in enumerate(text.splitlines(), 1):
        if in_string is not None:
            if in_string in line:
                in_string = None
            continue
        header = _HEADER_LINE.match(line)
        if header:
            parts = key_parts(header.group(2))
            prefix = ""
            for i, part in enumerate(parts):
                prefix = f"{prefix}.{part}" if prefix else part
                if i == len(parts) - 1 and header.group(1) == "[[":
                    arrays[prefix] = arrays.get(prefix, 0) + 1
                if prefix in arrays:
                    prefix += f"[{arrays[prefix] - 1}]"
            lines.setdefault(prefix, number)
            continue
        match = _KEY_LINE.match(line)
        if not match:
            continue
        path = prefix
        for part in key_parts(match.group(1)):
            path = f"{path}.{part}" if path else part
        lines.setdefault(path, number)
        value = match.group(2)
        if value.startswith("{"):
            for inner in _INLINE_KEY.finditer(value):
                lines.setdefault(f"{path}.{inner.group(1).strip(chr(34) + chr(39))}", number)
        for quotes in ('"""', "'''"):
            if value.count(quotes) == 1:
                in_string = quotes
    return lines
