"""wss:// with a test CA, and mutual TLS that refuses a client without a certificate."""

from __future__ import annotations

import ssl

import pytest
import trustme

import aiowstunnel

from .conftest import echo_roundtrip, wait_for_count


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


def client_context(ca: trustme.CA, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if with_cert:
        ca.issue_cert("branch-office").configure_cert(context)
    return context


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", [aiowstunnel.CONNECT, aiowstunnel.LISTEN], ids=str)
async def test_wss_carries_data(make_tunnel, echo_backend, ca, mode):
    tunnel = await make_tunnel(
        mode,
        echo_backend.port,
        server_kw={"ssl": server_context(ca, False)},
        client_kw={"ssl": client_context(ca, False)},
    )
    assert tunnel.client.url.startswith("wss://")
    sent, received = await echo_roundtrip(tunnel.entry, 4 << 20)
    assert sent == received


@pytest.mark.timeout(30)
async def test_untrusted_server_certificate_is_refused(make_tunnel, echo_backend, ca):
    other_ca = trustme.CA()
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"ssl": server_context(other_ca, False)},
        client_kw={"ssl": client_context(ca, False)},
        wait=False,
    )
    await wait_for_count(tunnel.client.stats.connect_failures, "tls", 1)
    assert "CERTIFICATE_VERIFY_FAILED" in tunnel.client.last_error


@pytest.mark.timeout(30)
async def test_mutual_tls_accepts_client_with_certificate(make_tunnel, echo_backend, ca):
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"ssl": server_context(ca, True)},
        client_kw={"ssl": client_context(ca, True)},
    )
    sent, received = await echo_roundtrip(tunnel.entry, 1 << 20)
    assert sent == received


@pytest.mark.timeout(30)
async def test_mutual_tls_refuses_client_without_certificate(make_tunnel, echo_backend, ca):
    tunnel = await make_tunnel(
        aiowstunnel.CONNECT,
        echo_backend.port,
        server_kw={"ssl": server_context(ca, True)},
        client_kw={"ssl": client_context(ca, False)},
        wait=False,
    )
    # TLS 1.3: the server checks the client's certificate after the client thinks the
    # handshake is done, so the client sees the connection closed, not a TLS error.
    await wait_for_count(tunnel.client.stats.connect_failures, "connect", 2)
    assert "client certificate" in tunnel.client.last_error
    assert not tunnel.client.up
    assert tunnel.server.sessions == {}
    assert echo_backend.accepted == 0
