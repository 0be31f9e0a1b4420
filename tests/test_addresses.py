"""Tests for aiowstunnel/addresses.py: host:port parsing and allow rules, as tables."""

from __future__ import annotations

import ipaddress

import pytest

from aiowstunnel.addresses import Address, AddressRule, Endpoint, ip_or_none
from aiowstunnel.errors import AddressError, TunnelError

# -- Address.parse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("[::1]:9000", "::1", 9000),
        ("[2001:db8::17]:443", "2001:db8::17", 443),
        ("[fe80::1%eth0]:22", "fe80::1%eth0", 22),
        ("example.com:443", "example.com", 443),
        ("db-1.internal:5432", "db-1.internal", 5432),
        ("localhost:1", "localhost", 1),
        ("host:65535", "host", 65535),
        ("host:0080", "host", 80),
        (":9100", "", 9100),  # empty host: all interfaces
        ("  host:22\n", "host", 22),
    ],
)
def test_address_parses(text: str, host: str, port: int) -> None:
    assert Address.parse(text) == Address(host, port)


@pytest.mark.parametrize("text", ["host:0", ":0", "[::]:0", "0.0.0.0:0"])
def test_port_0_only_with_allow_zero_port(text: str) -> None:
    assert Address.parse(text, allow_zero_port=True).port == 0
    with pytest.raises(AddressError, match="port 0 is out of range"):
        Address.parse(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("host", "expected 'host:port'"),
        ("", "expected 'host:port'"),
        ("host:", "port '' is not a number"),
        ("host:http", "port 'http' is not a number"),
        ("host:-1", "port '-1' is not a number"),
        ("host:+80", "port '\\+80' is not a number"),
        ("host: 80", "port ' 80' is not a number"),
        ("host:65536", "port 65536 is out of range"),
        ("host:99999999", "port 99999999 is out of range"),
        ("::1:80", "an IPv6 address must be in brackets"),
        ("2001:db8::1:443", "an IPv6 address must be in brackets"),
        ("[::1]", "expected '\\[ipv6\\]:port'"),
        ("[::1]80", "expected '\\[ipv6\\]:port'"),
        ("[::1:80", "expected '\\[ipv6\\]:port'"),
        ("[::1]:", "port '' is not a number"),
        ("10.0.0.0/8:80", "not a host"),
        ("[[::1]:80", "not a host"),
    ],
)
def test_address_errors_name_the_text(text: str, match: str) -> None:
    with pytest.raises(AddressError, match=match) as info:
        Address.parse(text)
    assert repr(text.strip()) in str(info.value)


def test_address_error_is_a_value_error_and_a_tunnel_error() -> None:
    with pytest.raises(ValueError):
        Address.parse("nope")
    assert issubclass(AddressError, TunnelError)


@pytest.mark.parametrize(
    "text",
    [
        "host:²",  # str.isdigit() is true for superscripts, int() refuses them
        "host:" + "9" * 5000,  # int() refuses more than 4300 digits (Python >= 3.11)
        "host:٨٠",  # Arabic-Indic digits: isdigit() and int() accept them (port 80)
    ],
    ids=["superscript", "5000-digits", "arabic-indic"],
)
def test_port_must_be_ascii_digits(text: str) -> None:
    with pytest.raises(AddressError, match=r"is not a number|out of range"):
        Address.parse(text)


@pytest.mark.parametrize(
    ("address", "text", "bind_host"),
    [
        (Address("127.0.0.1", 80), "127.0.0.1:80", "127.0.0.1"),
        (Address("::1", 9000), "[::1]:9000", "::1"),
        (Address("example.com", 443), "example.com:443", "example.com"),
        (Address("", 9100), ":9100", None),
    ],
)
def test_address_str_round_trips(address: Address, text: str, bind_host: str | None) -> None:
    assert str(address) == text
    assert Address.parse(text) == address
    assert address.bind_host == bind_host


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("10.0.0.1", ipaddress.IPv4Address("10.0.0.1")),
        ("::1", ipaddress.IPv6Address("::1")),
        ("example.com", None),
        ("", None),
        ("10.0.0.0/8", None),
    ],
)
def test_ip_or_none(host: str, ip) -> None:
    assert ip_or_none(host) == ip


