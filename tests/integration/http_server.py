"""A live control API over real TLS on 127.0.0.1 for the HTTP integration tests.

`throwaway_certificate(dir)` makes a self-signed ECDSA P-256 certificate for 127.0.0.1 with
`cryptography` (test-only; production certificates come from bootstrap). `running_api(...)`
serves `create_app(service)` through `make_runner` + `TCPSite` exactly as `serve` does, with
the real `SqliteStore`, and yields the base URL and a client SSL context that trusts only that
certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import yarl
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

from rustynet.application.control import (
    ControlService,
    ControlSettings,
    create_initial_admin_key,
)
from rustynet.application.control_keys import create_control_keys
from rustynet.domain.credentials import CredentialId
from rustynet.domain.enrollment import EnrollmentClient, IssueChallenge
from rustynet.domain.errors import DecodeError
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.key_hierarchy import issue_tunnel_key_binding
from rustynet.domain.keys import (
    SigningKey,
    TunnelKeyScheme,
    TunnelPrivateKey,
    b64decode,
    b64encode,
)
from rustynet.domain.limits import BucketPolicy, LimitPolicy
from rustynet.domain.netmap import PeerMapAcceptor, PeerMapTrust, RelayEntry
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
    admin_key: str = attrs.field(repr=False)

    def admin_headers(self) -> dict[str, str]:
        """Authorization for the initial admin key."""
        return {"Authorization": f"Bearer {self.admin_key}"}


def build_service(
    store: Store,
    control_url: str,
    limits: LimitPolicy | None = None,
    relays: tuple[RelayEntry, ...] = (),
    audit_fold_window: timedelta | None = None,
    admin_per_ip: BucketPolicy | None = None,
    long_poll_timeout: timedelta | None = None,
) -> ControlService:
    """The service as the composition root builds it (fresh keys, system clock and entropy)."""
    entropy = OsEntropy()
    clock = SystemClock()
    keys, _entries = create_control_keys(entropy, clock.now())
    settings = ControlSettings(
        control_url=control_url,
        tls_spki_sha256=bytes(32),
        limits=limits or LimitPolicy(),
        relays=relays,
    )
    if audit_fold_window is not None:
        settings = attrs.evolve(settings, audit_fold_window=audit_fold_window)
    if admin_per_ip is not None:
        settings = attrs.evolve(settings, admin_per_ip=admin_per_ip)
    if long_poll_timeout is not None:
        settings = attrs.evolve(settings, long_poll_timeout=long_poll_timeout)
    return ControlService(store, keys, clock, entropy, settings)


# Room for load tests from one address (127.0.0.1): the defaults allow 20 requests per IP.
GENEROUS_LIMITS = LimitPolicy(
    per_ip=BucketPolicy(burst=10_000, refill=10_000, per=timedelta(minutes=1)),
    per_identity=BucketPolicy(burst=10_000, refill=10_000, per=timedelta(minutes=1)),
    auth_failures_per_ip=BucketPolicy(burst=10_000, refill=10_000, per=timedelta(minutes=1)),
)


@contextlib.asynccontextmanager
async def running_api(
    tmp_path: Path,
    *,
    store: Store | None = None,
    settings: ApiSettings | None = None,
    limits: LimitPolicy | None = None,
    relays: tuple[RelayEntry, ...] = (),
    audit_fold_window: timedelta | None = None,
    admin_per_ip: BucketPolicy | None = None,
    long_poll_timeout: timedelta | None = None,
) -> AsyncIterator[LiveApi]:
    """Serve the control API over TLS 1.3 on 127.0.0.1 (an OS-chosen port) until exit."""
    certificate = throwaway_certificate(tmp_path)
    store = store if store is not None else SqliteStore(tmp_path / "control.db")
    await store.open()
    # The control URL (token audience) is only known once the port is; bind first.
    runner: web.AppRunner | None = None
    try:
        service = build_service(
            store,
            "https://127.0.0.1",
            limits,
            relays,
            audit_fold_window,
            admin_per_ip,
            long_poll_timeout,
        )
        admin = await create_initial_admin_key(
            store, now=service.clock.now(), entropy=service.entropy, keys=service.keys
        )
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
            admin_key=admin.key,
        )
    finally:
        if runner is not None:
            await runner.cleanup()
        await store.close()


# --- a simulated node speaking HTTP ------------------------------------------------------------


@attrs.frozen
class EnrollAttempt:
    """What one simulated node got back: final status and body, and its identity key."""

    status: int
    body: Any
    identity: SigningKey = attrs.field(repr=False)
    retry_after: str | None = None


async def enroll_over_http(
    http: aiohttp.ClientSession, join_text: str, hostname: str
) -> EnrollAttempt:
    """Enroll a fresh simulated node: POST /v1/enroll, sign the challenge, POST complete.

    Returns the first non-200 answer, or the 200 of /v1/enroll/complete.
    """
    entropy = OsEntropy()
    now = datetime.now(UTC)
    identity = SigningKey.generate(entropy)
    tunnel = TunnelPrivateKey.generate(entropy, TunnelKeyScheme.X25519).public_key
    binding = issue_tunnel_key_binding(identity, tunnel, now)
    client = EnrollmentClient(identity, tunnel, hostname)
    try:
        token = JoinToken.parse(join_text)
    except DecodeError:  # a garbage token: the server refuses it before any challenge
        client.start(CredentialId.generate(entropy).to_text())
    else:
        client.start(token.token_id.to_text())
        token.wipe()
    body = {
        "join_secret": join_text,
        "identity_key": identity.public_key.to_text(),
        "tunnel_key": tunnel.to_text(),
        "tunnel_key_binding": binding.to_text(),
        "hostname": hostname,
    }
    async with http.post("/v1/enroll", json=body) as response:
        challenge = await response.json()
        if response.status != 200:
            retry_after = response.headers.get("Retry-After")
            return EnrollAttempt(response.status, challenge, identity, retry_after)
    expires_at = datetime.fromisoformat(challenge["expires_at"].replace("Z", "+00:00"))
    proof = client.receive(IssueChallenge(b64decode(challenge["challenge_id"]), expires_at))
    assert proof is not None
    complete = {"challenge_id": challenge["challenge_id"], "signature": b64encode(proof.signature)}
    async with http.post("/v1/enroll/complete", json=complete) as response:
        return EnrollAttempt(response.status, await response.json(), identity)


def forged_join_tokens(join_text: str) -> tuple[str, str]:
    """Two refused variants of a real token: same id with a wrong secret, and an unknown id
    (both well formed, with valid check bytes)."""
    real = JoinToken.parse(join_text)
    entropy = OsEntropy()
    try:
        wrong = JoinToken(
            control_url=real.control_url,
            root_fingerprint=real.root_fingerprint,
            tls_spki_sha256=real.tls_spki_sha256,
            token_id=real.token_id,
            secret=bytearray(entropy.token_bytes(32)),
        )
        unknown = JoinToken.create(
            control_url=real.control_url,
            root_fingerprint=real.root_fingerprint,
            tls_spki_sha256=real.tls_spki_sha256,
            entropy=entropy,
        )
        return wrong.to_text(), unknown.to_text()
    finally:
        real.wipe()


def peer_map_acceptor(join_text: str, result: Any) -> PeerMapAcceptor:
    """The node-side verifier for peer maps, pinned by the join token's root fingerprint."""
    token = JoinToken.parse(join_text)
    try:
        trust = PeerMapTrust.from_texts(
            result["trust"]["root_certificate"],
            token.root_fingerprint,
            tuple(result["trust"]["signing_certificates"]),
            datetime.now(UTC),
        )
    finally:
        token.wipe()
    return PeerMapAcceptor(trust, result["node_id"])


def node_headers(result: Any) -> dict[str, str]:
    """Node-route credentials from an enrollment result."""
    return {
        "Authorization": f"Bearer {result['access_token']}",
        "Rustynet-Node": result["node_id"],
    }


@contextlib.asynccontextmanager
async def tls_connection(
    base_url: str, context: ssl.SSLContext
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw TLS connection to the server at `base_url` (for bytes no HTTP client would send)."""
    url = yarl.URL(base_url)
    assert url.host is not None
    assert url.port is not None
    reader, writer = await asyncio.open_connection(
        url.host, url.port, ssl=context, server_hostname=url.host
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
