"""The one-line commands (`aiowstunnel server|client ...`) run like the TOML they print:
both carry the same data, and `aiowstunnel check` accepts every printed config."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiowstunnel.addresses import Address
from aiowstunnel.config import load_config
from aiowstunnel.oneline import Forward, client_toml
from aiowstunnel.socks5 import client_request

from ..helpers import LOCAL, echo_roundtrip, run_tool, start_backend

AIOWSTUNNEL = str(Path(sys.executable).with_name("aiowstunnel"))


class Logged:
    """A daemon subprocess whose stderr is read line by line: readiness is a log line."""

    def __init__(self, *argv: str) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Logged:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        return self

    async def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[re.Match]:
        """The first ``count`` lines (old or new) that match ``pattern``."""
        assert self.proc is not None and self.proc.stderr is not None

        async def read() -> list[re.Match]:
            while True:
                found = [m for line in self.lines if (m := re.search(pattern, line))]
                if len(found) >= count:
                    return found[:count]
                line = await self.proc.stderr.readline()
                if not line:
                    raise AssertionError(f"exited before {pattern!r}:\n" + "".join(self.lines))
                self.lines.append(line.decode(errors="replace"))

        return await asyncio.wait_for(read(), timeout)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


async def socks_roundtrip(proxy: Address, target: Address) -> bytes:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(client_request(target) + b"ping through socks")
    assert await reader.readexactly(12) == b"\x05\x00\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    writer.write_eof()
    echoed = await reader.read(-1)
    writer.close()
    return echoed


def scrape(logged: Logged) -> dict[tuple[str, frozenset], float]:
    """The daemon's metrics, read with prometheus_client's parser."""
    port = next(
        m[1] for line in logged.lines if (m := re.search(r"metrics on http://\S+:(\d+)/", line))
    )
    with urllib.request.urlopen(f"http://{LOCAL}:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


async def socks_refused(proxy: Address, target: Address) -> bytes:
    """The reply to a SOCKS request the server's rules refuse."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(client_request(target))
    answer = await reader.read(-1)  # the reply, then a clean close
    writer.close()
    return answer


async def carry(server: Logged, client: Logged, echo: int) -> dict[str, str]:
    """Data through each of the client's -L, -R and -D; returns what each carried, and
    what the refusal of a SOCKS target outside allow_connect came to."""
    await client.wait_for(r"tunnel=\S+ tunnel up", count=4)
    listening = {
        m[1]: Address.parse(m[2])
        for m in await client.wait_for(r"tunnel=(\S+) listening on (\S+)", count=2)
    }
    remote = (await client.wait_for(r"tunnel=(R-\S+) tunnel up: .*server listening on (\S+)"))[0]
    reverse = (await client.wait_for(r"tunnel=RD-\S+ tunnel up: .*server listening on (\S+)"))[0]
    echoed = await socks_roundtrip(Address.parse(reverse[1]), Address(LOCAL, echo))
    results = {"RD": "ok" if echoed == b"ping through socks" else repr(echoed)}
    for name, entry in [*listening.items(), (remote[1], Address.parse(remote[2]))]:
        if name.startswith("D-"):
            echoed = await socks_roundtrip(entry, Address(LOCAL, echo))
            results[name[0]] = "ok" if echoed == b"ping through socks" else repr(echoed)
            refused = await socks_refused(entry, Address(LOCAL, 9))  # not in allow_connect
            results["refused"] = refused[2:4].hex()  # after 0500 (no auth): 0502, not allowed
            await server.wait_for(r"not opened: client 'default' may not connect to 127.0.0.1:9")
            await client.wait_for(r"refused by the other side: .*not in allow_connect")
            key = "aiowstunnel_stream_open_failures_total"
            results["server_metric"] = scrape(server).get(
                (
                    key,
                    frozenset({"client": "default", "tunnel": name, "reason": "forbidden"}.items()),
                ),
                0,
            )
            results["client_metric"] = scrape(client).get(
                (key, frozenset({"tunnel": name, "reason": "peer_refused"}.items())), 0
            )
        else:
            sent, received = await echo_roundtrip(entry, 1 << 20)
            results[name[0]] = "ok" if sent == received else "corrupt"
    return results


