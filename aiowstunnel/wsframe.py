"""WebSocket framing for the data path, sans-I/O (RFC 6455, section 5.2).

websockets stays the reference and owns everything that is not a plain data message: the
handshake, ping/pong, closing, fragments, and every framing error. This module does only
what each tunnel message costs on a busy session, without websockets' per-frame objects,
generator steps and reader buffer (docs/performance.md measured them at 14-28 % of a
receiving daemon's CPU):

- :func:`binary_frame` builds one final, unfragmented BINARY frame around a message;
- :class:`BinarySplitter` cuts received bytes into BINARY payloads, and hands any other
  frame, untouched, back to websockets: control frames one by one, and at the first frame
  it does not take (close, text, fragments, reserved bits, wrong masking, oversize), the
  rest of the connection for good, so websockets' error handling stays the only one.

Both, and :class:`MaskKeys`, have a compiled twin in ``aiowstunnel._datapath`` (with wire's
DATA header functions), the *native data path*: used where the extension loads, unless
``AIOWSTUNNEL_DATA_PATH`` says otherwise (:data:`DATA_PATH` holds the choice;
docs/architecture.md). The pure code here stays the specification and the fallback:
``python_binary_frame``, ``PythonBinarySplitter`` and ``PythonMaskKeys`` are it whichever
path runs, and the tests hold the native one to it byte for byte.
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Sequence
from types import ModuleType

try:  # websockets' C extension; the pure-Python fallback is 100x slower on large frames
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the speedups are built everywhere we ship
    from websockets.utils import apply_mask

_BINARY = 0x82  # FIN + opcode 2, no reserved bits
_PING = 0x89
_PONG = 0x8A
_MASK_BIT = 0x80
_HEAD_2 = struct.Struct("!BB")
_HEAD_4 = struct.Struct("!BBH")
_HEAD_10 = struct.Struct("!BBQ")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
#: below this, prefix and payload are joined and masked in one piece (one small write)
_JOIN_BELOW = 4096


class MaskKeys:
    """Mask keys for client frames, drawn from os.urandom 4 KiB at a time.

    RFC 6455 asks for unpredictable keys from a strong source; websockets draws each with
    its own getrandom() call, one syscall per frame (docs/performance.md, syscall table).
    """

    def __init__(self, pool_size: int = 4096) -> None:
        self._size = pool_size
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        if self._pos + 4 > len(self._pool):
            self._pool, self._pos = os.urandom(self._size), 0
        key = self._pool[self._pos : self._pos + 4]
        self._pos += 4
        return key


def _head(length: int, mask_bit: int) -> bytes:
    if length < 126:
        return _HEAD_2.pack(_BINARY, mask_bit | length)
    if length < 65536:
        return _HEAD_4.pack(_BINARY, mask_bit | 126, length)
    return _HEAD_10.pack(_BINARY, mask_bit | 127, length)


def binary_frame(prefix: bytes, payload: bytes | memoryview, mask_key: bytes | None) -> list[bytes]:
    """The chunks of one BINARY frame carrying ``prefix + payload``, to write in order.

    ``payload`` is copied exactly once (joined, or masked), so the caller may reuse its
    buffer as soon as this returns. A client passes a fresh ``mask_key``; a server None.
    """
    length = len(prefix) + len(payload)
    if mask_key is None:
        return [b"".join((_head(length, 0), prefix, payload))]
    if length < _JOIN_BELOW:
        return [
            b"".join((_head(length, _MASK_BIT), mask_key, apply_mask(prefix + payload, mask_key)))
        ]
    # Mask the two parts apart, so the large one is not first joined to the small one:
    # the key continues where the prefix ended.
    shift = len(prefix) % 4
    rest_key = mask_key[shift:] + mask_key[:shift]
    return [
        b"".join((_head(length, _MASK_BIT), mask_key, apply_mask(prefix, mask_key))),
        apply_mask(payload, rest_key),
    ]


def frame_message(frame: Sequence[bytes | bytearray | memoryview]) -> bytes:
    """The message one frame of :func:`binary_frame` carries, given its chunks (unmasked
    with the frame's own key): how a resumable session reads back the DATA it logged as
    sent (``resumption``), at a resume only, so it has no native twin."""
    data = b"".join(frame)
    length = data[1] & 0x7F
    head = 2 if length < 126 else 4 if length == 126 else 10
    if not data[1] & _MASK_BIT:
        return data[head:]
    return apply_mask(data[head + 4 :], data[head : head + 4])


class BinarySplitter:
    """Cuts a WebSocket byte stream into the payloads of final BINARY frames.

    :meth:`feed` returns ``(is_binary, chunk)`` items in stream order: a BINARY payload
    (unmasked; a slice of the input where no mask applies), or raw bytes for websockets'
    ``receive_data`` (a whole ping or pong frame, or, once :attr:`active` is False, all
    the remaining bytes of the connection).

    Args:
        expect_mask: True on the server side (RFC 6455: client frames are masked).
        max_size: the largest frame payload allowed; a larger one is handed to websockets,
            which fails the connection with 1009.
    """

    def __init__(self, expect_mask: bool, max_size: int | None) -> None:
        self.expect_mask = expect_mask
        self.max_size = max_size if max_size is not None else 1 << 62
        self.active = True
        self._pending = bytearray()
        self._need = 0  # bytes the pending frame needs in all (0: its header is incomplete)

    def stop(self) -> None:
        """Give the connection back to websockets from the next :meth:`feed` on, with any
        partial frame held here: the session calls it once a close began, so that
        websockets alone decides what is still delivered (after a failure: nothing)."""
        self.active = False

    def feed(self, data: bytes | memoryview) -> list[tuple[bool, bytes | memoryview]]:
        if not self.active:
            if self._pending:  # a stop() between frames of a read: the held part first
                data, self._pending, self._need = bytes(self._pending) + data, bytearray(), 0
            return [(False, data)]
        out: list[tuple[bool, bytes | memoryview]] = []
        view = memoryview(data)
        pos = 0
        if self._pending:
            if not self._need:  # the read ended inside a header (rare: a few bytes of it)
                view = memoryview(bytes(self._pending) + data)
                self._pending = bytearray()
            else:  # complete the one frame that waits, copying only what it lacks
                missing = self._need - len(self._pending)
                if len(view) < missing:
                    self._pending += view
                    return out
                frame, self._pending, self._need = self._pending, bytearray(), 0
                frame += view[:missing]
                # ``frame`` is never written again, so its payload view stays valid.
                self._scan(memoryview(frame), 0, out)
                pos = missing
        self._scan(view, pos, out)
        return out

    def _scan(self, view: memoryview, pos: int, out: list[tuple[bool, bytes | memoryview]]) -> None:
        end_of_data = len(view)
        while pos < end_of_data:
            available = end_of_data - pos
            if available < 2:
                break
            first = view[pos]
            second = view[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if available < 4:
                    break
                (length,) = _U16.unpack_from(view, pos + 2)
                head = 4
            elif length == 127:
                if available < 10:
                    break
                (length,) = _U64.unpack_from(view, pos + 2)
                head = 10
            masked = second & _MASK_BIT
            if masked:
                head += 4
            takes = (first == _BINARY and length <= self.max_size) or (
                first in (_PING, _PONG) and length < 126
            )
            if not takes or bool(masked) != self.expect_mask:
                # Not ours to judge: websockets takes the connection from this frame on.
                self.active = False
                out.append((False, bytes(view[pos:])))
                return
            frame_end = pos + head + length
            if frame_end > end_of_data:
                self._need = head + length
                break
            if first != _BINARY:
                out.append((False, bytes(view[pos:frame_end])))
            elif masked:
                at = pos + head
                # websockets types the mask as bytes; its apply_mask takes any buffer.
                mask = view[at - 4 : at]
                out.append((True, apply_mask(view[at:frame_end], mask)))  # type: ignore[arg-type]
            else:
                out.append((True, view[pos + head : frame_end]))
            pos = frame_end
        if pos < end_of_data:
            self._pending += view[pos:]


#: The environment variable that chooses the data path: ``auto`` (native where the
#: extension loads, else python), ``python`` or ``native``.
DATA_PATH_ENV = "AIOWSTUNNEL_DATA_PATH"


class DataPathError(ImportError):
    """``AIOWSTUNNEL_DATA_PATH`` asks for a data path that cannot run: an unknown value, or
    ``native`` where the extension does not load (raised when this module is imported)."""


def _choose(choice: str) -> tuple[ModuleType | None, str]:
    """The native module (or None) and the data path's name, by ``AIOWSTUNNEL_DATA_PATH``."""
    if choice not in ("auto", "python", "native"):
        raise DataPathError(f"{DATA_PATH_ENV}={choice!r}: expected auto, python or native")
    if choice == "python":
        return None, "python"
    try:
        module = importlib.import_module(f"{__package__}._datapath")
    except ImportError as exc:  # not built (no compiler), or built for another Python
        if choice == "native":
            raise DataPathError(
                f"{DATA_PATH_ENV}=native, but the native data path (aiowstunnel._datapath) does"
                f" not load: {exc}. pip builds it where a C compiler and Python's headers are"
                f" installed; {DATA_PATH_ENV}=python runs without it"
            ) from exc
        return None, "python"
    return module, "native"


native, DATA_PATH = _choose(os.environ.get(DATA_PATH_ENV) or "auto")
#: the pure implementations, whichever path runs: the specification and the fallback
python_binary_frame = binary_frame
PythonBinarySplitter = BinarySplitter
PythonMaskKeys = MaskKeys
if native is not None:
    binary_frame = native.binary_frame
    BinarySplitter = native.BinarySplitter  # type: ignore[misc]
    MaskKeys = native.MaskKeys  # type: ignore[misc]
