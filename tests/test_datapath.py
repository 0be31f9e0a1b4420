"""The native data path against the pure one, its specification: the same random message
sequences through both give the same bytes on the wire, the same split items, the same
DATA the Mux takes, and malformed input the same error class.

Both paths run here in one process, whichever ``AIOWSTUNNEL_DATA_PATH`` chose: the pure
functions are ``wsframe.python_*`` and ``wire.python_*``, the native ones
``aiowstunnel._datapath``. The extension must be built (scripts/bootstrap builds it): a
missing one fails here rather than skips.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aiowstunnel import _datapath as native
from aiowstunnel import mux, wire, wsframe

pytestmark = pytest.mark.timeout(120)

#: the sizes where the WebSocket length field changes form, and around them
EDGES = [0, 1, 2, 3, 4, 5, 120, 121, 125, 126, 127, 4090, 4091, 65530, 65531, 65535, 65536]
sizes = st.one_of(
    st.sampled_from(EDGES),
    st.integers(min_value=0, max_value=3000),
    st.sampled_from([70_000, 131_072, 131_077, 300_000]),  # large: DATA frames are 128 KiB
)
keys = st.one_of(st.none(), st.binary(min_size=4, max_size=4))
stream_ids = st.one_of(st.sampled_from([0, 1, 2, 255, 256, 0xFFFFFFFF]), st.integers(1, 2**32 - 1))


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def wire_bytes(chunks: list[bytes]) -> bytes:
    return b"".join(bytes(chunk) for chunk in chunks)


# -- sending: the bytes out ------------------------------------------------------------


@given(
    messages=st.lists(st.tuples(stream_ids, sizes, st.integers(0, 2**16)), max_size=6),
    key=keys,
    view=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_framing_gives_the_same_bytes(messages, key, view):
    for stream_id, size, seed in messages:
        data = payload(seed, size)
        body = memoryview(data) if view else data
        assert native.data_header(stream_id) == wire.python_data_header(stream_id)
        prefix = wire.python_data_header(stream_id)
        want = wire_bytes(wsframe.python_binary_frame(prefix, body, key))
        assert wire_bytes(native.binary_frame(prefix, body, key)) == want
        assert wire_bytes(wire.python_data_frame(stream_id, body, key)) == want
        assert wire_bytes(native.data_frame(stream_id, body, key)) == want


@given(prefix=st.binary(max_size=9), size=sizes, seed=st.integers(0, 99), key=keys)
@settings(max_examples=200, deadline=None)
def test_framing_any_prefix(prefix, size, seed, key):
    data = payload(seed, size)
    want = wire_bytes(wsframe.python_binary_frame(prefix, data, key))
    assert wire_bytes(native.binary_frame(prefix, data, key)) == want


@given(prefix=st.binary(max_size=9), size=sizes, seed=st.integers(0, 99), key=keys)
@settings(max_examples=200, deadline=None)
def test_a_frame_gives_its_message_back(prefix, size, seed, key):
    """A resumable session logs the DATA frames it sent and reads the messages back from
    them at a resume (wsframe.frame_message): exact on the frames of either path, as they
    come (one chunk natively, a masked large one in two on the pure path)."""
    data = payload(seed, size)
    for frame in (native.binary_frame, wsframe.python_binary_frame):
        assert wsframe.frame_message(frame(prefix, data, key)) == prefix + data


class FixedKeys:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def next(self) -> bytes:
        return self.key


@given(size=sizes, max_data=st.sampled_from([1000, 4096, 131_072]), key=keys)
@settings(max_examples=200, deadline=None)
def test_data_frames_are_the_pure_frames_of_the_split(size, max_data, key):
    """What the link writes for DATA (wire.data_frames, native calls where built) is the
    pure framing of wire.split_data's messages, one frame each."""
    data = memoryview(payload(size, size))
    frames = wire.data_frames(7, data, max_data, FixedKeys(key) if key else None)
    want = [
        wire_bytes(wsframe.python_binary_frame(head, chunk, key))
        for head, chunk in wire.split_data(7, data, max_data)
    ]
    assert [wire_bytes(frame) for frame in frames] == (
        want or [wire_bytes(wsframe.python_binary_frame(wire.python_data_header(7), b"", key))]
    )


def test_native_frames_copy_the_payload():
    """The session frames from a read buffer it reuses at once: no chunk may alias it."""
    buffer = bytearray(b"a" * 10000)
    for key in (None, b"\x00\x01\x02\x03"):
        chunks = native.data_frame(3, memoryview(buffer), key)
        before = wire_bytes(chunks)
        buffer[:] = b"b" * 10000
        assert wire_bytes(chunks) == before
        buffer[:] = b"a" * 10000


# -- receiving: split items and the Mux's DATA --------------------------------------------


