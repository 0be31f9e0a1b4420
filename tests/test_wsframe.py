"""wsframe against websockets, the reference: frames we build parse there, frames it builds
split here, and whatever the splitter does not take reaches websockets byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from aiowstunnel.wsframe import BinarySplitter, MaskKeys, binary_frame

PREFIX = bytes([4, 0, 0, 0, 7])  # a DATA header: the usual prefix


def parse_all(data: bytes, mask: bool, max_size: int | None = None) -> list[Frame]:
    """Every frame in ``data``, parsed by websockets."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while len(reader.buffer):
        parser = Frame.parse(reader.read_exact, mask=mask, max_size=max_size)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


def reference(opcode: Opcode, data: bytes, mask: bool, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=mask)


@pytest.mark.parametrize("size", [0, 1, 120, 121, 125, 126, 4090, 4091, 65530, 65531, 70000])
@pytest.mark.parametrize("masked", [False, True])
def test_binary_frame_parses_as_websockets_reads_it(size, masked):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    key = b"\x01\x80\xfe\x33" if masked else None
    chunks = binary_frame(PREFIX, memoryview(payload), key)
    (frame,) = parse_all(b"".join(chunks), mask=masked)
    assert frame.opcode is Opcode.BINARY and frame.fin
    assert frame.data == PREFIX + payload


@given(prefix=st.binary(max_size=9), payload=st.binary(max_size=9000), masked=st.booleans())
@settings(max_examples=300, deadline=None)
def test_binary_frame_any_prefix_and_size(prefix, payload, masked):
    key = MaskKeys().next() if masked else None
    (frame,) = parse_all(b"".join(binary_frame(prefix, payload, key)), mask=masked)
    assert frame.data == prefix + payload


def test_payload_buffer_is_free_once_framed():
    """The session frames from a read buffer it reuses at once: no chunk may alias it."""
    buffer = bytearray(b"a" * 10000)
    for key in (None, b"\x00\x01\x02\x03"):
        chunks = binary_frame(PREFIX, memoryview(buffer), key)
        buffer[:] = b"b" * 10000
        (frame,) = parse_all(b"".join(chunks), mask=key is not None)
        assert frame.data == PREFIX + b"a" * 10000
        buffer[:] = b"a" * 10000


def test_mask_keys_are_4_bytes_and_refill():
    keys = MaskKeys(pool_size=8)
    drawn = [keys.next() for _ in range(10)]
    assert all(len(k) == 4 for k in drawn)
    assert len(set(drawn)) > 1


def stream_of(masked: bool) -> tuple[bytes, list[tuple[bool, bytes]]]:
    """Binary frames of several sizes with a ping and a pong between them."""
    parts: list[tuple[bool, bytes]] = []
    wire = b""
    for i, size in enumerate([5, 200, 70000, 0, 126, 3]):
        payload = bytes([i]) * size
        wire += reference(Opcode.BINARY, payload, masked)
        parts.append((True, payload))
        if i == 2:
            ping = reference(Opcode.PING, b"ping", masked)
            pong = reference(Opcode.PONG, b"", masked)
            wire += ping + pong
            parts += [(False, ping), (False, pong)]
    return wire, parts


@given(cuts=st.lists(st.integers(min_value=0, max_value=71000), max_size=12), masked=st.booleans())
@settings(max_examples=200, deadline=None)
def test_splitter_takes_frames_however_the_reads_fall(cuts, masked):
    wire, expected = stream_of(masked)
    splitter = BinarySplitter(expect_mask=masked, max_size=1 << 20)
    got: list[tuple[bool, bytes]] = []
    at = 0
    for cut in sorted({c for c in cuts if c < len(wire)} | {len(wire)}):
        got += [(b, bytes(c)) for b, c in splitter.feed(wire[at:cut])]
        at = cut
    assert splitter.active
    assert got == expected


