"""Control-plane use cases that change a live network, on MemoryStore and SqliteStore: policy
changes wake exactly the affected long polls, tunnel-key rotation, underlay endpoints (validated,
stored, surviving a restart), node rename/retag/delete, expired tunnel keys, and a locked-out
admin key failing like any bad key. Builds on the helpers of test_control_service.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from rustynet.adapters.storage.memory import MemoryStore

from rustynet.application.control import ControlService, ControlSettings
from rustynet.application.control_types import AdminAuth, NodeAuth, PeerMapResponse
from rustynet.application.errors import (
    Conflict,
    NotFoundError,
    RateLimited,
    Unauthorized,
    ValidationError,
)
from rustynet.domain.key_hierarchy import issue_tunnel_key_binding
from rustynet.domain.keys import (
    Purpose,
    SigningKey,
    TunnelKey,
    TunnelKeyScheme,
    TunnelPrivateKey,
    b64decode,
    b64encode,
)
from rustynet.domain.limits import LimitPolicy
from rustynet.domain.netmap import PeerMap, PeerMapAcceptor
from rustynet.domain.signed import JsonValue
from rustynet.domain.tokens import token_renewal_message
from rustynet.ports.wire.v1 import (
    CreateApiKeyRequest,
    EndpointsRequest,
    RotateTunnelKeyRequest,
    TokenChallengeRequest,
    TokenRenewRequest,
    UpdateNodeRequest,
)
from tests.integration.test_control_service import (
    URL,
    Node,
    World,
    enroll,
    make_world,
    world,
)

__all__ = ["world"]  # the fixture, re-exported for pytest

TAGS: dict[str, JsonValue] = {
    "tag:server": [],
    "tag:client": [],
    "tag:printer": [],
    "tag:lonely": [],
}
SSH_ONLY: dict[str, JsonValue] = {
    "tagOwners": TAGS,
    "acls": [{"action": "accept", "src": ["tag:client"], "dst": ["tag:server:22"], "proto": "tcp"}],
}
SSH_HTTPS_AND_PRINTING: dict[str, JsonValue] = {
    "tagOwners": TAGS,
    "acls": [
        {"action": "accept", "src": ["tag:client"], "dst": ["tag:server:22,443"], "proto": "tcp"},
        {"action": "accept", "src": ["tag:client"], "dst": ["tag:printer:631"], "proto": "tcp"},
    ],
}


async def current_map(w: World, node: Node, auth: NodeAuth | None = None) -> PeerMap:
    """The node's current peer map, verified by a fresh acceptor (no watermark)."""
    response = await w.service.peer_map(auth or node.auth(), 0, timeout=0)
    assert response is not None
    acceptor = PeerMapAcceptor(node.acceptor.trust, node.result.node_id)
    return acceptor.accept(response.envelope, w.clock.now())


async def serial(w: World, node: Node) -> int:
    """The node's current peer-map serial."""
    response = await w.service.peer_map(node.auth(), 0, timeout=0)
    assert response is not None
    return response.serial


def long_poll(w: World, node: Node, after: int) -> asyncio.Task[PeerMapResponse | None]:
    """A long poll above `after`, running in the background."""
    return asyncio.create_task(w.service.peer_map(node.auth(), after, timeout=5))


async def settle(w: World, *nodes: Node) -> None:
    """Let background long polls subscribe."""
    for _ in range(100):
        if all(w.service.waiters.waiting(n.result.node_id) for n in nodes):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("long polls did not subscribe")


def new_tunnel_key(w: World) -> TunnelKey:
    return TunnelPrivateKey.generate(w.entropy, TunnelKeyScheme.X25519).public_key


async def renewed(w: World, node: Node) -> NodeAuth:
    """A fresh access token through the identity-key renewal (after the clock moved)."""
    ip = "198.51.100.9"
    challenge = await w.service.token_challenge(
        TokenChallengeRequest(node.result.node_id), client_ip=ip
    )
    message = token_renewal_message(b64decode(challenge.challenge_id), node.result.node_id)
    signature = b64encode(node.identity.sign(Purpose.TOKEN_RENEWAL, message))
    token = await w.service.renew_token(
        TokenRenewRequest(node.result.node_id, challenge.challenge_id, signature), client_ip=ip
    )
    return NodeAuth(node.result.node_id, token.access_token, ip)