@pytest.mark.timeout(90)
async def test_one_liners_carry_data_like_their_printed_config(tmp_path) -> None:
    echo = await start_backend()
    token = tmp_path / "token"
    code, out, _ = await run_tool(AIOWSTUNNEL, "token")
    assert code == 0 and re.fullmatch(rb"[A-Za-z0-9_-]{43}\n", out), out  # 256 bits, base64url
    token.write_bytes(out)
    token.chmod(0o600)
    server_flags = [
        "--listen", f"{LOCAL}:0", "--token-file", str(token),
        "--allow-connect", f"{LOCAL}:{echo.port}", "--allow-listen", f"{LOCAL}:*",
        "--metrics", f"{LOCAL}:0",
    ]  # fmt: skip
    client_flags = [
        "--token-file", str(token),
        "-L", f"0:{LOCAL}:{echo.port}", "-R", f"0:{LOCAL}:{echo.port}", "-D", "0",
        "-R", "0", "--allow-connect", f"{LOCAL}:{echo.port}",
        "--metrics", f"{LOCAL}:0",
    ]  # fmt: skip

    async def both(server_argv: list[str], client_argv_of) -> dict[str, str]:
        server = await Logged(*server_argv).start()
        client = None
        try:
            port = (await server.wait_for(r"tunnel server listening on ws://\S+:(\d+)/"))[0][1]
            client = await Logged(*client_argv_of(port)).start()
            return await carry(server, client, echo.port)
        finally:
            if client is not None:
                await client.stop()
            await server.stop()

    def client_oneliner(port: str) -> list[str]:
        return [AIOWSTUNNEL, "client", f"ws://{LOCAL}:{port}/aiowstunnel", *client_flags]

    by_flags = await both([AIOWSTUNNEL, "server", *server_flags], client_oneliner)
    assert by_flags == {
        "L": "ok", "R": "ok", "D": "ok", "RD": "ok",
        "refused": "0502", "server_metric": 1.0, "client_metric": 1.0,
    }  # fmt: skip

    # the printed TOML: accepted by check, and run by `run -c` with the same result
    code, server_toml, err = await run_tool(AIOWSTUNNEL, "server", *server_flags, "--print-config")
    assert code == 0, err
    (tmp_path / "server.toml").write_bytes(server_toml)

    def client_from_file(port: str) -> list[str]:
        # the server's port is known only now: print the client's config for it
        import subprocess

        text = subprocess.run(
            [*client_oneliner(port), "--print-config"], capture_output=True, check=True
        ).stdout
        (tmp_path / "client.toml").write_bytes(text)
        return [AIOWSTUNNEL, "run", "-c", str(tmp_path / "client.toml")]

    by_file = await both(
        [AIOWSTUNNEL, "run", "-c", str(tmp_path / "server.toml")], client_from_file
    )
    assert by_file == by_flags
    for name in ("server.toml", "client.toml"):
        code, out, err = await run_tool(AIOWSTUNNEL, "check", "-c", str(tmp_path / name))
        assert code == 0 and b"OK" in out, err
    echo.server.close()


def test_forward_flags_parse_like_ssh() -> None:
    assert Forward.parse("-L", "8080:db:5432") == Forward("connect", "127.0.0.1:8080", "db:5432")
    assert Forward.parse("-L", "0.0.0.0:8080:[::1]:80") == Forward(
        "connect", "0.0.0.0:8080", "[::1]:80"
    )
    assert Forward.parse("-R", "8022:127.0.0.1:22") == Forward(
        "listen", "127.0.0.1:8022", "127.0.0.1:22"
    )
    assert Forward.parse("-D", "[::1]:1080") == Forward("socks5", "[::1]:1080", None)
    assert Forward.parse("-R", "1080") == Forward("reverse-socks5", "127.0.0.1:1080", None)
    assert Forward.parse("-L", "unix:/run/a.sock:127.0.0.1:80").listen == "unix:/run/a.sock"
    assert Forward.parse("-R", "9000:unix:/run/b.sock").connect == "unix:/run/b.sock"
    for flag, bad in (("-L", "8080"), ("-L", "a:b:c:d:e"), ("-D", "a:b:c"), ("-L", "[::1:1:h:1")):
        with pytest.raises(ValueError, match=re.escape(flag)):
            Forward.parse(flag, bad)


