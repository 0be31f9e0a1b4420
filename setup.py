"""The native data path's build (everything else is in pyproject.toml).

``aiowstunnel._datapath`` is optional: where no C compiler or no Python headers exist the
build goes on without it and the package runs the pure-Python data path
(docs/architecture.md, "The data path"). On CPython 3.11 and later it is built against the
stable ABI of 3.11 (``_datapath.abi3.so``), so one file serves every later CPython: the
Debian package ships one for Debian 12's python3.11 and 13's python3.13.
"""

from __future__ import annotations

import platform
import sys

from setuptools import Extension, setup

LIMITED_API = sys.version_info >= (3, 11)

extensions = []
if platform.python_implementation() == "CPython":
    extensions.append(
        Extension(
            "aiowstunnel._datapath",
            sources=["aiowstunnel/_datapath.c"],
            optional=True,
            py_limited_api=LIMITED_API,
            define_macros=[("Py_LIMITED_API", "0x030B0000")] if LIMITED_API else [],
        )
    )

setup(
    ext_modules=extensions,
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if LIMITED_API and extensions else {},
)