# -- AddressRule.parse --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hostname", "network", "low", "high"),
    [
        ("10.0.0.0/8:22", None, "10.0.0.0/8", 22, 22),
        ("10.1.2.3/8:22", None, "10.0.0.0/8", 22, 22),  # host bits are forgiven
        ("192.0.2.7:80", None, "192.0.2.7/32", 80, 80),
        ("[2001:db8::/32]:443", None, "2001:db8::/32", 443, 443),
        ("[::1]:8000-8100", None, "::1/128", 8000, 8100),
        ("srv:8000-8100", "srv", None, 8000, 8100),
        ("Example.COM.:80", "example.com", None, 80, 80),
        ("under_score.local:1-1", "under_score.local", None, 1, 1),
        ("*:443", None, None, 443, 443),
        ("*:*", None, None, 0, 65535),  # 0 too: LISTEN on port 0 asks for any free port
        (":443", None, None, 443, 443),
    ],
)
def test_rule_parses(
    text: str, hostname: str | None, network: str | None, low: int, high: int
) -> None:
    rule = AddressRule.parse(text)
    assert rule.hostname == hostname
    assert rule.network == (None if network is None else ipaddress.ip_network(network))
    assert (rule.port_low, rule.port_high) == (low, high)
    assert rule.any_host == (hostname is None and network is None)
    assert str(rule) == text


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("srv", "expected 'host:port'"),
        ("srv:8100-8000", "port range 8100-8000 is empty"),
        ("srv:0", "port 0 is out of range"),
        ("srv:0-10", "port 0 is out of range"),
        ("srv:80-", "port '' is not a number"),
        ("srv:-80", "port '' is not a number"),
        ("srv:1-2-3", "port '2-3' is not a number"),
        ("srv:70000", "port 70000 is out of range"),
        ("srv:any", "port 'any' is not a number"),
        ("bad host!:80", "'bad host!' is neither a host name, an IP nor a CIDR"),
        ("a..b:80", "is neither"),
        ("-lead.example:80", "is neither"),
        ("a" * 64 + ".example:80", "is neither"),
        ("10.0.0.0/33:80", "is neither"),
        ("srv/24:80", "is neither"),
        ("::1:80", "must be in brackets"),
    ],
)
def test_rule_errors_name_the_rule(text: str, match: str) -> None:
    with pytest.raises(AddressError, match=match) as info:
        AddressRule.parse(text)
    assert repr(text) in str(info.value)


# -- AddressRule.matches / matches_ip -----------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "host", "port", "expected"),
    [
        # IPv4 CIDR, and the same addresses written as IPv4-mapped IPv6
        ("10.0.0.0/8:22", "10.1.2.3", 22, True),
        ("10.0.0.0/8:22", "10.255.255.255", 22, True),
        ("10.0.0.0/8:22", "11.0.0.1", 22, False),
        ("10.0.0.0/8:22", "10.1.2.3", 23, False),
        ("10.0.0.0/8:22", "::ffff:10.1.2.3", 22, True),
        ("10.0.0.0/8:22", "::ffff:11.0.0.1", 22, False),
        ("10.0.0.0/8:22", "::1", 22, False),
        ("127.0.0.1:80", "127.0.0.1", 80, True),
        ("127.0.0.1:80", "127.0.0.2", 80, False),
        # IPv6 CIDR
        ("[2001:db8::/32]:443", "2001:db8::5", 443, True),
        ("[2001:db8::/32]:443", "2001:DB8:0:0::5", 443, True),
        ("[2001:db8::/32]:443", "2001:db9::1", 443, False),
        ("[2001:db8::/32]:443", "10.0.0.1", 443, False),
        ("[::/0]:443", "::ffff:10.0.0.1", 443, True),
        # port ranges, inclusive
        ("srv:8000-8100", "srv", 8000, True),
        ("srv:8000-8100", "srv", 8100, True),
        ("srv:8000-8100", "srv", 7999, False),
        ("srv:8000-8100", "srv", 8101, False),
        # names: case-insensitive, trailing dot ignored, otherwise exact
        ("srv:8000-8100", "SRV", 8050, True),
        ("srv:8000-8100", "srv.", 8050, True),
        ("Example.COM:80", "example.com", 80, True),
        ("example.com:80", "EXAMPLE.com.", 80, True),
        ("example.com:80", "www.example.com", 80, False),
        ("example.com:80", "example.co", 80, False),
        ("srv:80", "srv2", 80, False),
        # a name rule never matches an IP, an IP rule never matches a name
        ("localhost:80", "127.0.0.1", 80, False),
        ("localhost:80", "::1", 80, False),
        ("127.0.0.1:80", "localhost", 80, False),
        ("0.0.0.0/0:80", "example.com", 80, False),
        ("[::/0]:80", "example.com", 80, False),
        # any host
        ("*:443", "anything.example", 443, True),
        ("*:443", "10.0.0.1", 443, True),
        ("*:443", "::1", 443, True),
        ("*:443", "anything.example", 80, False),
        ("*:*", "x", 0, True),
        ("*:*", "x", 65535, True),
        (":443", "10.0.0.1", 443, True),
    ],
)
def test_rule_matches(rule: str, host: str, port: int, expected: bool) -> None:
    assert AddressRule.parse(rule).matches(host, port) is expected


