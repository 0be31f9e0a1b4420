"""Per-call costs of the framing pieces. micro.py [PACKAGE_PARENT_DIR]"""

import os
import sys
import timeit

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "/tmp/proto/v0")
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask

from aiowstunnel import wire

N = 20000


def t(label, fn, n=N):
    s = timeit.timeit(fn, number=n) / n * 1e6
    print(f"{label:60s} {s:8.2f} us")


payload64 = os.urandom(64)
payload128k = os.urandom(128 * 1024)
m = wire.Mux(True)
sid, _ = m.open_stream()
m.streams[sid].state = wire.StreamState.OPEN
m.streams[sid].send_window.available = 1 << 30


def send64():
    m.streams[sid].send_window.available = 1 << 30
    return m.send_data(sid, payload64)


t("wire.Mux.send_data 64 B", send64)
msg64 = send64()[0][0]
t(
    "websockets Frame(BINARY,69B).serialize(mask=True)",
    lambda: Frame(Opcode.BINARY, msg64).serialize(mask=True),
)
t(
    "websockets Frame(BINARY,69B).serialize(mask=False)",
    lambda: Frame(Opcode.BINARY, msg64).serialize(mask=False),
)
msg128 = send64.__call__ and (wire.HEADER.pack(4, sid) + payload128k)
t(
    "websockets Frame(BINARY,128KiB).serialize(mask=True)",
    lambda: Frame(Opcode.BINARY, msg128).serialize(mask=True),
    2000,
)
t(
    "websockets Frame(BINARY,128KiB).serialize(mask=False)",
    lambda: Frame(Opcode.BINARY, msg128).serialize(mask=False),
    2000,
)
t(
    "header + memoryview(128KiB) concat",
    lambda: wire.HEADER.pack(4, sid) + memoryview(payload128k),
    2000,
)
t("apply_mask 128 KiB", lambda: apply_mask(msg128, b"abcd"), 2000)
t("os.urandom(4) (websockets: secrets.token_bytes per frame)", lambda: os.urandom(4))


# receive side: server protocol parsing a masked frame
def mk_server():
    srv = ServerProtocol(max_size=1 << 21)
    srv.state = State.OPEN
    return srv


srv = mk_server()
wire64 = Frame(Opcode.BINARY, msg64).serialize(mask=True)


def recv64():
    srv.receive_data(wire64)
    return srv.events_received()


t("websockets ServerProtocol.receive_data+events (69 B frame)", recv64)
wire128 = Frame(Opcode.BINARY, msg128).serialize(mask=True)


def recv128():
    srv.receive_data(wire128)
    return srv.events_received()


t("websockets ServerProtocol.receive_data+events (128 KiB frame)", recv128, 2000)
m2 = wire.Mux(False)
m2.receive(wire.Open(sid, 1 << 30).serialize())
m2.accept_stream(sid)


def mrecv():
    m2.streams[sid].recv_window.available = 1 << 30
    return m2.receive(msg64)


t("wire.Mux.receive DATA 64 B", mrecv)
t("wire.Mux.grant 64 B (below threshold)", lambda: m2.grant(sid, 64))
