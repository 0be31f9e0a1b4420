"""Run the aiowstunnel CLI with uvloop's event loop policy installed (benchmarks only).

    .venv/bin/python benchmarks/uvloop_run.py run -c FILE

`benchmarks/run.py --uvloop` starts its `connect-uvloop` daemons through this script. The
daemon already picks uvloop itself where it is installed (AIOWSTUNNEL_EVENT_LOOP=uvloop
requires it), so `connect-uvloop` and `connect` are the same configuration measured twice:
their spread shows the run-to-run noise.
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