# --- policy changes -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_policy_change_wakes_affected_long_polls_with_the_new_filter(world: World) -> None:
    """Every node whose view changes is woken with a higher serial and its new inbound filter;
    a node whose view stays the same is not woken (changed_views) and its serial stays."""
    await world.service.put_policy(world.admin, SSH_ONLY)
    server = await enroll(world, "server", ("tag:server",))
    laptop = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    printer = await enroll(world, "printer", ("tag:printer",), ip="198.51.100.10")
    lonely = await enroll(world, "lonely", ("tag:lonely",), ip="198.51.100.11")
    before = {n.result.node_id: await serial(world, n) for n in (server, laptop, printer, lonely)}
    polls = {
        n.result.node_id: long_poll(world, n, before[n.result.node_id])
        for n in (server, laptop, printer, lonely)
    }
    await settle(world, server, laptop, printer, lonely)

    await world.service.put_policy(world.admin, SSH_HTTPS_AND_PRINTING)

    affected = (server, laptop, printer)
    woken = await asyncio.wait_for(asyncio.gather(*(polls[n.result.node_id] for n in affected)), 2)
    maps = {}
    for node, response in zip(affected, woken, strict=True):
        assert response is not None
        assert response.serial > before[node.result.node_id]
        maps[node.result.node_id] = node.acceptor.accept(response.envelope, world.clock.now())
    laptop_address = laptop.result.overlay_addresses[0]
    server_rule = maps[server.result.node_id].inbound
    assert [(r.sources, r.ports) for r in server_rule] == [
        ((laptop_address,), ((22, 22), (443, 443)))
    ]
    printer_rule = maps[printer.result.node_id].inbound
    assert [(r.sources, r.ports) for r in printer_rule] == [((laptop_address,), ((631, 631),))]
    assert {p.id for p in maps[laptop.result.node_id].peers} == {
        server.result.node_id,
        printer.result.node_id,
    }
    assert maps[laptop.result.node_id].policy_version == 2

    lonely_poll = polls[lonely.result.node_id]
    await asyncio.sleep(0.05)
    assert not lonely_poll.done()  # still waiting: nothing changed for it
    lonely_poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lonely_poll
    assert await serial(world, lonely) == before[lonely.result.node_id]


# --- tunnel-key rotation ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tunnel_key_rotation_reaches_peers(world: World) -> None:
    """A new tunnel key bound by the node's identity key is stored; a peer's waiting long poll
    is woken with a map carrying the new key and the binding's expiry."""
    await world.service.put_policy(world.admin, SSH_ONLY)
    server = await enroll(world, "server", ("tag:server",))
    laptop = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    laptop_serial = await serial(world, laptop)
    poll = long_poll(world, laptop, laptop_serial)
    await settle(world, laptop)
    fresh = new_tunnel_key(world)
    binding = issue_tunnel_key_binding(server.identity, fresh, world.clock.now())
    info = await world.service.rotate_tunnel_key(
        server.auth(), RotateTunnelKeyRequest(fresh.to_text(), binding.to_text())
    )
    assert info.tunnel_key == fresh.to_text()
    assert info.tunnel_key_expires_at == binding.validity.not_after
    response = await asyncio.wait_for(poll, 2)
    assert response is not None
    assert response.serial > laptop_serial
    peers = laptop.acceptor.accept(response.envelope, world.clock.now()).peers
    assert [(p.id, p.tunnel_key) for p in peers] == [(server.result.node_id, fresh)]
    assert (await current_map(world, server)).self_entry.tunnel_key == fresh


