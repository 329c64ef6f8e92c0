"""A live control API over real TLS on 127.0.0.1 for the HTTP integration tests.

`throwaway_certificate(dir)` makes a self-signed ECDSA P-256 certificate for 127.0.0.1 with
`cryptography` (test-only; production certificates come from bootstrap). `running_api(...)`
serves `create_app(service)` through `make_runner` + `TCPSite` exactly as `serve` does, with
the real `SqliteStore`, and yields the base URL and a client SSL context that trusts only that
certificate.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.http_api.app import ApiSettings, create_app, make_runner
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.application.control import ControlService, ControlSettings
from rustynet.application.control_keys import create_control_keys
from rustynet.ports.store import Store

HOST = "127.0.0.1"


@attrs.frozen
class Certificate:
    """Paths of a throwaway certificate and key, and the certificate PEM."""

    cert_path: Path
    key_path: Path
    pem: str


def throwaway_certificate(directory: Path) -> Certificate:
    """Self-signed P-256 certificate with SAN IP 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rustynet-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_path = directory / "tls.crt"
    key_path = directory / "tls.key"
    cert_path.write_text(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Certificate(cert_path, key_path, pem)


def client_context(certificate: Certificate) -> ssl.SSLContext:
    """A client context that trusts only `certificate` (and checks the 127.0.0.1 SAN)."""
    return ssl.create_default_context(cadata=certificate.pem)


@attrs.frozen
class LiveApi:
    """A running API: where it listens, how to trust it, and what serves it."""

    base_url: str
    client_ssl: ssl.SSLContext
    service: ControlService
    store: Store
    app: web.Application
    certificate: Certificate


def build_service(store: Store, control_url: str) -> ControlService:
    """The service as the composition root builds it (fresh keys, system clock and entropy)."""
    entropy = OsEntropy()
    clock = SystemClock()
    keys, _entries = create_control_keys(entropy, clock.now())
    settings = ControlSettings(control_url=control_url, tls_spki_sha256=bytes(32))
    return ControlService(store, keys, clock, entropy, settings)


@contextlib.asynccontextmanager
async def running_api(
    tmp_path: Path,
    *,
    store: Store | None = None,
    settings: ApiSettings | None = None,
) -> AsyncIterator[LiveApi]:
    """Serve the control API over TLS 1.3 on 127.0.0.1 (an OS-chosen port) until exit."""
    certificate = throwaway_certificate(tmp_path)
    store = store if store is not None else SqliteStore(tmp_path / "control.db")
    await store.open()
    # The control URL (token audience) is only known once the port is; bind first.
    runner: web.AppRunner | None = None
    try:
        service = build_service(store, "https://127.0.0.1")
        app = create_app(service, settings or ApiSettings(tick_interval=None))
        runner = make_runner(app, shutdown_timeout=1.0)
        await runner.setup()
        ssl_context = server_ssl_context(certificate.cert_path, certificate.key_path)
        site = web.TCPSite(runner, HOST, 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        yield LiveApi(
            base_url=f"https://{HOST}:{port}",
            client_ssl=client_context(certificate),
            service=service,
            store=store,
            app=app,
            certificate=certificate,
        )
    finally:
        if runner is not None:
            await runner.cleanup()
        await store.close()
