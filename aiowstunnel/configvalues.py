"""The values several sections share: session settings, backoff, URLs, address rules,
tokens and secret files, and the checks between keys (one of two, both or neither)."""

from __future__ import annotations

from pathlib import Path

from . import wire
from .addresses import AddressRule, Endpoint, parse_proxy_url
from .backoff import BackoffPolicy
from .configmodel import MAX_TUNNEL_SERVERS, SESSION_DEFAULTS
from .configtable import Document, KeyPath, Table, describe_value
from .errors import AddressError, describe
from .handshake import DEFAULT_PATH
from .settings import SessionSettings


class ValueReader(Document):
    """Readers of values shared by sections, on top of the file's error record."""

    def session_settings(
        self,
        t: Table,
        max_streams: int | None = SESSION_DEFAULTS.max_streams,
        handshake_timeout: float | None = SESSION_DEFAULTS.handshake_timeout,
        max_frame: int | None = SESSION_DEFAULTS.max_frame,
    ) -> SessionSettings | None:
        """The session's settings: window, ping_interval, ping_timeout and resume_timeout
        (seconds >= 0; 0: no resumption), which both ends take with the same defaults and
        bounds, and the server's three (read by the caller: None after an error); None
        after an error (already recorded)."""
        interval = SESSION_DEFAULTS.ping_interval
        assert interval is not None  # a config always pings; only the library turns it off
        window = t.integer("window", SESSION_DEFAULTS.window, 1, wire.MAX_WINDOW)
        ping_interval = t.number("ping_interval", interval)
        ping_timeout = t.number("ping_timeout", SESSION_DEFAULTS.ping_timeout)
        resume_timeout = t.number(
            "resume_timeout", SESSION_DEFAULTS.resume_timeout, 0.0, strict=False
        )
        if (
            window is None
            or ping_interval is None
            or ping_timeout is None
            or resume_timeout is None
            or max_streams is None
            or handshake_timeout is None
            or max_frame is None
        ):
            return None
        return SessionSettings(
            window=window,
            max_streams=max_streams,
            max_frame=max_frame,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            handshake_timeout=handshake_timeout,
            resume_timeout=resume_timeout,
        )

    def backoff(self, tunnel: Table) -> BackoffPolicy | None:
        defaults = BackoffPolicy()
        t = tunnel.table("backoff")
        if t is None:
            return None if tunnel.has("backoff") else defaults
        initial = t.number("initial", defaults.initial)
        maximum = t.number("max", defaults.max)
        factor = t.number("factor", defaults.factor, 1.0, strict=False)
        reset_after = t.number("reset_after", defaults.reset_after, 0.0, strict=False)
        t.close()
        if initial is None or maximum is None or factor is None or reset_after is None:
            return None
        if maximum < initial:
            # Name the key the operator wrote: that is the one to fix.
            if t.has("max"):
                t.error("max", f"must be >= initial ({initial:g}), got {maximum:g}")
            else:
                t.error("initial", f"must be <= max ({maximum:g}, the default), got {initial:g}")
            return None
        return BackoffPolicy(initial, maximum, factor, reset_after)

    # ------------------------------------------------------------------ values

    def server_urls(self, t: Table) -> tuple[Endpoint, ...]:
        """``server``: one URL, or an array of them (a session to each); () after an error."""
        value = t.take("server")
        if value is None:
            return ()  # missing: recorded
        if isinstance(value, str):
            endpoint = self.server_url(("server",), t, value)
            return (endpoint,) if endpoint is not None else ()
        if not isinstance(value, list):
            t.error("server", f"expected a URL or an array of URLs, got {describe_value(value)}")
            return ()
        if not value:
            t.error("server", "expected at least one URL")
            return ()
        if len(value) > MAX_TUNNEL_SERVERS:
            t.error("server", f"at most {MAX_TUNNEL_SERVERS} servers, got {len(value)}")
            return ()
        found: list[Endpoint] = []
        for i, item in enumerate(value):
            where: KeyPath = ("server", i)
            if not isinstance(item, str):
                self.error((*t.path, *where), f"expected a URL, got {describe_value(item)}")
                continue
            endpoint = self.server_url(where, t, item)
            if endpoint is None:
                continue
            if endpoint in found:
                self.error((*t.path, *where), f"{item!r} is listed twice")
            elif found and endpoint.secure != found[0].secure:
                # One TLS setup (ca_file, client_cert) serves every server of the tunnel.
                self.error((*t.path, *where), "mixes ws:// and wss://: use one scheme")
            else:
                found.append(endpoint)
        return tuple(found) if len(found) == len(value) else ()  # else: errors recorded

    def server_url(self, where: KeyPath, t: Table, text: str) -> Endpoint | None:
        try:
            return Endpoint.parse(text, DEFAULT_PATH)
        except AddressError as exc:
            self.error((*t.path, *where), str(exc))
            return None

    def proxy_url(self, t: Table) -> str | None:
        text = t.string("proxy", None)
        if text is None:
            return None
        try:
            parse_proxy_url(text)
        except AddressError as exc:
            t.error("proxy", str(exc))
            return None
        return text

    def rules(self, t: Table, key: str) -> tuple[AddressRule, ...]:
        rules = []
        for path, text in t.strings(key):
            try:
                rules.append(AddressRule.parse(text))
            except AddressError as exc:
                self.error(path, str(exc))
        return tuple(rules)

    def token_from_file(self, t: Table) -> str | None:
        path = t.path_value("token_file")
        if path is None:
            return None  # the error is already recorded
        text = self.secret_text(t, "token_file", path)
        if text is None:
            return None
        return self.check_token(t, "token_file", text, f"{path}: ")

    def secret_text(self, t: Table, key: str, path: Path) -> str | None:
        """A secret file's text (token_file, socks_password_file), or None after an error."""
        self.token_files.append(path)
        try:
            return self.read_secret(path)
        except FileNotFoundError:
            t.error(key, f"{path}: no such file")
        except PermissionError:
            t.error(key, f"{path}: permission denied")
        except IsADirectoryError:
            t.error(key, f"{path}: is a directory")
        except OSError as exc:
            t.error(key, f"{path}: {describe(exc)}")
        except UnicodeDecodeError:
            t.error(key, f"{path}: not UTF-8 text")
        return None

    def check_token(self, t: Table, key: str, token: str, where: str) -> str | None:
        # The token travels in an `Authorization: Bearer` header, which the server strips:
        # a space or control character would make it fail to match, silently.
        if not token:
            t.error(key, f"{where}the token is empty")
            return None
        if not all("!" <= c <= "~" for c in token):
            t.error(key, f"{where}the token must be printable ASCII with no spaces or newlines")
            return None
        return token

    # ------------------------------------------------------------------ cross-checks

    def one_of(self, t: Table, a: str, b: str) -> str | None:
        """Which of two exclusive keys is given; an error unless exactly one is."""
        t.expect(a, b)
        if t.has(a) and t.has(b):
            # Read neither: which one the operator meant is the question to answer first.
            t.error(b, f"give either {a} or {b}, not both")
            return None
        if t.has(a):
            return a
        if t.has(b):
            return b
        t.error(a, f"required key is missing (or {b})")
        return None

    def check_pair(self, t: Table, a: str, b: str) -> None:
        """Two keys that go together: both or neither."""
        if t.has(a) != t.has(b):
            present, missing = (a, b) if t.has(a) else (b, a)
            t.error(present, f"needs {missing} too")
