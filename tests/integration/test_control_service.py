"""Control-plane use cases end to end, without HTTP, on MemoryStore and SqliteStore: enrollment,
signed peer maps verified by the node-side acceptor, one-time join keys, revocation and
long-poll wake-ups, policy validation, abuse limits, API key scopes and the audit chain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import pytest_asyncio
from rustynet.adapters.storage.memory import MemoryStore
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.application.control import (
    ControlService,
    ControlSettings,
    create_initial_admin_key,
)
from rustynet.application.control_keys import ControlKeys, create_control_keys
from rustynet.application.control_types import AdminAuth, NodeAuth
from rustynet.application.errors import (
    Forbidden,
    Gone,
    RateLimited,
    Unauthorized,
    ValidationError,
)
from rustynet.domain.enrollment import EnrollmentClient, IssueChallenge
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.key_hierarchy import issue_tunnel_key_binding
from rustynet.domain.keys import (
    Purpose,
    SigningKey,
    TunnelKeyScheme,
    TunnelPrivateKey,
    b64decode,
    b64encode,
)
from rustynet.domain.limits import BucketPolicy, LimitPolicy
from rustynet.domain.netmap import PeerMapAcceptor, PeerMapTrust, RelayEntry
from rustynet.domain.scope import Scope
from rustynet.domain.signed import JsonValue
from rustynet.domain.tokens import token_renewal_message
from rustynet.ports.store import Store
from rustynet.ports.wire.v1 import (
    CreateApiKeyRequest,
    CreateJoinKeyRequest,
    EnrollCompleteRequest,
    EnrollRequest,
    EnrollResult,
    TokenChallengeRequest,
    TokenRenewRequest,
)
from tests.doubles import CountingEntropy, FakeClock

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
URL = "https://control.example.net:8443"
POLICY: dict[str, JsonValue] = {
    "tagOwners": {"tag:server": [], "tag:client": []},
    "acls": [{"action": "accept", "src": ["tag:client"], "dst": ["tag:server:22"], "proto": "tcp"}],
}


@attrs.define
class World:
    """A service with its store, clock, entropy, keys and an admin key."""

    service: ControlService
    store: Store
    clock: FakeClock
    entropy: CountingEntropy
    keys: ControlKeys
    admin: AdminAuth
    admin_key_text: str


async def make_world(
    store: Store,
    limits: LimitPolicy | None = None,
    relays: tuple[RelayEntry, ...] = (),
    stun: tuple[str, ...] = (),
) -> World:
    entropy = CountingEntropy()
    clock = FakeClock(NOW)
    keys, _ = create_control_keys(entropy, NOW)
    settings = ControlSettings(
        control_url=URL,
        tls_spki_sha256=bytes(32),
        limits=limits or LimitPolicy(),
        relays=relays,
        stun_servers=stun,
    )
    await store.open()
    created = await create_initial_admin_key(store, now=NOW, entropy=entropy, keys=keys)
    service = ControlService(store, keys, clock, entropy, settings)
    admin = AdminAuth(api_key=created.key, client_ip="192.0.2.1")
    return World(service, store, clock, entropy, keys, admin, created.key)


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    """A fresh control plane over each store."""
    store: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "c.db")
    made = await make_world(store)
    try:
        yield made
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def world_with_policy(store: Store | None = None) -> AsyncIterator[World]:
    """An in-process control plane over `store` (default: a memory store) with POLICY stored;
    the store is closed at the end."""
    made = await make_world(store or MemoryStore())
    await made.service.put_policy(made.admin, POLICY)
    try:
        yield made
    finally:
        await made.store.close()


@attrs.define
class Node:
    """A simulated node: its keys, the join token text and what enrollment returned."""

    identity: SigningKey
    join_text: str
    result: EnrollResult
    acceptor: PeerMapAcceptor

    def auth(self, ip: str = "198.51.100.9") -> NodeAuth:
        return NodeAuth(self.result.node_id, self.result.access_token, ip)


async def start_enroll(
    w: World, join_text: str, hostname: str, ip: str, identity: SigningKey | None = None
) -> tuple[EnrollmentClient, SigningKey, str, str]:
    identity = identity if identity is not None else SigningKey.generate(w.entropy)
    tunnel = TunnelPrivateKey.generate(w.entropy, TunnelKeyScheme.X25519).public_key
    binding = issue_tunnel_key_binding(identity, tunnel, w.clock.now())
    token = JoinToken.parse(join_text)
    client = EnrollmentClient(identity, tunnel, hostname)
    client.start(token.token_id.to_text())
    request = EnrollRequest(
        join_secret=join_text,
        identity_key=identity.public_key.to_text(),
        tunnel_key=tunnel.to_text(),
        tunnel_key_binding=binding.to_text(),
        hostname=hostname,
    )
    challenge = await w.service.enroll(request, client_ip=ip)
    proof = client.receive(IssueChallenge(b64decode(challenge.challenge_id), challenge.expires_at))
    assert proof is not None
    return client, identity, challenge.challenge_id, b64encode(proof.signature)


async def enroll(
    w: World, hostname: str, tags: tuple[str, ...] = (), ip: str = "198.51.100.7"
) -> Node:
    created = await w.service.create_join_key(w.admin, CreateJoinKeyRequest(tags=tags))
    _, identity, challenge_id, signature = await start_enroll(w, created.token, hostname, ip)
    result = await w.service.enroll_complete(
        EnrollCompleteRequest(challenge_id, signature), client_ip=ip
    )
    token = JoinToken.parse(created.token)
    trust = PeerMapTrust.from_texts(
        result.trust.root_certificate,
        token.root_fingerprint,
        result.trust.signing_certificates,
        w.clock.now(),
    )
    return Node(identity, created.token, result, PeerMapAcceptor(trust, result.node_id))


async def fetch(w: World, node: Node, after: int = 0) -> set[str]:
    response = await w.service.peer_map(node.auth(), after, timeout=0)
    assert response is not None
    peer_map = node.acceptor.accept(response.envelope, w.clock.now())
    return {p.id for p in peer_map.peers}


@pytest.mark.asyncio
async def test_enrolled_node_gets_address_token_and_a_peer_map_it_verifies(world: World) -> None:
    """Full flow: join key → challenge → proof → node with an overlay address and an access
    token; its peer map is signed, addressed to it, and lists the peers the policy allows."""
    await world.service.put_policy(world.admin, POLICY)
    server = await enroll(world, "server", ("tag:server",))
    client = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    assert client.result.overlay_addresses[0].startswith("100.")
    assert client.result.access_token.startswith("v4.public.")
    response = await world.service.peer_map(client.auth(), 0, timeout=0)
    assert response is not None
    peer_map = client.acceptor.accept(response.envelope, world.clock.now())
    assert peer_map.addressee == client.result.node_id
    assert [p.id for p in peer_map.peers] == [server.result.node_id]
    assert await fetch(world, server) == {client.result.node_id}
    server_map = await world.service.peer_map(server.auth(), 0, timeout=0)
    assert server_map is not None
    inbound = PeerMapAcceptor(server.acceptor.trust, server.result.node_id).accept(
        server_map.envelope, world.clock.now()
    )
    assert inbound.inbound[0].ports == ((22, 22),)
    assert inbound.inbound[0].sources == (client.result.overlay_addresses[0],)


@pytest.mark.asyncio
async def test_peer_map_long_poll_answers_none_when_nothing_is_newer(world: World) -> None:
    """A long poll at the current serial waits and answers None (204) after the timeout."""
    node = await enroll(world, "alone")
    response = await world.service.peer_map(node.auth(), 0, timeout=0)
    assert response is not None
    assert await world.service.peer_map(node.auth(), response.serial, timeout=0.01) is None


@pytest.mark.asyncio
async def test_nodes_with_one_hostname_get_distinct_names(world: World) -> None:
    """A taken hostname gets the first free numeric suffix; names never collide."""
    names = [
        (await enroll(world, "laptop", ip=f"198.51.100.{30 + i}")).result.name for i in range(3)
    ]
    other = await enroll(world, "laptop-x", ip="198.51.100.40")
    assert names == ["laptop", "laptop-2", "laptop-3"]
    assert other.result.name == "laptop-x"


@pytest.mark.asyncio
async def test_one_time_join_key_second_use_is_gone(world: World) -> None:
    """The second enrollment with a one-time join key is refused with Gone (410)."""
    node = await enroll(world, "first")
    with pytest.raises(Gone):
        await start_enroll(world, node.join_text, "second", "198.51.100.20")


@pytest.mark.asyncio
async def test_revoked_node_is_refused_vanishes_and_its_peer_is_woken(world: World) -> None:
    """Revoking a node: its token fails at once, it leaves its peer's map, the peer's waiting
    long poll is woken with a newer map."""
    await world.service.put_policy(world.admin, POLICY)
    server = await enroll(world, "server", ("tag:server",))
    client = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    first = await world.service.peer_map(server.auth(), 0, timeout=0)
    assert first is not None
    server.acceptor.accept(first.envelope, world.clock.now())
    waiting = asyncio.create_task(world.service.peer_map(server.auth(), first.serial, timeout=5))
    await asyncio.sleep(0.05)
    assert world.service.waiters.waiting(server.result.node_id) == 1
    await world.service.revoke_node(world.admin, client.result.node_id)
    woken = await asyncio.wait_for(waiting, 2)
    assert woken is not None
    assert woken.serial > first.serial
    assert server.acceptor.accept(woken.envelope, world.clock.now()).peers == ()
    with pytest.raises(Unauthorized):
        await world.service.peer_map(client.auth(), 0, timeout=0)


@pytest.mark.asyncio
async def test_invalid_policy_is_refused_with_pointers_and_changes_nothing(world: World) -> None:
    """An invalid policy raises ValidationError naming the bad element; the stored policy stays."""
    await world.service.put_policy(world.admin, POLICY)
    bad = {"acls": [{"action": "accept", "src": ["tag:nobody"], "dst": ["10.0.0.0/33:*"]}]}
    with pytest.raises(ValidationError) as caught:
        await world.service.put_policy(world.admin, bad)
    pointers = {p.pointer for p in caught.value.problems}
    assert "/acls/0/dst/0" in pointers
    assert "/acls/0/src/0" in pointers
    current = await world.service.get_policy(world.admin)
    assert current.version == 1
    assert current.document == POLICY


@pytest.mark.asyncio
async def test_enrollment_is_rate_limited_per_ip_with_retry_after(tmp_path: Path) -> None:
    """Past the per-IP burst, enroll answers RateLimited with a positive retry_after."""
    limits = LimitPolicy(per_ip=BucketPolicy(burst=2, refill=1, per=timedelta(minutes=1)))
    w = await make_world(MemoryStore(), limits)
    created = await w.service.create_join_key(w.admin, CreateJoinKeyRequest())
    for _ in range(2):
        await start_enroll(w, created.token, "host", "203.0.113.5")
    with pytest.raises(RateLimited) as caught:
        await start_enroll(w, created.token, "host", "203.0.113.5")
    assert caught.value.retry_after >= 1


@pytest.mark.asyncio
async def test_unknown_and_wrong_join_secrets_fail_alike(world: World) -> None:
    """A join token with a wrong secret and one with an unknown id both raise Unauthorized."""
    created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest())
    real = JoinToken.parse(created.token)
    forged = JoinToken.create(
        control_url=URL,
        root_fingerprint=real.root_fingerprint,
        tls_spki_sha256=bytes(32),
        entropy=world.entropy,
    )
    wrong_secret = JoinToken(
        control_url=URL,
        root_fingerprint=real.root_fingerprint,
        tls_spki_sha256=bytes(32),
        token_id=real.token_id,
        secret=forged.export_secret(),
    )
    errors = []
    for text in (forged.to_text(), wrong_secret.to_text()):
        with pytest.raises(Unauthorized) as caught:
            await start_enroll(world, text, "host", "203.0.113.9")
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


@pytest.mark.asyncio
async def test_admin_key_failures_back_off(tmp_path: Path) -> None:
    """Repeated wrong secrets for one API key id lead to RateLimited (backoff), not more tries."""
    limits = LimitPolicy(backoff_after_failures=3)
    w = await make_world(MemoryStore(), limits)
    key_id = w.admin_key_text.split("_")[1]
    wrong = AdminAuth(f"rnk_{key_id}_{b64encode(bytes(32))}", "192.0.2.50")
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await w.service.list_nodes(wrong)
    with pytest.raises(RateLimited):
        await w.service.list_nodes(wrong)


@pytest.mark.asyncio
async def test_read_only_key_may_read_but_not_write(world: World) -> None:
    """Scopes: a read-only key lists nodes but cannot create join keys or change policy."""
    created = await world.service.create_api_key(world.admin, CreateApiKeyRequest("read-only"))
    reader = AdminAuth(created.key, "192.0.2.2")
    assert await world.service.list_nodes(reader) == ()
    with pytest.raises(Forbidden):
        await world.service.create_join_key(reader, CreateJoinKeyRequest())
    with pytest.raises(Forbidden):
        await world.service.put_policy(reader, POLICY)


@pytest.mark.asyncio
async def test_revoked_api_key_is_unauthorized(world: World) -> None:
    """After revocation an API key fails like an unknown one."""
    created = await world.service.create_api_key(world.admin, CreateApiKeyRequest("admin"))
    await world.service.revoke_api_key(world.admin, created.id)
    with pytest.raises(Unauthorized):
        await world.service.list_nodes(AdminAuth(created.key, "192.0.2.3"))


@pytest.mark.asyncio
async def test_token_renewal_challenge_is_single_use(world: World) -> None:
    """A renewal signature over a challenge gets a token once; replaying it is Unauthorized."""
    node = await enroll(world, "renewer")
    challenge = await world.service.token_challenge(
        TokenChallengeRequest(node.result.node_id), client_ip="198.51.100.9"
    )
    message = token_renewal_message(b64decode(challenge.challenge_id), node.result.node_id)
    signature = b64encode(node.identity.sign(Purpose.TOKEN_RENEWAL, message))
    request = TokenRenewRequest(node.result.node_id, challenge.challenge_id, signature)
    token = await world.service.renew_token(request, client_ip="198.51.100.9")
    assert token.access_token.startswith("v4.public.")
    with pytest.raises(Unauthorized):
        await world.service.renew_token(request, client_ip="198.51.100.9")


@pytest.mark.asyncio
async def test_requested_tags_beyond_the_join_key_are_forbidden(world: World) -> None:
    """A node cannot ask for tags its join key does not grant."""
    created = await world.service.create_join_key(
        world.admin, CreateJoinKeyRequest(tags=("tag:client",))
    )
    identity = SigningKey.generate(world.entropy)
    tunnel = TunnelPrivateKey.generate(world.entropy, TunnelKeyScheme.X25519).public_key
    binding = issue_tunnel_key_binding(identity, tunnel, NOW)
    request = EnrollRequest(
        join_secret=created.token,
        identity_key=identity.public_key.to_text(),
        tunnel_key=tunnel.to_text(),
        tunnel_key_binding=binding.to_text(),
        hostname="sneaky",
        requested_tags=("tag:server",),
    )
    with pytest.raises(Forbidden):
        await world.service.enroll(request, client_ip="198.51.100.30")
    assert Scope.of(["tag:client"]).tags  # the key's own scope is intact


@pytest.mark.asyncio
async def test_audit_chain_verifies_and_holds_no_secret(world: World) -> None:
    """After enrollments, failures, revocations and policy changes the audit chain verifies,
    has a signed checkpoint, and no entry contains a join token, API key or access token."""
    await world.service.put_policy(world.admin, POLICY)
    node = await enroll(world, "server", ("tag:server",))
    created = await world.service.create_api_key(world.admin, CreateApiKeyRequest("read-only"))
    with pytest.raises(Unauthorized):
        await world.service.list_nodes(AdminAuth(created.key[:-4] + "AAAA", "192.0.2.9"))
    await world.service.revoke_node(world.admin, node.result.node_id)
    world.clock.advance(timedelta(seconds=61))
    await world.service.tick()
    report = await world.service.audit_report()
    assert report.ok, report.message
    assert report.checkpoints_verified >= 1
    entries = await world.service.list_audit(world.admin, 0, 1000)
    actions = [e.action for e in entries]
    assert {"node.enrolled", "node.revoked", "policy.updated", "admin.auth_failed"} <= set(actions)
    secrets = [node.join_text, world.admin_key_text, created.key, node.result.access_token]
    for entry in entries:
        text = repr(attrs.asdict(entry))
        for secret in secrets:
            assert secret not in text
            assert secret[12:40] not in text