def test_udp_forwards_are_udp_tunnels_in_the_printed_config() -> None:
    udp = Forward.parse("-L", "udp:5353:127.0.0.1:53")
    assert udp == Forward("connect", "127.0.0.1:5353", "127.0.0.1:53", protocol="udp")
    both = Forward.parse("-R", "tcp+udp:0.0.0.0:5353:127.0.0.1:53")
    assert (both.mode, both.protocol, both.name) == ("listen", "tcp+udp", "R-5353-tcpudp")
    tcp = Forward.parse("-L", "5353:127.0.0.1:53")
    text = client_toml(url="ws://127.0.0.1:1", token_file="t", forwards=[tcp, udp, both])
    config = load_config(text, Path("/"), read_secret=lambda path: "token")
    assert [(t.name, t.protocol.value) for t in config.tunnels] == [
        ("L-5353", "tcp"),  # a TCP and a UDP forward may share a port: not a clash
        ("L-5353-udp", "udp"),
        ("R-5353-tcpudp", "tcp+udp"),
    ]
    for flag, bad in (("-D", "udp:1080"), ("-R", "udp:1080")):
        with pytest.raises(ValueError, match="udp"):
            Forward.parse(flag, bad)


async def test_bad_flags_are_named(tmp_path) -> None:
    code, _, err = await run_tool(
        AIOWSTUNNEL, "client", "ws://h:1", "--token-file", str(tmp_path / "missing"), "-L", "1:h:2"
    )
    assert code == 2 and b"token_file" in err and b"no such file" in err, err
    code, _, err = await run_tool(AIOWSTUNNEL, "client", "ws://h:1", "--token-file", "t")
    assert code == 2 and b"at least one -L, -R or -D" in err, err
    token = tmp_path / "t"
    token.write_text("tok\n")
    code, _, err = await run_tool(
        AIOWSTUNNEL, "server", "--listen", "nope", "--token-file", str(token)
    )
    assert code == 2 and b"<command line>: server.listen: 'nope'" in err, err


@pytest.mark.timeout(60)
async def test_tls_one_liners(tmp_path) -> None:
    """--tls-cert/--tls-key and --ca-file: wss:// from flags, and check accepts the files."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "key.pem").chmod(0o600)
    token = tmp_path / "token"
    token.write_text("tls-one-liner-token\n")
    token.chmod(0o600)
    echo = await start_backend()
    server = await Logged(
        AIOWSTUNNEL, "server", "--listen", f"{LOCAL}:0", "--token-file", str(token),
        "--allow-connect", f"{LOCAL}:{echo.port}",
        "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
    ).start()  # fmt: skip
    client = None
    try:
        port = (await server.wait_for(r"tunnel server listening on wss://\S+:(\d+)/"))[0][1]
        argv = [
            AIOWSTUNNEL, "client", f"wss://{LOCAL}:{port}/aiowstunnel", "--token-file",
            str(token), "--ca-file", str(tmp_path / "ca.pem"), "-L", f"0:{LOCAL}:{echo.port}",
        ]  # fmt: skip
        client = await Logged(*argv).start()
        await client.wait_for(r"tunnel=L-0 tunnel up")
        entry = Address.parse((await client.wait_for(r"listening on (\S+)"))[0][1])
        sent, received = await echo_roundtrip(entry, 1 << 20)
        assert sent == received
        code, text, err = await run_tool(*argv, "--print-config")
        assert code == 0 and b"ca_file" in text, err
        (tmp_path / "client.toml").write_bytes(text)
        code, out, err = await run_tool(AIOWSTUNNEL, "check", "-c", str(tmp_path / "client.toml"))
        assert code == 0 and b"OK" in out, err
    finally:
        if client is not None:
            await client.stop()
        await server.stop()
        echo.server.close()
