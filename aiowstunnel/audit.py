"""Warnings about a valid configuration that exposes something: secrets others can read or
change, a bearer token sent in clear, metrics open to the network.

Not errors: each may be a deliberate choice (a metrics port behind a firewall, a ws://
server inside a VPN). ``aiowstunnel check`` prints them and the daemon logs them at start
and on reload.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .addresses import Address, ip_or_none
from .config import Config
from .handshake import Mode


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; an empty host (every interface) is not."""
    if host.lower() == "localhost":
        return True
    ip = ip_or_none(host.strip("[]"))
    return ip is not None and ip.is_loopback


def config_warnings(config: Config, path: str | os.PathLike[str] | None = None) -> list[str]:
    """Every warning for ``config`` (read from ``path``), one line each, naming the key."""
    warnings: list[str] = []
    if path is not None:
        warnings += _file_warnings(Path(path), "the config file", writable_only=True)
    for token_file in config.token_files:
        warnings += _file_warnings(token_file, "token file")
    metrics = config.metrics
    if metrics.enabled and not is_loopback(metrics.listen.host):
        warnings.append(
            f"metrics.listen: {metrics.listen} is not loopback: anyone who can reach it reads "
            "client names, byte counts and refusals (firewall it, or listen on 127.0.0.1)"
        )
    for index, spec in enumerate(config.tunnels):
        for n, server in enumerate(spec.servers):
            if not server.secure and not is_loopback(server.host):
                key = f"server[{n}]" if spec.more_servers else "server"
                warnings.append(
                    f"tunnel[{index}].{key}: {server} is ws:// to a host that is not "
                    "loopback: the bearer token travels in clear (use wss://)"
                )
        listen = spec.listen
        if (
            spec.mode.socks
            and spec.socks_username is None
            and isinstance(listen, Address)
            and not is_loopback(listen.host)
        ):
            rules = "the server's" if spec.mode is Mode.SOCKS5 else "this tunnel's"
            warnings.append(
                f"tunnel[{index}].listen: a SOCKS5 proxy on {listen} without socks_username: "
                f"anyone who can reach it may use everything {rules} allow_connect allows "
                "(listen on 127.0.0.1, or set socks_username and socks_password_file)"
            )
    return warnings


def _file_warnings(path: Path, what: str, writable_only: bool = False) -> list[str]:
    try:
        info = path.lstat()
    except OSError:
        return []  # a missing file is the loader's error, not a warning
    out = []
    if stat.S_ISLNK(info.st_mode):
        out.append(
            f"{what} {path} is a symbolic link: whoever can change the link chooses the file"
        )
        try:
            info = path.stat()
        except OSError:
            return out
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        out.append(f"{what} {path} is writable by every user (mode {mode:04o})")
    if not writable_only and mode & (stat.S_IRGRP | stat.S_IROTH):
        out.append(f"{what} {path} is readable by other users (mode {mode:04o}): chmod 600 it")
    return out
