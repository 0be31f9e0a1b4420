"""The one-line commands: ``server``, ``client``, ``stdio`` and ``token``.

``server`` and ``client`` build the TOML their flags stand for (oneline.py) and run the
daemon on it, exactly as ``run`` would on that file; ``--print-config`` prints the TOML
instead, so a command line that works becomes a config file. ``stdio`` joins standard
input and output to one stream (stdio.py). ``token`` prints a new random token. Heavy
modules are imported only by the command that runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config

NAMES = ("server", "client", "stdio", "token")
#: The source name of a configuration given on the command line, in errors and logs.
COMMAND_LINE = "<command line>"


def add_commands(commands: Any) -> None:
    """Add the one-line commands to ``aiowstunnel``'s subparsers."""
    server = commands.add_parser(
        "server",
        help="run a tunnel server from flags (see --print-config)",
        description="Run a tunnel server with one client entry, from the command line.",
    )
    server.add_argument("--listen", required=True, help="host:port to accept tunnels on")
    server.add_argument("--token-file", required=True, type=Path, help="the client's token")
    server.add_argument(
        "--allow-connect",
        action="append",
        default=[],
        metavar="RULE",
        help="a target the client may have dialed (repeatable; host:port, CIDR, *, unix:/path)",
    )
    server.add_argument(
        "--allow-listen",
        action="append",
        default=[],
        metavar="RULE",
        help="an address the client may have bound (repeatable)",
    )
    server.add_argument("--tls-cert", type=Path, help="certificate chain (PEM) for wss://")
    server.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    server.add_argument("--path", help="the WebSocket path (default /aiowstunnel)")
    _common(server)

    client = commands.add_parser(
        "client",
        help="run client tunnels from flags, ssh-style -L/-R/-D (see --print-config)",
        description="Run client tunnels to one server, from the command line.",
    )
    client.add_argument("url", help="the server, ws://host:port/path or wss://...")
    client.add_argument("--token-file", required=True, type=Path, help="this client's token")
    client.add_argument(
        "-L",
        dest="forwards",
        action="append",
        default=[],
        type=lambda t: ("-L", t),
        metavar="[udp:][BIND:]PORT:HOST:HOSTPORT",
        help="listen here on PORT, the server dials HOST:HOSTPORT; udp: (or tcp+udp:) "
        "before it carries UDP datagrams (repeatable)",
    )
    client.add_argument(
        "-R",
        dest="forwards",
        action="append",
        type=lambda t: ("-R", t),
        metavar="[udp:][BIND:]PORT[:HOST:HOSTPORT]",
        help="the server listens on PORT, this host dials HOST:HOSTPORT (udp: as -L); with only "
        "[BIND:]PORT, a SOCKS5 proxy on the server whose targets this host dials, within "
        "--allow-connect (repeatable)",
    )
    client.add_argument(
        "-D",
        dest="forwards",
        action="append",
        type=lambda t: ("-D", t),
        metavar="[BIND:]PORT",
        help="a SOCKS5 proxy here on PORT; the server dials each target (repeatable)",
    )
    client.add_argument("--ca-file", type=Path, help="CA to verify a wss:// server")
    client.add_argument(
        "--allow-connect",
        action="append",
        default=[],
        metavar="RULE",
        help="what a -R [BIND:]PORT SOCKS5 proxy may reach through this host (repeatable)",
    )
    client.add_argument(
        "--proxy-protocol",
        choices=("v1", "v2"),
        help="send each backend a PROXY protocol header with the original client's address",
    )
    _common(client)

    stdio = commands.add_parser(
        "stdio",
        help="join stdin/stdout to one stream (ssh ProxyCommand)",
        description="Join standard input and output to one stream to HOST:PORT, through "
        "the server at URL. Logs go to stderr only.",
    )
    stdio.add_argument("url", help="the server, ws://... or wss://...")
    stdio.add_argument("target", metavar="HOST:PORT", help="what the server dials")
    stdio.add_argument("--token-file", required=True, type=Path, help="this client's token")
    stdio.add_argument("--ca-file", type=Path, help="CA to verify a wss:// server")
    stdio.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="what goes to stderr (default warning)",
    )

    commands.add_parser(
        "token",
        help="print a new random token (256 bits)",
        description="Print a new random token: 256 bits, URL-safe base64, for a token file.",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there (default: off)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the equivalent TOML and exit"
    )


def run(args: argparse.Namespace) -> int:
    if args.command == "token":
        import secrets

        print(secrets.token_urlsafe(32))
        return 0
    if args.command == "stdio":
        return _stdio(args)
    try:
        text = _toml(args)
    except ValueError as exc:
        print(f"aiowstunnel {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(text)
        return 0
    config = _load(text)
    if config is None:
        return 2
    from .daemon import run as run_daemon

    return run_daemon(Path(COMMAND_LINE), config)


def _absolute(path: Path | None) -> str | None:
    """Paths as absolute: the printed file may be kept anywhere."""
    return str(path.absolute()) if path is not None else None


def _toml(args: argparse.Namespace) -> str:
    from .oneline import Forward, client_toml, server_toml

    if args.command == "server":
        text = server_toml(
            listen=args.listen,
            token_file=_absolute(args.token_file) or "",
            allow_connect=args.allow_connect,
            allow_listen=args.allow_listen,
            tls_cert=_absolute(args.tls_cert),
            tls_key=_absolute(args.tls_key),
            path=args.path,
            metrics=args.metrics,
            log_level=args.log_level,
        )
    else:
        if not args.forwards:
            raise ValueError("give at least one -L, -R or -D")
        text = client_toml(
            url=args.url,
            token_file=_absolute(args.token_file) or "",
            forwards=[Forward.parse(flag, spec) for flag, spec in args.forwards],
            ca_file=_absolute(args.ca_file),
            metrics=args.metrics,
            log_level=args.log_level,
            proxy_protocol=args.proxy_protocol,
            allow_connect=args.allow_connect,
        )
    return text


def _load(text: str) -> Config | None:
    from .config import load_config
    from .errors import ConfigError

    try:
        return load_config(text, Path.cwd(), COMMAND_LINE)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"{COMMAND_LINE}: {error}", file=sys.stderr)
        return None


def _stdio(args: argparse.Namespace) -> int:
    from .errors import AddressError, ConfigError
    from .logs import setup_logging
    from .oneline import Forward, client_toml

    setup_logging(args.log_level, journald=False)  # stdout is the stream: stderr only
    from .addresses import parse_socket_address

    try:
        parse_socket_address(args.target)  # said in the command's words, not the TOML's
        forward = Forward("connect", "127.0.0.1:0", args.target, label="stdio")
        text = client_toml(
            url=args.url,
            token_file=_absolute(args.token_file) or "",
            forwards=[forward],
            ca_file=_absolute(args.ca_file),
        )
    except AddressError as exc:
        print(f"aiowstunnel stdio: {exc}", file=sys.stderr)
        return 2
    config = _load(text)
    if config is None:
        return 2
    from .runtime import event_loop_runner
    from .stats import TunnelStats
    from .stdio import run_stdio
    from .supervisor import build_client

    spec = config.tunnels[0]

    async def main() -> int:
        try:
            client = build_client(spec, 0, TunnelStats(spec.name))
        except ConfigError as exc:  # a CA file that does not load
            for error in exc.errors:
                print(f"aiowstunnel stdio: {error}", file=sys.stderr)
            return 2
        return await run_stdio(client)

    runner, _ = event_loop_runner()
    return runner(main())
