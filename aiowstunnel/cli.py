"""The command line: ``aiowstunnel run``, ``aiowstunnel check``, ``aiowstunnel --version``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__

DEFAULT_CONFIG = Path("/etc/aiowstunnel.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiowstunnel",
        description="Persistent, reliable TCP tunnels over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"aiowstunnel version {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the daemon in the foreground (systemd does the rest)"),
        ("check", "validate a config file: exit 0, or 1 with every error"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"the config file (default {DEFAULT_CONFIG})",
        )
    return parser


def check(path: Path) -> int:
    from .audit import config_warnings
    from .config import read_config
    from .errors import ConfigError
    from .supervisor import check_tls

    try:
        config = read_config(path)
        check_tls(config)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"{exc.source}: {error}", file=sys.stderr)
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    server = (
        f"a server on {config.server.listen} with {len(config.server.clients)} client(s)"
        if config.server
        else "no server"
    )
    warnings = config_warnings(config, path)
    for warning in warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    extra = f", {len(warnings)} warning(s)" if warnings else ""
    print(f"{path}: OK ({server}, {len(config.tunnels)} tunnel(s){extra})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return check(args.config)
    from .daemon import run

    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