@pytest.mark.asyncio
async def test_tunnel_key_bound_by_another_key_is_rejected_and_changes_nothing(
    world: World,
) -> None:
    """A binding signed by a key other than the node's identity key (or binding a different
    tunnel key) is a ValidationError at /tunnel_key_binding; key, peers and serials unchanged."""
    await world.service.put_policy(world.admin, SSH_ONLY)
    server = await enroll(world, "server", ("tag:server",))
    laptop = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    before = await world.service.get_node(world.admin, server.result.node_id)
    serials = (await serial(world, server), await serial(world, laptop))
    fresh = new_tunnel_key(world)
    attacker = SigningKey.generate(world.entropy)
    foreign = issue_tunnel_key_binding(attacker, fresh, world.clock.now())
    other = issue_tunnel_key_binding(server.identity, new_tunnel_key(world), world.clock.now())
    for binding in (foreign, other):
        with pytest.raises(ValidationError) as caught:
            await world.service.rotate_tunnel_key(
                server.auth(), RotateTunnelKeyRequest(fresh.to_text(), binding.to_text())
            )
        assert [p.pointer for p in caught.value.problems] == ["/tunnel_key_binding"]
    assert await world.service.get_node(world.admin, server.result.node_id) == before
    assert (await serial(world, server), await serial(world, laptop)) == serials
    peers = (await current_map(world, laptop)).peers
    assert [p.tunnel_key.to_text() for p in peers] == [before.tunnel_key]


@pytest.mark.asyncio
async def test_expired_tunnel_key_drops_out_of_peer_maps(world: World) -> None:
    """A peer whose tunnel-key binding has expired is left out of the maps of the nodes that
    could see it (and comes back once it rotates to a valid key)."""
    await world.service.put_policy(world.admin, SSH_ONLY)
    server = await enroll(world, "server", ("tag:server",))
    laptop = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    short_key = new_tunnel_key(world)
    short = issue_tunnel_key_binding(
        server.identity, short_key, world.clock.now(), lifetime=timedelta(days=1)
    )
    await world.service.rotate_tunnel_key(
        server.auth(), RotateTunnelKeyRequest(short_key.to_text(), short.to_text())
    )
    assert [p.id for p in (await current_map(world, laptop)).peers] == [server.result.node_id]
    world.clock.advance(timedelta(days=1, seconds=1))
    laptop_auth = await renewed(world, laptop)
    assert (await current_map(world, laptop, laptop_auth)).peers == ()
    server_auth = await renewed(world, server)
    fresh = new_tunnel_key(world)
    binding = issue_tunnel_key_binding(server.identity, fresh, world.clock.now())
    await world.service.rotate_tunnel_key(
        server_auth, RotateTunnelKeyRequest(fresh.to_text(), binding.to_text())
    )
    peers = (await current_map(world, laptop, laptop_auth)).peers
    assert [(p.id, p.tunnel_key) for p in peers] == [(server.result.node_id, fresh)]