@st.composite
def streams(draw: st.DrawFn) -> tuple[bool, bytes, list[int]]:
    """A byte stream as one side receives it: DATA messages in BINARY frames (masked when
    the server receives), pings and pongs between them, sometimes a frame the splitter
    hands to websockets, cut into random reads."""
    masked = draw(st.booleans())
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["data"] * 6 + ["ping", "pong", "other"]))
        key = draw(st.binary(min_size=4, max_size=4)) if masked else None
        if kind == "data":
            data = payload(draw(st.integers(0, 999)), draw(sizes))
            parts.append(wire_bytes(wire.python_data_frame(draw(stream_ids), data, key)))
        elif kind in ("ping", "pong"):
            body = draw(st.binary(max_size=125))
            opcode = 0x89 if kind == "ping" else 0x8A
            if key:  # a masked control frame, as a client sends it
                body = key + bytes(b ^ key[i % 4] for i, b in enumerate(body))
            parts.append(bytes([opcode, (0x80 if key else 0) | (len(body) - len(key or b""))]))
            parts[-1] += body
        else:  # a close, a text frame, a fragment, a reserved bit, wrong masking
            first = draw(st.sampled_from([0x88, 0x81, 0x02, 0xC2, 0x82]))
            flip = first == 0x82  # the one BINARY the splitter refuses: masking is wrong
            bit = 0x80 if masked != flip else 0
            parts.append(bytes([first, bit | 3]) + (b"\1\2\3\4" if bit else b"") + b"abc")
    data = b"".join(parts)
    cuts = draw(st.lists(st.integers(0, max(0, len(data))), max_size=10))
    return masked, data, sorted(set(cuts) | {len(data)})


def pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    at = 0
    for cut in cuts:
        yield data[at:cut]
        at = cut


def both_splitters(masked: bool, max_size: int | None):
    return (
        wsframe.PythonBinarySplitter(expect_mask=masked, max_size=max_size),
        native.BinarySplitter(expect_mask=masked, max_size=max_size),
    )


def same_feed(pure, compiled, chunk: bytes) -> list[tuple[bool, bytes]]:
    want = [(b, bytes(c)) for b, c in pure.feed(chunk)]
    got = [(b, bytes(c)) for b, c in compiled.feed(chunk)]
    assert got == want
    assert compiled.active == pure.active
    assert bytes(compiled._pending) == bytes(pure._pending)
    return want


@given(stream=streams(), stop_at=st.integers(0, 12), max_size=st.sampled_from([None, 1 << 20]))
@settings(max_examples=400, deadline=None)
def test_splitting_gives_the_same_items_and_the_same_data(stream, stop_at, max_size):
    masked, data, cuts = stream
    pure, compiled = both_splitters(masked, max_size)
    for i, chunk in enumerate(pieces(data, cuts)):
        if i == stop_at:  # a close began: both hand everything on to websockets
            pure.stop()
            compiled.stop()
        for is_binary, message in same_feed(pure, compiled, chunk):
            if is_binary:  # the mux header parse of Mux.receive_data
                assert native.data_stream(message) == wire.python_data_stream(message)


@given(
    data=st.binary(max_size=400),
    masked=st.booleans(),
    max_size=st.sampled_from([None, -1, 0, 5, 100, 126, 1 << 70]),
    step=st.integers(1, 50),
)
@settings(max_examples=500, deadline=None)
# the edges random bytes rarely reach: a 126-byte ping (the 16-bit length form, refused),
# a 125-byte one (taken), a 64-bit length, and the largest BINARY max_size allows
@example(data=bytes([0x89, 126, 0, 126]) + b"p" * 130, masked=False, max_size=None, step=3)
@example(data=bytes([0x89, 0xFD]) + b"k" * 129, masked=True, max_size=None, step=7)
@example(data=bytes([0x82, 127]) + (70000).to_bytes(8, "big") + b"z", masked=False, max_size=None,
         step=4)  # fmt: skip
@example(data=bytes([0x82, 0xE4]) + b"m" * 104, masked=True, max_size=100, step=9)
@example(data=bytes([0x82, 0xE5]) + b"m" * 105, masked=True, max_size=100, step=9)
def test_splitting_garbage_gives_the_same_items(data, masked, max_size, step):
    """Random bytes, whole and in pieces: the same items and state from both, never an error."""
    for cut in (len(data) or 1, step):
        pure, compiled = both_splitters(masked, max_size)
        for at in range(0, len(data), cut):
            same_feed(pure, compiled, data[at : at + cut])


@given(message=st.binary(max_size=12), code=st.integers(0, 9))
@settings(max_examples=300, deadline=None)
def test_data_stream_agrees_on_any_message(message, code):
    message = bytes([code]) + message
    assert native.data_stream(message) == wire.python_data_stream(message)
    view = memoryview(bytearray(message))
    assert native.data_stream(view) == wire.python_data_stream(view)


@contextmanager
def data_path_of_wire(which: str) -> Iterator[None]:
    """The Mux's DATA header parse as one path has it (mux.py imports wire's by name)."""
    saved = mux.data_stream
    mux.data_stream = wire.python_data_stream if which == "python" else native.data_stream
    try:
        yield
    finally:
        mux.data_stream = saved


