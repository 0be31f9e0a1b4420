"""TLS contexts from the configuration, and the one check a config passes before it runs.

``aiowstunnel check``, the daemon's start and a SIGHUP reload all call
:func:`read_and_check`: the file is read and validated (config), every certificate, key
and CA it names is loaded (here), and the warnings are listed (audit), so the three can
never disagree about a file.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

from .audit import config_warnings
from .config import Config, ServerConfig, TunnelSpec, read_config
from .errors import ConfigError, describe


def server_ssl(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain ws://.

    Raises:
        ConfigError: a certificate, key or CA file cannot be loaded (names the key).
    """
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load(context.load_cert_chain, "server.tls_cert/tls_key", config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        _load(context.load_verify_locations, "server.tls_client_ca", config.tls_client_ca)
    return context


def tunnel_ssl(spec: TunnelSpec, index: int) -> ssl.SSLContext | None:
    """The tunnel's TLS context (system store or ``ca_file``; client cert for mTLS), or None
    for a ws:// server.

    Raises:
        ConfigError: the CA, certificate or key cannot be loaded (names the key).
    """
    if not spec.server.secure:
        return None
    where = f"tunnel[{index}]"
    try:
        context = ssl.create_default_context(cafile=str(spec.ca_file) if spec.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{where}.ca_file: {spec.ca_file}: {describe(exc)}"]) from None
    if spec.client_cert is not None:
        _load(context.load_cert_chain, f"{where}.client_cert", spec.client_cert, spec.client_key)
    return context


def _load(load: Callable[..., None], key: str, *paths: Path | None) -> None:
    """``load(*paths)`` (a context's load_cert_chain or load_verify_locations).

    Raises:
        ConfigError: naming the key and the files.
    """
    given = [str(p) for p in paths if p is not None]
    try:
        load(*given)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{key}: {', '.join(given)}: {describe(exc)}"]) from None


def check_tls(config: Config) -> None:
    """Load every certificate, key and CA the config names.

    Raises:
        ConfigError: with every file that cannot be loaded.
    """
    errors: list[str] = []
    if config.server is not None:
        try:
            server_ssl(config.server)
        except ConfigError as exc:
            errors += exc.errors
    for index, spec in enumerate(config.tunnels):
        try:
            tunnel_ssl(spec, index)
        except ConfigError as exc:
            errors += exc.errors
    if errors:
        raise ConfigError(errors, config.source)


def read_and_check(path: str | os.PathLike[str]) -> tuple[Config, list[str]]:
    """Everything a config file must pass before it runs: read and validate it, load its
    TLS files, and list its warnings (what ``check``, start and reload each run).

    Returns:
        The configuration, and its warnings (audit.config_warnings), one line each.

    Raises:
        ConfigError: with every error found (the file's, then the TLS files').
    """
    config = read_config(path)
    check_tls(config)
    return config, config_warnings(config, path)
