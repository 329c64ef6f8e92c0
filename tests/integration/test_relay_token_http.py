"""`POST /v1/relay-token` and the relay list over real HTTPS (TLS 1.3, SQLite), end to end
through the node's pinned `ControlClient` and the `HttpControlPlane` adapter: a token that
verifies at the named relay, 404 for an unknown relay, 400 for a malformed body, 401 once the
node is revoked, and a peer map whose verified relay list is the configured one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs locked
from rustynet.adapters.control_client import ControlClient, spki_pin_of_certificate
from rustynet.adapters.control_plane_http import HttpControlPlane
from rustynet.adapters.http_api.handlers import openapi_document

from rustynet.application.control_types import AdminAuth
from rustynet.domain.key_hierarchy import verify_certificate
from rustynet.domain.keys import VerifyKey
from rustynet.domain.netmap import PeerMapAcceptor, RelayEntry
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.tokens import InvalidToken, TokenKind, key_allowlist, verify_token
from rustynet.ports.control_plane import ControlRejected, NodeCredentials, is_revocation
from tests.integration.http_server import (
    LiveApi,
    enroll_over_http,
    node_headers,
    peer_map_acceptor,
    running_api,
)

ISSUER = "https://127.0.0.1"  # the control URL running_api gives the service
RELAYS = (
    RelayEntry("relay-1", "wss://198.51.100.40:443/v1/relay", SpkiPin(bytes(range(32)))),
    RelayEntry("relay-2", "wss://relay2.example.net:8443/v1/relay", SpkiPin(bytes(32))),
)
SCHEMAS: dict[str, Any] = json.loads(openapi_document())["components"]["schemas"]


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[LiveApi]:
    """A live API over TLS 1.3 with two relays configured."""
    async with running_api(tmp_path, relays=RELAYS) as live:
        yield live


def _pin(api: LiveApi) -> SpkiPin:
    der = x509.load_pem_x509_certificate(api.certificate.pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    return spki_pin_of_certificate(der)


async def _enrolled(api: LiveApi) -> tuple[dict[str, Any], PeerMapAcceptor]:
    """A node enrolled over HTTPS: its enrollment result and its peer-map acceptor."""
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as http:
        async with http.post(
            "/v1/admin/join-keys", json={"ttl_seconds": 600}, headers=api.admin_headers()
        ) as response:
            created = await response.json()
        enrolled = await enroll_over_http(http, created["token"], "relay-node")
    assert enrolled.status == 200
    return enrolled.body, peer_map_acceptor(created["token"], enrolled.body)


def _verify_at(relay_id: str, token: str, acceptor: PeerMapAcceptor, identity: str) -> str:
    """Verify as relay `relay_id` does: keys only from certificates chaining to the root."""
    now = datetime.now(UTC)
    for certificate in acceptor.trust.signing_certificates:
        verify_certificate(certificate, acceptor.trust.root, now)
    claims = verify_token(
        token,
        keys=key_allowlist(c.subject for c in acceptor.trust.signing_certificates),
        audience=relay_id,
        issuer=ISSUER,
        bound_identity=VerifyKey.from_text(identity),
        now=now,
        kind=TokenKind.RELAY,
    )
    return claims.subject


@pytest.mark.asyncio
async def test_relay_token_over_https_through_the_node_client(api: LiveApi) -> None:
    """HttpControlPlane.relay_token gets a token that verifies at relay-1 for this node only;
    the raw answer matches the OpenAPI schema; the verified peer map lists both relays."""
    result, acceptor = await _enrolled(api)
    identity = (await api.service.get_node(_admin(api), result["node_id"])).identity_key
    auth = NodeCredentials(result["node_id"], result["access_token"])
    async with ControlClient(api.base_url, _pin(api)) as client:
        plane = HttpControlPlane(client)
        grant = await plane.relay_token(auth, "relay-1")
        assert grant.expires_at > datetime.now(UTC)
        assert _verify_at("relay-1", grant.token, acceptor, identity) == result["node_id"]
        with pytest.raises(InvalidToken):
            _verify_at("relay-2", grant.token, acceptor, identity)
        raw = await client.relay_token(auth, relay_id="relay-2")
        assert not list(Draft202012Validator(SCHEMAS["RelayToken"]).iter_errors(raw))
        delivery = await plane.peer_map(auth, 0, 0)
        assert delivery is not None
        peer_map = acceptor.accept(delivery.envelope, datetime.now(UTC))
        assert peer_map.relays == RELAYS


@pytest.mark.asyncio
async def test_unknown_relay_is_404_and_a_revoked_node_401_over_https(api: LiveApi) -> None:
    """An unknown relay id is `not_found`; after revocation the node's request is refused
    as a revocation (401)."""
    result, _ = await _enrolled(api)
    auth = NodeCredentials(result["node_id"], result["access_token"])
    async with ControlClient(api.base_url, _pin(api)) as client:
        plane = HttpControlPlane(client)
        with pytest.raises(ControlRejected) as unknown:
            await plane.relay_token(auth, "relay-9")
        assert (unknown.value.status, unknown.value.code) == (404, "not_found")
        await api.service.revoke_node(_admin(api), result["node_id"])
        with pytest.raises(ControlRejected) as revoked:
            await plane.relay_token(auth, "relay-1")
        assert is_revocation(revoked.value)


@pytest.mark.asyncio
async def test_malformed_relay_token_requests_are_refused(api: LiveApi) -> None:
    """Wrong type, unknown field, missing field: 400 with a pointer; no credentials: 401."""
    result, _ = await _enrolled(api)
    headers = node_headers(result)
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as http:
        for body, pointer in (
            ({"relay_id": 1}, "/relay_id"),
            ({"relay_id": "relay-1", "node_id": "x"}, "/node_id"),
            ({}, "/relay_id"),
        ):
            async with http.post("/v1/relay-token", json=body, headers=headers) as response:
                assert response.status == 400
                assert (await response.json())["pointer"] == pointer
        async with http.post("/v1/relay-token", json={"relay_id": "relay-1"}) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "unauthorized"


def _admin(api: LiveApi) -> AdminAuth:
    """The initial admin key, for calls straight into the service."""
    return AdminAuth(api_key=api.admin_key, client_ip="127.0.0.1")
