"""``python -m aiowstunnel``: the same as the ``aiowstunnel`` command."""

import sys

from .cli import main

sys.exit(main())
