"""Run the aiowstunnel CLI with uvloop as the event loop (benchmarks only).

    .venv/bin/python benchmarks/uvloop_run.py run -c FILE

The daemon calls ``asyncio.run``; installing uvloop's event loop policy first makes that
run on uvloop without any change to the package.

Before commit b9149d5, ``TcpStream.connection_made`` and ``Session.connection_made``
asserted ``isinstance(transport, asyncio.Transport)``, which uvloop's ``TCPTransport`` is
not: with such a checkout run this with ``python -O``. Note that uvloop, like Debian's
Python 3.11.2, ignores ``pause_reading()`` called from ``connection_made()``; see
docs/performance.md (uvloop) for what that does to the current flow control.
"""

import sys
import warnings

import uvloop

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the policy API is deprecated in 3.12+
    uvloop.install()

from aiowstunnel.cli import main

if __name__ == "__main__":
    sys.exit(main())
