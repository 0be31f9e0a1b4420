"""The command line: ``aiowstunnel run``, ``aiowstunnel check``, ``aiowstunnel --version``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import __version__

DEFAULT_CONFIG = Path("/etc/aiowstunnel.toml")


def version() -> str:
    """``aiowstunnel 1.0.0 (event loop: uvloop 0.21.0; data path: native)``: what ``run``
    would run on, by the same choice (AIOWSTUNNEL_EVENT_LOOP included)."""
    from .runtime import describe

    return f"aiowstunnel {__version__} ({describe()})"


class _VersionAction(argparse.Action):
    """argparse's ``version`` action, but the text is made only when asked for: finding the
    event loop imports uvloop, which ``check`` never needs."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **{**kwargs, "nargs": 0})

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiowstunnel",
        description="Persistent, reliable TCP tunnels over WebSocket.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="show the version, event loop and data path"
    )
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
    from .commands import add_commands  # server, client, stdio, token (light to import)

    add_commands(commands)
    return parser


def check(path: Path) -> int:
    from .errors import ConfigError
    from .tls import read_and_check

    try:
        config, warnings = read_and_check(path)
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
    for warning in warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    extra = f", {len(warnings)} warning(s)" if warnings else ""
    print(f"{path}: OK ({server}, {len(config.tunnels)} tunnel(s){extra})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return check(args.config)
    from .runtime import data_path

    data_path()  # a forced data path that cannot run: one line, before the daemon's imports
    from . import commands

    if args.command in commands.NAMES:
        return commands.run(args)
    from .daemon import run

    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
