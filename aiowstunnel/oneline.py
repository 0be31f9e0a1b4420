"""One-line commands as the TOML they stand for (``aiowstunnel server|client ... --print-config``).

``aiowstunnel client URL --token-file F -L 8080:db:5432 -R 8022:127.0.0.1:22 -D 1080`` is
ssh's notation: each ``-L`` is a ``connect`` tunnel (listen here, the server dials), each
``-R`` a ``listen`` tunnel (the server listens, this host dials), each ``-D`` a ``socks5``
proxy; ``-L udp:5353:127.0.0.1:53`` (or ``tcp+udp:``) carries UDP (``protocol``).
``aiowstunnel server --listen ... --allow-connect ...`` is a ``[server]`` with one client
entry. The command line becomes TOML text, and that text goes through the one
loader (config.py), so a one-liner and its printed file are the same configuration and meet
the same checks. Pure: strings in, TOML text out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .addresses import UNIX_SCHEME
from .errors import AddressError

#: ssh's default bind address for -L, -R and -D: loopback, unless one is given.
DEFAULT_BIND = "127.0.0.1"


def toml_string(text: str) -> str:
    """A TOML basic string. JSON's string escapes are all valid TOML escapes."""
    return json.dumps(text, ensure_ascii=False)


def toml_array(items: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(item) for item in items) + "]"


def _fields(text: str) -> list[str]:
    """Split ``a:b:c`` on colons outside brackets (``[::1]:80`` is one host and a port);
    a ``unix:/path`` field is kept whole (it holds no further colon)."""
    fields: list[str] = []
    rest = text
    while rest:
        if rest.startswith(UNIX_SCHEME):
            end = rest.find(":", len(UNIX_SCHEME))
            end = len(rest) if end < 0 else end
        elif rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                raise AddressError(f"{text!r}: unclosed '['")
            end += 1
        else:
            end = rest.find(":")
            end = len(rest) if end < 0 else end
        fields.append(rest[:end])
        rest = rest[end:]
        if rest.startswith(":"):
            rest = rest[1:]
            if not rest:
                raise AddressError(f"{text!r}: ends with ':'")
    return fields


def _endpoint(host: str, port: str) -> str:
    if host.startswith(UNIX_SCHEME):
        raise AddressError(f"{host!r}: a unix socket has no port")
    return f"{host}:{port}"


@dataclass(frozen=True)
class Forward:
    """One ``-L``, ``-R`` or ``-D``: a ``[[tunnel]]``'s mode, listen and connect."""

    mode: str
    listen: str
    connect: str | None
    label: str = ""  # the tunnel's name, when not made from the flag (``stdio``)
    protocol: str = "tcp"  # or "udp", "tcp+udp": a ``udp:`` / ``tcp+udp:`` before the text

    @classmethod
    def parse(cls, flag: str, text: str) -> Forward:
        """``-L``/``-R``: ``[bind:]port:host:hostport`` (either end may be ``unix:/path``
        instead of ``[bind:]port`` or ``host:hostport``); ``-D``: ``[bind:]port``; ``-R``
        with only ``[bind:]port``: a SOCKS5 proxy on the server (``reverse-socks5``), as
        ssh's remote dynamic forwarding.

        Raises:
            AddressError: naming the flag and its text.
        """
        protocol, text = _protocol(text)
        if protocol != "tcp" and flag == "-D":
            raise AddressError(f"-D {protocol}:{text}: a SOCKS5 proxy carries TCP only")
        try:
            fields = _fields(text)
        except AddressError as exc:
            raise AddressError(f"{flag} {exc}") from None
        dynamic = {"-D": "socks5", "-R": "reverse-socks5"}
        if flag == "-D" or (flag == "-R" and len(fields) <= 2 and not _has_target(fields)):
            if protocol != "tcp":
                raise AddressError(f"-R {protocol}:{text}: {protocol} needs a HOST:HOSTPORT")
            mode = dynamic[flag]
            if len(fields) == 1 and fields[0].startswith(UNIX_SCHEME):
                return cls(mode, fields[0], None)
            if len(fields) == 1:
                return cls(mode, f"{DEFAULT_BIND}:{fields[0]}", None)
            if len(fields) == 2:
                return cls(mode, _endpoint(*fields), None)
            raise AddressError(f"-D {text!r}: expected [bind:]port")
        mode = {"-L": "connect", "-R": "listen"}[flag]
        local, target = _split_ends(fields)
        if local is None or target is None:
            raise AddressError(
                f"{flag} {text!r}: expected [bind:]port:host:hostport "
                "(or unix:/path for either end)"
            )
        return cls(mode, local, target, protocol=protocol)

    @property
    def name(self) -> str:
        """A tunnel name from what it does: ``L-8080``, ``R-8022``, ``D-1080``."""
        if self.label:
            return self.label
        letter = {"connect": "L", "listen": "R", "socks5": "D", "reverse-socks5": "RD"}[self.mode]
        where = self.listen.rpartition(":")[2] if not self.listen.startswith(UNIX_SCHEME) else ""
        if not where:
            where = self.listen.rsplit("/", 1)[-1]
        suffix = "" if self.protocol == "tcp" else "-" + self.protocol.replace("+", "")
        return f"{letter}-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", where) or "unix") + suffix