HANDED_OVER = {
    "close": lambda m: reference(Opcode.CLOSE, b"\x03\xe8bye", m),
    "text": lambda m: reference(Opcode.TEXT, b"hello", m),
    "fragment": lambda m: reference(Opcode.BINARY, b"part", m, fin=False),
    "reserved bit": lambda m: bytes([0xC2]) + reference(Opcode.BINARY, b"x", m)[1:],
    "oversize": lambda m: reference(Opcode.BINARY, b"y" * 2000, m),
    "long ping": lambda m: (
        bytes([0x89, (0x80 if m else 0) | 126, 0, 126]) + (b"\0\0\0\0" if m else b"") + b"p" * 126
    ),
}


@pytest.mark.parametrize("case", sorted(HANDED_OVER))
@pytest.mark.parametrize("masked", [False, True])
def test_anything_else_goes_to_websockets_with_the_rest(case, masked):
    before = reference(Opcode.BINARY, b"first", masked)
    odd = HANDED_OVER[case](masked)
    after = reference(Opcode.BINARY, b"after", masked)
    splitter = BinarySplitter(expect_mask=masked, max_size=1000)
    items = splitter.feed(before + odd + after)
    assert [(b, bytes(c)) for b, c in items] == [(True, b"first"), (False, odd + after)]
    assert not splitter.active
    assert splitter.feed(b"later") == [(False, b"later")]


@pytest.mark.parametrize("server_side", [False, True])
def test_wrong_masking_goes_to_websockets(server_side):
    """A server must get masked frames, a client unmasked ones (RFC 6455, 5.1)."""
    wrong = reference(Opcode.BINARY, b"data", mask=not server_side)
    splitter = BinarySplitter(expect_mask=server_side, max_size=None)
    assert splitter.feed(wrong) == [(False, wrong)]
    assert not splitter.active


def _normal(items) -> list[tuple[bool, bytes]]:
    """Items with consecutive hand-overs joined: their split into pieces does not matter."""
    out: list[tuple[bool, bytes]] = []
    for is_binary, chunk in items:
        if not is_binary and out and not out[-1][0]:
            out[-1] = (False, out[-1][1] + bytes(chunk))
        else:
            out.append((is_binary, bytes(chunk)))
    return out


@given(data=st.binary(max_size=300), masked=st.booleans())
@settings(max_examples=500, deadline=None)
def test_splitter_never_raises_and_read_boundaries_do_not_matter(data, masked):
    """Random bytes, fed whole and fed one byte at a time: the same payloads, the same
    bytes for websockets, the same state after (nothing lost, nothing invented)."""
    whole = BinarySplitter(expect_mask=masked, max_size=100)
    got_whole = _normal(whole.feed(data))
    bytewise = BinarySplitter(expect_mask=masked, max_size=100)
    got_bytewise = _normal(
        [item for i in range(len(data)) for item in bytewise.feed(data[i : i + 1])]
    )
    assert got_whole == got_bytewise
    assert whole.active == bytewise.active
    assert bytes(whole._pending) == bytes(bytewise._pending)
    if not whole.active:  # what websockets got last is the rest of the input, exactly
        assert not got_whole[-1][0] and data.endswith(got_whole[-1][1])


@pytest.mark.parametrize("masked", [False, True])
def test_stop_hands_the_held_part_of_a_frame_to_websockets(masked):
    """After stop() (a close began), websockets gets every byte from the next frame
    boundary on, the part of a frame already held here included."""
    first = reference(Opcode.BINARY, b"a" * 300, masked)
    second = reference(Opcode.BINARY, b"b" * 300, masked)
    splitter = BinarySplitter(expect_mask=masked, max_size=None)
    items = splitter.feed(first + second[:100])
    assert [(b, bytes(c)) for b, c in items] == [(True, b"a" * 300)]
    splitter.stop()
    assert splitter.feed(second[100:]) == [(False, second)]
    assert splitter.feed(b"more") == [(False, b"more")]