@pytest.mark.parametrize(
    ("rule", "ip", "port", "expected"),
    [
        ("10.0.0.0/8:22", "10.9.9.9", 22, True),
        ("10.0.0.0/8:22", "::ffff:10.9.9.9", 22, True),
        ("10.0.0.0/8:22", "10.9.9.9", 23, False),
        ("10.0.0.0/8:22", "192.168.1.1", 22, False),
        ("[2001:db8::/32]:22", "2001:db8::1", 22, True),
        ("[2001:db8::/32]:22", "10.0.0.1", 22, False),
        ("[::/0]:22", "10.0.0.1", 22, False),
        ("srv:22", "10.0.0.1", 22, False),  # a name rule never matches a resolved address
        ("localhost:22", "127.0.0.1", 22, False),
        ("*:22", "10.0.0.1", 22, True),
        ("*:22", "2001:db8::1", 22, True),
        ("*:22", "10.0.0.1", 21, False),
    ],
)
def test_rule_matches_ip(rule: str, ip: str, port: int, expected: bool) -> None:
    assert AddressRule.parse(rule).matches_ip(ipaddress.ip_address(ip), port) is expected


# -- Endpoint.parse: a tunnel server's URL, parsed once ----------------------------------------


@pytest.mark.parametrize(
    ("text", "secure", "host", "port", "path", "url"),
    [
        ("ws://[::1]:9000", False, "::1", 9000, "/dflt", "ws://[::1]:9000/dflt"),
        ("wss://Host2/tunnels/x", True, "host2", 443, "/tunnels/x", "wss://host2:443/tunnels/x"),
        ("ws://h", False, "h", 80, "/dflt", "ws://h:80/dflt"),
        ("ws://h:81/p?k=v", False, "h", 81, "/p?k=v", "ws://h:81/p?k=v"),  # the query is sent
        ("ws://h:81?k=v", False, "h", 81, "/dflt?k=v", "ws://h:81/dflt?k=v"),
        # an IRI becomes a URI, as websockets makes it: IDNA host, percent-encoded path
        (
            "wss://bücher.example/tü",
            True,
            "xn--bcher-kva.example",
            443,
            "/t%C3%BC",
            "wss://xn--bcher-kva.example:443/t%C3%BC",
        ),
    ],
)
def test_endpoint_parses_once_into_its_parts(
    text: str, secure: bool, host: str, port: int, path: str, url: str
) -> None:
    endpoint = Endpoint.parse(text, "/dflt")
    assert (endpoint.secure, endpoint.host, endpoint.port, endpoint.path) == (
        secure,
        host,
        port,
        path,
    )
    assert endpoint.url == str(endpoint) == url
    assert endpoint.address == Address(host, port)
    assert endpoint.scheme == ("wss" if secure else "ws")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://h:1", "'http://h:1': expected a ws:// or wss:// URL"),
        ("wss://:9000/x", "'wss://:9000/x': the URL has no host"),
        ("ws://h:99999", "'ws://h:99999': Port out of range"),
        ("ws://h:0", "'ws://h:0': port 0 is not a server port"),
        ("wss://u:p@h/", "'wss://u:p@h/': no credentials in the URL: use token_file"),
        ("ws://h/#frag", "'ws://h/#frag': a WebSocket URL has no #fragment"),
    ],
)
def test_endpoint_refuses_what_is_not_a_tunnel_server(text: str, message: str) -> None:
    with pytest.raises(AddressError) as info:
        Endpoint.parse(text, "/dflt")
    assert str(info.value).startswith(message)


def test_a_proxy_url_is_parsed_once_into_the_address_to_reach() -> None:
    from aiowstunnel.addresses import parse_proxy_url

    assert parse_proxy_url("http://proxy.example:8080") == Address("proxy.example", 8080)
    assert parse_proxy_url("http://[::1]") == Address("::1", 3128)  # the default port
    for bad, why in [
        ("socks5://p:1080", "expected an http://host:port URL"),
        ("http://u:pw@p:3128", "proxy credentials are not supported"),
        ("http://p:3128/x", "with no path"),
        ("http://p:0", "port 0 is not a proxy port"),
    ]:
        with pytest.raises(AddressError, match=why):
            parse_proxy_url(bad)