def _protocol(text: str) -> tuple[str, str]:
    """A forward's protocol prefix (``udp:``, ``tcp+udp:``, ``tcp:``) and the rest."""
    for name in ("tcp+udp", "udp", "tcp"):
        if text.lower().startswith(name + ":"):
            return name, text[len(name) + 1 :]
    return "tcp", text


def _has_target(fields: list[str]) -> bool:
    """Whether ``-R``'s fields end with a target (``host:hostport`` or a unix path after a
    listener), rather than being only ``[bind:]port``."""
    return len(fields) == 2 and fields[-1].startswith(UNIX_SCHEME)


def _split_ends(fields: list[str]) -> tuple[str | None, str | None]:
    """``[bind:]port`` or ``unix:/path``, then ``host:hostport`` or ``unix:/path``."""
    if fields and fields[-1].startswith(UNIX_SCHEME):
        target, near = fields[-1], fields[:-1]
    elif len(fields) >= 3:
        target, near = _endpoint(fields[-2], fields[-1]), fields[:-2]
    else:
        return None, None
    if len(near) == 1 and near[0].startswith(UNIX_SCHEME):
        return near[0], target
    if len(near) == 1:
        return f"{DEFAULT_BIND}:{near[0]}", target
    if len(near) == 2:
        return _endpoint(near[0], near[1]), target
    return None, None


def _lines(table: str, values: list[tuple[str, str | None]]) -> str:
    body = "".join(f"{key} = {value}\n" for key, value in values if value is not None)
    return f"{table}\n{body}"


def log_toml(level: str) -> str:
    return _lines("[log]", [("level", toml_string(level))])


def metrics_toml(metrics: str | None) -> str:
    """One-line commands serve metrics only when asked (``--metrics 127.0.0.1:9100``): a
    server and a client one-liner on one host must not both claim the default port."""
    if metrics is None:
        return _lines("[metrics]", [("enabled", "false")])
    return _lines("[metrics]", [("listen", toml_string(metrics))])


def server_toml(
    *,
    listen: str,
    token_file: str,
    allow_connect: Sequence[str] = (),
    allow_listen: Sequence[str] = (),
    tls_cert: str | None = None,
    tls_key: str | None = None,
    path: str | None = None,
    metrics: str | None = None,
    log_level: str = "info",
) -> str:
    """``aiowstunnel server ...``: a ``[server]`` with one client entry, ``default``."""
    header = "# aiowstunnel server, as one command line would run it\n"
    server = _lines(
        "[server]",
        [
            ("listen", toml_string(listen)),
            ("path", toml_string(path) if path else None),
            ("tls_cert", toml_string(tls_cert) if tls_cert else None),
            ("tls_key", toml_string(tls_key) if tls_key else None),
        ],
    )
    client = _lines(
        "[[server.client]]",
        [
            ("name", toml_string("default")),
            ("token_file", toml_string(token_file)),
            ("allow_connect", toml_array(allow_connect) if allow_connect else None),
            ("allow_listen", toml_array(allow_listen) if allow_listen else None),
        ],
    )
    return "\n".join((header + metrics_toml(metrics), log_toml(log_level), server, client))


def client_toml(
    *,
    url: str,
    token_file: str,
    forwards: Sequence[Forward],
    ca_file: str | None = None,
    metrics: str | None = None,
    log_level: str = "info",
    proxy_protocol: str | None = None,
    allow_connect: Sequence[str] = (),
) -> str:
    """``aiowstunnel client URL ...``: one ``[[tunnel]]`` per ``-L``/``-R``/``-D``;
    ``allow_connect``: what a ``-R [bind:]port`` SOCKS proxy may reach through this host."""
    header = "# aiowstunnel client, as one command line would run it\n"
    parts = [header + metrics_toml(metrics), log_toml(log_level)]
    seen: dict[str, int] = {}
    for forward in forwards:
        name = forward.name
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}-{seen[name]}"
        parts.append(
            _lines(
                "[[tunnel]]",
                [
                    ("name", toml_string(name)),
                    ("mode", toml_string(forward.mode)),
                    ("server", toml_string(url)),
                    ("token_file", toml_string(token_file)),
                    ("listen", toml_string(forward.listen)),
                    ("connect", toml_string(forward.connect) if forward.connect else None),
                    (
                        "protocol",
                        toml_string(forward.protocol) if forward.protocol != "tcp" else None,
                    ),
                    ("ca_file", toml_string(ca_file) if ca_file else None),
                    ("proxy_protocol", toml_string(proxy_protocol) if proxy_protocol else None),
                    (
                        "allow_connect",
                        toml_array(allow_connect)
                        if forward.mode == "reverse-socks5" and allow_connect
                        else None,
                    ),
                ],
            )
        )
    return "\n".join(parts)
