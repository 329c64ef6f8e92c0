"""The control API speaks TLS 1.3 and nothing else, read off the live connection."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from rustynet.adapters.http_api.tls import TlsConfigError, server_ssl_context

from tests.integration.http_server import running_api, throwaway_certificate
from tests.integration.tls_probe import assert_groups_and_alerts


def _host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


@pytest.mark.asyncio
async def test_server_negotiates_tls13(tmp_path: Path) -> None:
    """A default client ends up on TLS 1.3 (read from the live socket) and gets an answer."""
    async with running_api(tmp_path) as api:
        host, port = _host_port(api.base_url)
        reader, writer = await asyncio.open_connection(
            host, port, ssl=api.client_ssl, server_hostname=host
        )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            assert isinstance(ssl_object, ssl.SSLObject)
            assert ssl_object.version() == "TLSv1.3"
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status_line = await reader.readline()
            assert status_line.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


@pytest.mark.asyncio
async def test_client_capped_at_tls12_gets_a_protocol_version_alert(tmp_path: Path) -> None:
    """A client that cannot speak TLS 1.3 is refused in the handshake (no fallback) and is
    told why: the protocol_version alert reaches it instead of a bare close."""
    async with running_api(tmp_path) as api:
        host, port = _host_port(api.base_url)
        old_client = ssl.create_default_context(cadata=api.certificate.pem)
        old_client.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
            await asyncio.open_connection(host, port, ssl=old_client, server_hostname=host)
        # The server is still healthy after the refused handshake.
        _, writer = await asyncio.open_connection(
            host, port, ssl=api.client_ssl, server_hostname=host
        )
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


@pytest.mark.asyncio
async def test_control_server_key_exchange_follows_the_crypto_policy(tmp_path: Path) -> None:
    """openssl s_client against the live control API: ffdhe2048, ffdhe3072, X448, P-384 and
    P-521 alone are refused with handshake_failure, as is TLS_AES_128_GCM_SHA256 alone, and
    TLS 1.2 gets protocol_version; X25519 and P-256 complete a TLS 1.3 handshake."""
    async with running_api(tmp_path) as api:
        await assert_groups_and_alerts(*_host_port(api.base_url))


def test_server_context_pins_tls13_both_ways(tmp_path: Path) -> None:
    """The context itself: minimum and maximum version are both TLS 1.3."""
    cert = throwaway_certificate(tmp_path)
    context = server_ssl_context(cert.cert_path, cert.key_path)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3


def test_unloadable_key_is_a_config_error(tmp_path: Path) -> None:
    """A missing or mismatched key file is reported as TlsConfigError, not ssl internals."""
    cert = throwaway_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    other = throwaway_certificate(tmp_path / "other")
    with pytest.raises(TlsConfigError):
        server_ssl_context(cert.cert_path, other.key_path)
    with pytest.raises(TlsConfigError):
        server_ssl_context(tmp_path / "missing.crt", cert.key_path)
