"""The daemon's configuration: TOML text in, frozen dataclasses out, and ``diff(old, new)``.

This module owns the schema of ``/etc/aiowstunnel.toml`` (docs/configuration.md): each key,
its type, default and check. ``load_config`` is pure apart from an injected token-file reader,
so ``aiowstunnel check``, ``run`` and a SIGHUP reload all see the same result.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .configmodel import (
    Config,
    ConfigDiff,
    LogConfig,
    MetricsConfig,
    Secret,
    ServerConfig,
    TunnelSpec,
    diff,
)
from .configschema import Loader
from .configtable import SecretReader
from .errors import ConfigError, describe

# The dataclasses live in configmodel, the schema in configschema (with configvalues), the
# key-by-key reader in configtable; this module is what the rest of the package imports.
__all__ = [
    "Config",
    "ConfigDiff",
    "LogConfig",
    "MetricsConfig",
    "Secret",
    "ServerConfig",
    "TunnelSpec",
    "diff",
    "load_config",
    "read_config",
    "read_secret_file",
]


def read_secret_file(path: Path) -> str:
    """Read a token file: its text without one trailing newline (``\\n`` or ``\\r\\n``).

    Raises:
        OSError: the file cannot be read.
        UnicodeDecodeError: the file is not UTF-8.
    """
    text = path.read_text(encoding="utf-8")
    for newline in ("\r\n", "\n"):
        if text.endswith(newline):
            return text[: -len(newline)]
    return text


def load_config(
    text: str,
    base_dir: Path,
    source: str = "<config>",
    read_secret: SecretReader = read_secret_file,
) -> Config:
    """Parse and validate a configuration.

    Args:
        text: the TOML text.
        base_dir: the folder relative paths resolve against (the config file's folder).
        source: the file name, for error messages.
        read_secret: reads a token file given its absolute path; injected for tests.

    Returns:
        The configuration, with every default filled in.

    Raises:
        ConfigError: listing every problem found, each message starting with the key path
            (``tunnel[2].conect: unknown key (line 14)``).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already says "(at line L, column C)".
        raise ConfigError([f"TOML syntax error: {exc}"], source) from None
    loader = Loader(text, Path(base_dir), read_secret)
    config = loader.load(data, source)
    if loader.errors or config is None:
        raise ConfigError(loader.errors, source)
    return config


def read_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; relative paths in it resolve against its folder.

    Args:
        path: the file.

    Returns:
        The configuration.

    Raises:
        ConfigError: the file cannot be read, or its content is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {describe(exc)}"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["cannot read: not UTF-8 text"], str(path)) from None
    # absolute(), so that paths stay right whatever the daemon's working directory later is.
    return load_config(text, path.absolute().parent, str(path))