# --- underlay endpoints -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_endpoints_reach_peers_in_canonical_form(world: World) -> None:
    """Reported endpoints wake the peers that see the node and appear in their maps (canonical
    text, duplicates dropped); reporting the same list again bumps no serial."""
    await world.service.put_policy(world.admin, SSH_ONLY)
    server = await enroll(world, "server", ("tag:server",))
    laptop = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    lonely = await enroll(world, "lonely", ("tag:lonely",), ip="198.51.100.11")
    laptop_serial, lonely_serial = await serial(world, laptop), await serial(world, lonely)
    poll = long_poll(world, laptop, laptop_serial)
    await settle(world, laptop)
    reported = ("198.51.100.2:41641", "[2001:DB8:0::1]:41641", "198.51.100.2:41641")
    await world.service.set_endpoints(server.auth(), EndpointsRequest(underlay_endpoints=reported))
    response = await asyncio.wait_for(poll, 2)
    assert response is not None
    peers = laptop.acceptor.accept(response.envelope, world.clock.now()).peers
    expected = ("198.51.100.2:41641", "[2001:db8::1]:41641")
    assert [tuple(c.endpoint.to_text() for c in p.candidates) for p in peers] == [expected]
    assert {c.kind.value for c in peers[0].candidates} == {"configured"}  # the previous shape
    assert await serial(world, lonely) == lonely_serial
    before = await serial(world, laptop)
    await world.service.set_endpoints(server.auth(), EndpointsRequest(underlay_endpoints=expected))
    assert await serial(world, laptop) == before


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("endpoints", "pointer"),
    [
        (("198.51.100.2:0",), "/underlay_endpoints/0"),
        (("198.51.100.2:41641", "198.51.100.2:65536"), "/underlay_endpoints/1"),
        (("vpn.example.net:41641",), "/underlay_endpoints/0"),
        (("2001:db8::1:41641",), "/underlay_endpoints/0"),
        (("[fe80::1%eth0]:41641",), "/underlay_endpoints/0"),
        (("198.51.100.2",), "/underlay_endpoints/0"),
        (("198.51.100.2:4\uff11",), "/underlay_endpoints/0"),  # a full-width digit
        (("198.051.100.2:41641",), "/underlay_endpoints/0"),
        (tuple(f"198.51.100.{i}:41641" for i in range(17)), "/underlay_endpoints"),
    ],
)
async def test_malformed_endpoints_are_refused_with_a_pointer(
    world: World, endpoints: tuple[str, ...], pointer: str
) -> None:
    """Only IP literals with a port 1-65535, at most 16: anything else is a ValidationError at
    the offending element, and the stored endpoints stay as they were."""
    node = await enroll(world, "server", ("tag:server",))
    await world.service.set_endpoints(
        node.auth(), EndpointsRequest(underlay_endpoints=("192.0.2.1:1",))
    )
    with pytest.raises(ValidationError) as caught:
        await world.service.set_endpoints(
            node.auth(), EndpointsRequest(underlay_endpoints=endpoints)
        )
    assert [p.pointer for p in caught.value.problems] == [pointer]
    async with world.store.unit_of_work() as uow:
        stored = await uow.nodes.get(node.result.node_id)
    assert stored is not None
    assert [str(c.endpoint) for c in stored.candidates] == ["192.0.2.1:1"]


@pytest.mark.asyncio
async def test_endpoints_survive_a_control_restart(world: World) -> None:
    """Nothing lost: after the store is closed and a new service (a restarted process) opens
    it, peers still get the endpoints the node reported before."""
    await world.service.put_policy(world.admin, SSH_ONLY)
    server = await enroll(world, "server", ("tag:server",))
    laptop = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    await world.service.set_endpoints(
        server.auth(), EndpointsRequest(underlay_endpoints=("203.0.113.5:51820",))
    )
    await world.store.close()
    await world.store.open()
    restarted = ControlService(
        world.store,
        world.keys,
        world.clock,
        world.entropy,
        ControlSettings(control_url=URL, tls_spki_sha256=bytes(32)),
    )
    response = await restarted.peer_map(laptop.auth(), 0, timeout=0)
    assert response is not None
    peers = laptop.acceptor.accept(response.envelope, world.clock.now()).peers
    assert [[str(e) for e in p.endpoints] for p in peers] == [["203.0.113.5:51820"]]


# --- node administration ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rename_and_retag_change_what_peers_see(world: World) -> None:
    """Renaming a node shows in its peers' maps; retagging it out of the policy's source set
    wakes its peer, whose inbound filter and peer list lose it."""
    await world.service.put_policy(world.admin, SSH_ONLY)
    server = await enroll(world, "server", ("tag:server",))
    laptop = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    renamed = await world.service.update_node(
        world.admin, laptop.result.node_id, UpdateNodeRequest(name="travel-laptop")
    )
    assert renamed.name == "travel-laptop"
    assert [p.name for p in (await current_map(world, server)).peers] == ["travel-laptop"]
    assert (await current_map(world, laptop)).self_entry.name == "travel-laptop"

    server_serial = await serial(world, server)
    poll = long_poll(world, server, server_serial)
    await settle(world, server)
    retagged = await world.service.update_node(
        world.admin, laptop.result.node_id, UpdateNodeRequest(tags=("tag:lonely",))
    )
    assert retagged.tags == ("tag:lonely",)
    response = await asyncio.wait_for(poll, 2)
    assert response is not None
    assert response.serial > server_serial
    server_map = server.acceptor.accept(response.envelope, world.clock.now())
    assert server_map.peers == ()
    assert server_map.inbound == ()
    assert (await current_map(world, laptop)).self_entry.tags == ("tag:lonely",)


