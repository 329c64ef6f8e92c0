"""Relay tokens and relay discovery at the control plane, on MemoryStore and SqliteStore.

A relay token verifies the way a relay verifies it (docs/relay-protocol.md): offline, with keys
taken only from the signing certificates that chain to the pinned root, for kind relay, its own
relay id as audience, the control URL as issuer and the presenting node's identity key. Every
other audience, identity or kind is refused; unknown relays, bad credentials and revoked nodes
get no token; every node's peer map lists the configured relays, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from rustynet.adapters.control_plane_local import LocalControlPlane
from rustynet.adapters.storage.memory import MemoryStore
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.application.control_types import NodeAuth
from rustynet.application.errors import NotFoundError, Unauthorized
from rustynet.domain.key_hierarchy import verify_certificate
from rustynet.domain.keys import KeyFingerprint, VerifyKey
from rustynet.domain.netmap import RelayEntry
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.tokens import InvalidToken, TokenKind, key_allowlist, verify_token
from rustynet.ports.control_plane import (
    ControlRejected,
    NodeCredentials,
    is_revocation,
)
from rustynet.ports.store import Store
from rustynet.ports.wire.v1 import RelayToken, RelayTokenRequest
from tests.integration.test_control_service import URL, Node, World, enroll, make_world

RELAYS = (
    RelayEntry("relay-1", "wss://relay1.example.net:443/v1/relay", SpkiPin(bytes(range(32)))),
    RelayEntry("relay-2", "wss://198.51.100.40:8443/v1/relay", SpkiPin(bytes(32))),
)
OPEN_POLICY = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    """A control plane with two relays configured, over each store."""
    store: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "c.db")
    made = await make_world(store, relays=RELAYS)
    try:
        yield made
    finally:
        await store.close()


def relay_keys(node: Node, w: World) -> dict[KeyFingerprint, VerifyKey]:
    """What a relay trusts: the subjects of the signing certificates that chain to the root the
    node pinned (the relay is configured with that root's fingerprint), valid now."""
    trust = node.acceptor.trust
    for certificate in trust.signing_certificates:
        verify_certificate(certificate, trust.root, w.clock.now())
    return key_allowlist(c.subject for c in trust.signing_certificates)


def verify_at_relay(
    token: str,
    node: Node,
    w: World,
    *,
    relay_id: str = "relay-1",
    identity: VerifyKey | None = None,
    kind: TokenKind = TokenKind.RELAY,
) -> str:
    """Verify as relay `relay_id` would; returns the token's subject."""
    claims = verify_token(
        token,
        keys=relay_keys(node, w),
        audience=relay_id,
        issuer=URL,
        bound_identity=identity or node.identity.public_key,
        now=w.clock.now(),
        kind=kind,
    )
    return claims.subject


@pytest.mark.asyncio
async def test_relay_token_verifies_at_its_relay_for_its_node(world: World) -> None:
    """The token names the node, lives 120 s and verifies offline at the relay it names."""
    node = await enroll(world, "alpha")
    grant = await world.service.relay_token(node.auth(), RelayTokenRequest("relay-1"))
    assert grant.token.startswith("v4.public.")
    assert verify_at_relay(grant.token, node, world) == node.result.node_id
    claims = verify_token(
        grant.token,
        keys=relay_keys(node, world),
        audience="relay-1",
        issuer=URL,
        bound_identity=node.identity.public_key,
        now=world.clock.now(),
        kind=TokenKind.RELAY,
    )
    assert claims.expires_at == grant.expires_at
    assert claims.expires_at - claims.issued_at == timedelta(seconds=120)
    assert claims.scope == "forward"
    second = await world.service.relay_token(node.auth(), RelayTokenRequest("relay-2"))
    assert verify_at_relay(second.token, node, world, relay_id="relay-2") == node.result.node_id


@pytest.mark.asyncio
async def test_relay_token_is_refused_by_another_relay(world: World) -> None:
    """A token for relay-1 presented at relay-2 does not verify."""
    node = await enroll(world, "alpha")
    grant = await world.service.relay_token(node.auth(), RelayTokenRequest("relay-1"))
    with pytest.raises(InvalidToken):
        verify_at_relay(grant.token, node, world, relay_id="relay-2")


@pytest.mark.asyncio
async def test_relay_token_lifted_by_another_node_is_refused(world: World) -> None:
    """Another node presenting alpha's token (with its own identity key) is refused."""
    alpha = await enroll(world, "alpha")
    beta = await enroll(world, "beta", ip="198.51.100.8")
    grant = await world.service.relay_token(alpha.auth(), RelayTokenRequest("relay-1"))
    with pytest.raises(InvalidToken):
        verify_at_relay(grant.token, alpha, world, identity=beta.identity.public_key)


@pytest.mark.asyncio
async def test_relay_token_is_no_access_token_and_expires(world: World) -> None:
    """A relay token never passes as an access token (at a relay or at control) and is dead
    after its 120 s."""
    node = await enroll(world, "alpha")
    grant = await world.service.relay_token(node.auth(), RelayTokenRequest("relay-1"))
    with pytest.raises(InvalidToken):
        verify_at_relay(grant.token, node, world, kind=TokenKind.ACCESS)
    lifted = NodeAuth(node.result.node_id, grant.token, "198.51.100.9")
    with pytest.raises(Unauthorized):
        await world.service.peer_map(lifted, 0, timeout=0)
    world.clock.advance(timedelta(seconds=120))
    with pytest.raises(InvalidToken):
        verify_at_relay(grant.token, node, world)


@pytest.mark.asyncio
async def test_unknown_relay_is_not_found(world: World) -> None:
    """A relay id control does not list gets 404, never a token."""
    node = await enroll(world, "alpha")
    with pytest.raises(NotFoundError):
        await world.service.relay_token(node.auth(), RelayTokenRequest("relay-9"))


@pytest.mark.asyncio
async def test_no_relay_token_without_configured_relays(tmp_path: Path) -> None:
    """With no `[[relays]]` every relay id is unknown."""
    store = SqliteStore(tmp_path / "c.db")
    w = await make_world(store)
    try:
        node = await enroll(w, "alpha")
        with pytest.raises(NotFoundError):
            await w.service.relay_token(node.auth(), RelayTokenRequest("relay-1"))
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_relay_token_needs_a_valid_access_token(world: World) -> None:
    """Bad credentials are 401 before the relay id is looked at (no anonymous probing)."""
    node = await enroll(world, "alpha")
    forged = NodeAuth(node.result.node_id, node.result.access_token[:-2] + "AA", "198.51.100.9")
    for relay_id in ("relay-1", "relay-9"):
        with pytest.raises(Unauthorized):
            await world.service.relay_token(forged, RelayTokenRequest(relay_id))
    other = NodeAuth("node_unknown", node.result.access_token, "198.51.100.9")
    with pytest.raises(Unauthorized):
        await world.service.relay_token(other, RelayTokenRequest("relay-1"))


@pytest.mark.asyncio
async def test_revoked_node_gets_no_relay_token(world: World) -> None:
    """Revocation bites at once: the same access token gets 401 for a relay token."""
    node = await enroll(world, "alpha")
    await world.service.relay_token(node.auth(), RelayTokenRequest("relay-1"))
    await world.service.revoke_node(world.admin, node.result.node_id)
    with pytest.raises(Unauthorized):
        await world.service.relay_token(node.auth(), RelayTokenRequest("relay-1"))


@pytest.mark.asyncio
async def test_every_peer_map_lists_the_configured_relays(world: World) -> None:
    """Each node's verified map carries the same relays in the configured order; its peers
    name them by id."""
    await world.service.put_policy(world.admin, OPEN_POLICY)
    alpha = await enroll(world, "alpha")
    beta = await enroll(world, "beta", ip="198.51.100.8")
    for node in (alpha, beta):
        response = await world.service.peer_map(node.auth(), 0, timeout=0)
        assert response is not None
        peer_map = node.acceptor.accept(response.envelope, world.clock.now())
        assert peer_map.relays == RELAYS
        assert [p.relays for p in peer_map.peers] == [("relay-1", "relay-2")]


@pytest.mark.asyncio
async def test_local_adapter_relay_token(world: World) -> None:
    """`LocalControlPlane.relay_token` returns a RelayToken; 404 and revocation map as over
    HTTP."""
    node = await enroll(world, "alpha")
    plane = LocalControlPlane(world.service)
    auth = NodeCredentials(node.result.node_id, node.result.access_token)
    grant = await plane.relay_token(auth, "relay-2")
    assert isinstance(grant, RelayToken)
    assert verify_at_relay(grant.token, node, world, relay_id="relay-2") == node.result.node_id
    with pytest.raises(ControlRejected) as unknown:
        await plane.relay_token(auth, "relay-9")
    assert (unknown.value.status, unknown.value.code) == (404, "not_found")
    assert not is_revocation(unknown.value)
    await world.service.revoke_node(world.admin, node.result.node_id)
    with pytest.raises(ControlRejected) as revoked:
        await plane.relay_token(auth, "relay-1")
    assert is_revocation(revoked.value)