def mux_run(which: str, sends: list[tuple[int, int]], cuts: list[int]) -> list[object]:
    """A client Mux sends DATA on two streams through frames and a splitter of one path to a
    server Mux: what the server takes (receive_data or receive's events) and sends back."""
    splitter_class = native.BinarySplitter if which == "native" else wsframe.PythonBinarySplitter
    frame = native.data_frame if which == "native" else wire.python_data_frame
    with data_path_of_wire(which):
        client, server = mux.Mux(client_side=True, window=5000), mux.Mux(False, window=5000)
        for _ in range(2):
            sid, opening = client.open_stream()
            server.receive(opening)
            client.receive(server.accept_stream(sid))
        out = b""
        rng = random.Random(7)
        for sid_index, size in sends:
            sid = 1 + 2 * sid_index
            n = client.reserve_data(sid, size) if sid in client else 0
            out += wire_bytes(frame(sid, payload(size, n), rng.randbytes(4)))
        # and one DATA beyond the credit, sent by hand: a stream-level fault, answered RST
        out += wire_bytes(frame(1, b"x" * 6000, rng.randbytes(4)))
        splitter = splitter_class(expect_mask=True, max_size=1 << 20)
        seen: list[object] = []
        for chunk in pieces(out, sorted(set(cuts) | {len(out)})):
            for is_binary, message in splitter.feed(chunk):
                assert is_binary
                taken = server.receive_data(message)
                if taken is not None:
                    seen.append(("data", taken[0], bytes(taken[1])))
                else:
                    seen.append(("events", server.receive(message)))
        return seen


@given(
    sends=st.lists(st.tuples(st.integers(0, 1), sizes), max_size=8),
    cuts=st.lists(st.integers(0, 20000), max_size=8),
)
@settings(max_examples=150, deadline=None)
def test_the_mux_takes_the_same_data_and_gives_the_same_events(sends, cuts):
    assert mux_run("native", sends, cuts) == mux_run("python", sends, cuts)


# -- malformed input: the same error class -----------------------------------------------------


def error_of(call, *args) -> type[BaseException] | None:
    try:
        call(*args)
    except Exception as exc:  # the class is what both paths must share
        return type(exc)
    return None


BAD_FRAMES = [
    (b"\x04\0\0\0\1", 123, None),  # a payload that is no buffer
    ("text", b"data", None),  # a prefix that is no buffer
    (b"\x04\0\0\0\1", b"data", b"abc"),  # a 3-byte mask key
    (b"\x04\0\0\0\1", b"data", b"abcde"),  # a 5-byte mask key
    (b"\x04\0\0\0\1", b"data", 1234),  # a mask key that is no buffer
]
BAD_IDS = [-1, 2**32, 2**64, 1.5, "1", None]


@pytest.mark.parametrize("args", BAD_FRAMES)
def test_bad_frame_arguments_raise_the_same_class(args):
    want = error_of(wsframe.python_binary_frame, *args)
    assert want is not None
    assert error_of(native.binary_frame, *args) is want


@pytest.mark.parametrize("stream_id", BAD_IDS)
def test_bad_stream_ids_raise_the_same_class(stream_id):
    assert error_of(wire.python_data_header, stream_id) is struct.error
    assert error_of(native.data_header, stream_id) is struct.error
    assert error_of(wire.python_data_frame, stream_id, b"x", None) is struct.error
    assert error_of(native.data_frame, stream_id, b"x", None) is struct.error


@pytest.mark.parametrize("bad", [123, None, object()])
def test_bad_input_to_the_receiving_side_raises_the_same_class(bad):
    assert error_of(wire.python_data_stream, bad) is TypeError
    assert error_of(native.data_stream, bad) is TypeError
    pure, compiled = both_splitters(True, None)
    assert error_of(pure.feed, bad) is TypeError
    assert error_of(compiled.feed, bad) is TypeError
    assert pure.active and compiled.active  # nothing was taken: the splitter goes on


def test_data_stream_of_bad_data_is_zero_on_both():
    for message in (b"", b"\x04\0\0\0\1", b"\x05\0\0\0\1x", b"\x04\0\0\0\0x"):
        assert native.data_stream(message) == wire.python_data_stream(message) == 0


@pytest.mark.parametrize("pool_size", [0, 2, 4, 6, 16, 4096])
def test_mask_keys_draw_the_same_keys_from_the_same_randomness(monkeypatch, pool_size):
    """Both draw os.urandom(pool_size) when the pool cannot give 4 more bytes, and hand it
    out 4 bytes at a time: the same source gives the same keys."""
    drawn = {}
    for name, keys_class in (("python", wsframe.PythonMaskKeys), ("native", native.MaskKeys)):
        source = iter(range(1, 10**6))
        monkeypatch.setattr(
            "os.urandom", lambda n, s=source: bytes((next(s) + i) % 256 for i in range(n))
        )
        keys = keys_class(pool_size)
        drawn[name] = [keys.next() for _ in range(40)]
    assert drawn["native"] == drawn["python"]
    assert error_of(native.MaskKeys(-1).next) is error_of(wsframe.PythonMaskKeys(-1).next)
