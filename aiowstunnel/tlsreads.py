"""A link's protocol on a TLS connection: decrypted bytes read straight into one buffer.

uvloop's and asyncio's TLS transports hand a plain protocol each decrypted read as a new
bytes object, copied out of the TLS object record by record and joined; a buffered
protocol gets the decrypted bytes written into its own buffer instead (measured in
docs/performance.md, TLS). :class:`TlsReads` is that buffered protocol in front of a
:class:`~link.Link`, which stays a plain protocol: on a plain TCP connection the transport's
own read buffer is already one copy, and a buffer of ours there saved nothing measurable.
"""

from __future__ import annotations

import asyncio

from .link import Link
from .tcp import link_read_buffer, link_read_view


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


def link_protocol(link: Link, tls: bool) -> asyncio.BaseProtocol:
    """What the transport of ``link``'s connection runs: the link, or TlsReads over TLS."""
    return TlsReads(link) if tls else link
