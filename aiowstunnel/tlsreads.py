"""A link's protocol on a TLS connection: decrypted bytes read straight into one buffer,
and on the server the handshake started by the admission, not before it.

uvloop's and asyncio's TLS transports hand a plain protocol each decrypted read as a new
bytes object, copied out of the TLS object record by record and joined; a buffered
protocol gets the decrypted bytes written into its own buffer instead (measured in
docs/performance.md, TLS). :class:`TlsReads` is that buffered protocol in front of a
:class:`~link.Link`, which stays a plain protocol: on a plain TCP connection the transport's
own read buffer is already one copy, and a buffer of ours there saved nothing measurable.

:class:`TlsAccept` is what a server's TLS endpoint accepts: a plain TCP connection whose
admission is checked first, so that one the server would drop anyway (over its handshake
limits) is dropped before any TLS work, then the TLS handshake and the
link. A listener with ``ssl=`` does the handshake of every connection before its protocol
hears of it: each one dropped then had cost a handshake's CPU, and left its heap behind
(docs/performance.md, A thousand tunnels).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import cast

from .addresses import format_peer, peer_host
from .errors import describe
from .link import Link
from .resets import Abortable, reset
from .tcp import link_read_buffer, link_read_view

log = logging.getLogger("aiowstunnel.server")


class TlsReads(asyncio.BufferedProtocol):
    """The transport's protocol for ``link`` on a TLS connection; everything but the read
    is the link's."""

    __slots__ = ("link",)

    def __init__(self, link: Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return link_read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        # Not a view kept from get_buffer: a TLS read that completes no record calls
        # get_buffer without buffer_updated, and a kept view would pin a buffer per link.
        self.link.data_received(link_read_view(nbytes))

    def eof_received(self) -> bool | None:
        return self.link.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.connection_lost(exc)

    def pause_writing(self) -> None:
        self.link.pause_writing()

    def resume_writing(self) -> None:
        self.link.resume_writing()


class TlsAccept(asyncio.Protocol):
    """A server's TLS connection before its handshake, as the plain listener accepted it.

    Its admission is checked first: a connection over the limits is dropped with nothing
    read. An admitted one leaves this transport unread (its socket is duplicated and the
    transport closed from connection_made, before the event loop reads anything) and is
    served again by ``connect_accepted_socket`` with TLS: the handshake and everything
    after it as on a listener with ``ssl=``. (``start_tls`` cannot take over here: uvloop
    starts reading once connection_made returns, pause or not, and the ClientHello would
    reach this protocol instead of the TLS one.)

    Args:
        link: the connection's link, its protocol once TLS is up (TlsReads).
        ssl: the server's context.
        timeout: seconds the TLS handshake may take (handshake_timeout).
        admit: given the peer (``host:port``) and its address, False to drop the
            connection before TLS (the server's admission: over its limits, the hit
            counted).
        failed: the connection is dropped, its handshake failed or it went first (its
            slots go back).
        tasks: where the handshake's task is kept until it ends.
    """

    __slots__ = ("_admit", "_failed", "_ssl", "_started", "_tasks", "_timeout", "link")

    def __init__(
        self,
        link: Link,
        ssl: ssl_module.SSLContext,
        timeout: float,
        admit: Callable[[str, str], bool],
        failed: Callable[[], None],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.link = link
        self._ssl = ssl
        self._timeout = timeout
        self._admit = admit
        self._failed = failed
        self._tasks = tasks
        self._started = False  # the handshake's task ran: the socket is the transport's

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(Abortable, base)  # a TCP transport (uvloop's or asyncio's)
        peername = transport.get_extra_info("peername")
        if not self._admit(format_peer(peername), peer_host(peername)):
            reset(transport)
            self._failed()
            return
        try:
            sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        except OSError as exc:  # out of descriptors: as over a limit
            log.debug("cannot take over an accepted connection: %s", describe(exc))
            reset(transport)
            self._failed()
            return
        transport.abort()  # its descriptor only: the duplicate keeps the connection
        task = asyncio.get_running_loop().create_task(self._handshake(sock))
        self._tasks.add(task)
        task.add_done_callback(lambda task: self._ended(task, sock))

    def _ended(self, task: asyncio.Task[None], sock: socket.socket) -> None:
        self._tasks.discard(task)
        if not self._started:  # cancelled before it ran (the server closes): still ours
            sock.close()
            self._failed()

    async def _handshake(self, sock: socket.socket) -> None:
        self._started = True
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: TlsReads(self.link),
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self._timeout,
            )
        # The socket is the transport's from the call on: a failure or a cancel closes
        # it there (uvloop holds an I/O reference, asyncio the same object), never here.
        except Exception as exc:  # the peer's TLS failed, timed out, or it went away
            log.debug("TLS handshake failed: %s", describe(exc))
            self._failed()
        except BaseException:  # cancelled: the server closes
            self._failed()
            raise


def link_protocol(link: Link, tls: bool) -> asyncio.BaseProtocol:
    """What the transport of ``link``'s connection runs: the link, or TlsReads over TLS."""
    return TlsReads(link) if tls else link
