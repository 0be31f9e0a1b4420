"""A fixed DATA workload for instruction counts: what each message costs the data path that
``AIOWSTUNNEL_DATA_PATH`` chooses, without sockets or an event loop (docs/performance.md).

    send     a client frames each message as the session does: wire.data_header, a mask key,
             wsframe.binary_frame (``--fused``: wire.data_frame, header included)
    receive  a server splits the masked frames (wsframe.BinarySplitter) and takes each DATA
             message through Mux.receive_data (the header parse, the stream's credit)
    small    20,000 messages of 64 bytes, one read each (the rtt case)
    bulk     400 messages of 128 KiB (DATA's largest), in reads of 256 KiB (the session's)

``--dry`` does all the set-up and none of the work: the difference of two callgrind runs
is the work alone. ``datapath_callgrind.sh`` runs the whole table.

    AIOWSTUNNEL_DATA_PATH=native valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/experiments/datapath_work.py receive small
"""

from __future__ import annotations

import argparse
import random

from aiowstunnel import wire, wsframe

SIZES = {"small": (20_000, 64, 0), "bulk": (400, 128 * 1024, 256 * 1024)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=["send", "receive"])
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("--fused", action="store_true", help="send with wire.data_frame")
    parser.add_argument("--dry", action="store_true", help="set up only")
    args = parser.parse_args()
    count, size, read = SIZES[args.size]
    rng = random.Random(1)
    payload = memoryview(rng.randbytes(size))
    keys = wsframe.MaskKeys()
    key_list = [rng.randbytes(4) for _ in range(count)]
    if args.side == "send":
        if args.dry:
            return
        sid = 7
        if args.fused:
            for _ in range(count):
                wire.data_frame(sid, payload, keys.next())
        else:
            for _ in range(count):
                wsframe.binary_frame(wire.data_header(sid), payload, keys.next())
        return
    # receive: the bytes a client sent, built by the pure code whichever path runs
    frames = [
        b"".join(wsframe.python_binary_frame(wire.python_data_header(1), payload, key))
        for key in key_list
    ]
    if read:
        stream = b"".join(frames)
        reads = [stream[i : i + read] for i in range(0, len(stream), read)]
    else:
        reads = frames
    server = wire.Mux(client_side=False, window=wire.MAX_WINDOW)
    client = wire.Mux(client_side=True, window=wire.MAX_WINDOW)
    sid, opening = client.open_stream()
    server.receive(opening)
    server.accept_stream(sid)
    splitter = wsframe.BinarySplitter(expect_mask=True, max_size=1 << 20)
    if args.dry:
        return
    taken = 0
    for data in reads:
        for is_binary, message in splitter.feed(data):
            if is_binary and server.receive_data(message) is not None:
                taken += 1
    assert taken == count, taken


if __name__ == "__main__":
    main()