@pytest.mark.asyncio
async def test_rename_to_a_taken_or_invalid_name_is_refused(world: World) -> None:
    """Names stay unique DNS labels: a taken name is a Conflict, a bad one a ValidationError."""
    first = await enroll(world, "first")
    await enroll(world, "second", ip="198.51.100.8")
    with pytest.raises(Conflict):
        await world.service.update_node(
            world.admin, first.result.node_id, UpdateNodeRequest(name="second")
        )
    with pytest.raises(ValidationError) as caught:
        await world.service.update_node(
            world.admin, first.result.node_id, UpdateNodeRequest(name="Bad_Name")
        )
    assert [p.pointer for p in caught.value.problems] == ["/name"]
    assert (await world.service.get_node(world.admin, first.result.node_id)).name == "first"


@pytest.mark.asyncio
async def test_deleted_node_vanishes_and_frees_its_address(world: World) -> None:
    """Delete: the node is gone from the inventory and from its peer's map (the waiting peer is
    woken), its token stops working, and its address lease is released."""
    await world.service.put_policy(world.admin, SSH_ONLY)
    server = await enroll(world, "server", ("tag:server",))
    laptop = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.8")
    laptop_id = laptop.result.node_id
    server_serial = await serial(world, server)
    poll = long_poll(world, server, server_serial)
    await settle(world, server)
    await world.service.delete_node(world.admin, laptop_id)
    response = await asyncio.wait_for(poll, 2)
    assert response is not None
    assert server.acceptor.accept(response.envelope, world.clock.now()).peers == ()
    with pytest.raises(NotFoundError):
        await world.service.get_node(world.admin, laptop_id)
    assert laptop_id not in {n.id for n in await world.service.list_nodes(world.admin)}
    with pytest.raises(Unauthorized):
        await world.service.peer_map(laptop.auth(), 0, timeout=0)
    async with world.store.unit_of_work() as uow:
        assert await uow.ipam.lookup(laptop_id) is None
        lease = await uow.ipam.allocate("newcomer")
        assert lease is not None
    with pytest.raises(NotFoundError):
        await world.service.delete_node(world.admin, laptop_id)


# --- locked-out admin key -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_locked_out_admin_key_fails_like_a_wrong_key_and_is_audited() -> None:
    """Once an API key is disabled by failures, even its correct secret gets Unauthorized (not
    RateLimited with a pointless Retry-After), identical to a wrong secret; both are audited,
    and another admin key still works."""
    limits = LimitPolicy(backoff_after_failures=2, disable_after_failures=3)
    w = await make_world(MemoryStore(), limits)
    other = await w.service.create_api_key(w.admin, CreateApiKeyRequest("admin"))
    key_id = w.admin_key_text.split("_")[1]
    wrong = AdminAuth(f"rnk_{key_id}_{b64encode(bytes(32))}", "192.0.2.50")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await w.service.list_nodes(wrong)
    with pytest.raises(RateLimited):  # backing off: waiting helps, so Retry-After is honest
        await w.service.list_nodes(wrong)
    w.clock.advance(limits.backoff_max)
    with pytest.raises(Unauthorized):
        await w.service.list_nodes(wrong)  # third failure: disabled (and blocked again)
    answers = []
    for auth in (w.admin, wrong):
        with pytest.raises(Unauthorized) as refused:
            await w.service.list_nodes(auth)
        answers.append((type(refused.value), str(refused.value), refused.value.code))
    assert answers[0] == answers[1]
    assert await w.service.list_nodes(AdminAuth(other.key, "192.0.2.51")) == ()
    entries = await w.service.list_audit(AdminAuth(other.key, "192.0.2.51"), 0, 1000)
    locked = [
        e
        for e in entries
        if e.action == "admin.auth_failed" and (e.details or {}).get("reason") == "locked-out"
    ]
    assert len(locked) == 2
    assert {e.target for e in locked} == {f"apikey:{key_id}"}
