"""The node agent against a real in-process control plane (ControlService on MemoryStore and
SqliteStore, no HTTP) with the in-memory tunnel and firewall: join, mutual peers, revocation,
control-plane outages, rejected maps and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
import pytest_asyncio
import structlog.testing
from rustynet.adapters.control_plane_local import LocalControlPlane
from rustynet.adapters.firewall.memory import MemoryFirewall
from rustynet.adapters.keystore.memory import MemoryKeystore
from rustynet.adapters.node_state_file import FileNodeStateStore
from rustynet.adapters.storage.memory import MemoryStore
from rustynet.adapters.storage.sqlite import SqliteStore
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend

from rustynet.application.node import AgentRevoked, AgentSettings, NodeAgent
from rustynet.application.node.paths import Plan
from rustynet.domain.policy import Proto
from rustynet.ports.control_plane import ControlUnreachable, NodeCredentials
from rustynet.ports.store import Store
from rustynet.ports.wire.v1 import CreateJoinKeyRequest, PeerMapDelivery, Trust
from tests.integration.test_control_service import World, make_world, world_with_policy

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    """A control plane with a client→server:22 policy, over each store."""
    store: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "c.db")
    async with world_with_policy(store) as made:
        yield made


@attrs.define
class Node:
    agent: NodeAgent
    control: LocalControlPlane
    tunnel: MemoryTunnelBackend
    firewall: MemoryFirewall
    keystore: MemoryKeystore
    state_path: Path


def make_agent(
    w: World,
    node: Node | None,
    tmp: Path,
    name: str,
    ip: str,
    tunnel: MemoryTunnelBackend | None = None,
) -> Node:
    keystore = node.keystore if node else MemoryKeystore()
    if node is None:
        keystore.open()
    control = LocalControlPlane(w.service, client_ip=ip)
    tunnel, firewall = tunnel or MemoryTunnelBackend(), MemoryFirewall()
    path = tmp / f"{name}.json"
    agent = NodeAgent(
        control=control,
        tunnel=tunnel,
        firewall=firewall,
        keystore=keystore,
        state_store=FileNodeStateStore(path),
        clock=w.clock,
        entropy=w.entropy,
        settings=AgentSettings(interface=f"rn{name}", endpoints=(f"{ip}:41641",)),
    )
    return Node(agent, control, tunnel, firewall, keystore, path)


async def joined(w: World, tmp: Path, name: str, tag: str, ip: str) -> Node:
    created = await w.service.create_join_key(w.admin, CreateJoinKeyRequest(tags=(tag,)))
    node = make_agent(w, None, tmp, name, ip)
    await node.agent.join(created.token, name)
    await node.agent.start()
    return node


async def pair(w: World, tmp: Path) -> tuple[Node, Node]:
    a = await joined(w, tmp, "a", "tag:client", "198.51.100.21")
    b = await joined(w, tmp, "b", "tag:server", "198.51.100.22")
    for node in (a, b):
        assert await node.agent.step(timeout=0)
    await a.agent.step(timeout=0)  # now also with B's reported endpoint
    return a, b


async def test_two_agents_join_and_see_each_other(world: World, tmp_path: Path) -> None:
    """Each agent's tunnel holds the other with the right key and prefixes; B's firewall
    admits A on 22/tcp only; status shows both."""
    a, b = await pair(world, tmp_path)
    assert a.agent.state is not None
    assert b.agent.state is not None
    a_peers = await a.tunnel.peers()
    b_peers = await b.tunnel.peers()
    assert list(a_peers) == [b.agent.state.tunnel_key]
    assert list(b_peers) == [a.agent.state.tunnel_key]
    assert a_peers[b.agent.state.tunnel_key].overlay_prefixes == (
        ipaddress.ip_network(b.agent.state.overlay_addresses[0]),
    )
    rules = await b.firewall.current()
    assert rules is not None
    a_ip = ipaddress.ip_address(a.agent.state.overlay_addresses[0].split("/")[0])
    assert rules.admits(a_ip, Proto.TCP, 22)
    assert not rules.admits(a_ip, Proto.TCP, 23)
    # Exactly one side was configured to speak first.
    a_first = a_peers[b.agent.state.tunnel_key].keepalive_seconds is not None
    b_first = b_peers[a.agent.state.tunnel_key].keepalive_seconds is not None
    assert a_first != b_first
    status = await a.agent.status()
    assert status.to_json()["backend"] == "memory"
    assert status.to_json()["control"] == {"url": a.agent.state.control_url, "connected": True}
    assert [p.name for p in status.peers] == ["b"]
    assert status.peers[0].path.text() == "trying"  # the memory backend never sees a handshake


async def test_revoked_node_tears_down_and_peer_drops_it(world: World, tmp_path: Path) -> None:
    """After revocation, A's token renewal is refused (401): run() tears A down; B drops A."""
    a, b = await pair(world, tmp_path)
    assert a.agent.state is not None
    await world.service.revoke_node(world.admin, a.agent.state.node_id)
    assert await b.agent.step(timeout=0)
    assert await b.tunnel.peers() == {}
    with pytest.raises(AgentRevoked):
        await a.agent.step(timeout=0)
    await a.agent.run()  # sees the revocation again and tears down
    assert a.agent.revoked
    assert a.tunnel.interface is None
    assert await a.firewall.current() is None


async def test_control_down_keeps_tunnels_and_resyncs(world: World, tmp_path: Path) -> None:
    """With control unreachable the peers stay; when it returns the agent resyncs."""
    a, _ = await pair(world, tmp_path)
    before = dict(await a.tunnel.peers())
    a.control.reachable = False
    with pytest.raises(ControlUnreachable):
        await a.agent.step(timeout=0)
    assert dict(await a.tunnel.peers()) == before
    assert not (await a.agent.status()).connected
    c = await joined(world, tmp_path, "c", "tag:server", "198.51.100.23")
    a.control.reachable = True
    assert await a.agent.step(timeout=0)
    assert c.agent.state is not None
    assert c.agent.state.tunnel_key in await a.tunnel.peers()
    assert (await a.agent.status()).connected


async def test_reconnect_does_not_park_on_a_long_poll(world: World, tmp_path: Path) -> None:
    """After an outage the first poll asks without waiting: `connected` is true as soon as
    control answers, not after a 60 s long poll with nothing new."""
    a, _ = await pair(world, tmp_path)
    a.control.reachable = False
    with pytest.raises(ControlUnreachable):
        await a.agent.step(timeout=0)
    a.control.reachable = True
    assert a.agent.settings.long_poll_seconds >= 60
    assert not await asyncio.wait_for(a.agent.step(), timeout=10)  # default wait: would park
    assert (await a.agent.status()).connected


async def test_expired_map_fails_closed_while_control_is_down(world: World, tmp_path: Path) -> None:
    """Once the last good map expires with control still down, every peer is removed."""
    a, _ = await pair(world, tmp_path)
    a.control.reachable = False
    world.clock.advance(world.service.settings.peer_map_ttl)
    with pytest.raises(ControlUnreachable):
        await a.agent.step(timeout=0)
    assert await a.tunnel.peers() == {}


async def test_tampered_stale_and_unknown_signer_maps_are_rejected(
    world: World, tmp_path: Path
) -> None:
    """A flipped byte, an older serial and a map from an unknown signer are each rejected,
    logged as peer_map.rejected, and change neither the tunnel nor the persisted state."""
    a, _ = await pair(world, tmp_path)
    state = a.agent.state
    assert state is not None
    assert state.last_peer_map is not None
    trust = Trust(state.root_certificate, state.signing_certificates)
    saved = a.state_path.read_bytes()
    peers = dict(await a.tunnel.peers())
    tampered = (
        state.last_peer_map[:-8]
        + ("A" if state.last_peer_map[-8] != "A" else "B")
        + state.last_peer_map[-7:]
    )
    other = await make_world(MemoryStore())
    stranger = await joined(other, tmp_path, "x", "tag:client", "198.51.100.30")
    await stranger.agent.step(timeout=0)
    assert stranger.agent.state is not None
    assert stranger.agent.state.last_peer_map is not None
    with structlog.testing.capture_logs() as logs:
        for envelope in (tampered, state.last_peer_map, stranger.agent.state.last_peer_map):
            assert not await a.agent.offer_peer_map(envelope, trust)
    assert a.agent.rejected_maps == 3
    rejected = [e for e in logs if e["event"] == "peer_map.rejected"]
    assert len(rejected) == 3
    assert all(e["log_level"] == "warning" for e in rejected)
    assert a.state_path.read_bytes() == saved
    assert dict(await a.tunnel.peers()) == peers


async def test_a_server_answering_bad_maps_at_once_is_polled_with_backoff(
    world: World, tmp_path: Path
) -> None:
    """A control that answers every poll at once with a tampered map makes run() back off
    (doubling sleeps), not spin: each rejection is followed by a longer wait."""
    a, _ = await pair(world, tmp_path)
    state = a.agent.state
    assert state is not None
    assert state.last_peer_map is not None
    good = state.last_peer_map
    flipped = good[:-8] + ("A" if good[-8] != "A" else "B") + good[-7:]
    trust = Trust(state.root_certificate, state.signing_certificates)

    async def tampered(
        _auth: NodeCredentials, _after: int, _timeout: float
    ) -> PeerMapDelivery | None:
        return PeerMapDelivery(flipped, trust)

    a.control.peer_map = tampered  # type: ignore[method-assign,assignment]
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= 5:
            await a.agent.stop()

    a.agent._sleep = record
    await asyncio.wait_for(a.agent.run(), timeout=10)
    assert a.agent.rejected_maps >= 5
    assert len(sleeps) == 5
    assert all(later > earlier for earlier, later in itertools.pairwise(sleeps[:4])), sleeps


async def test_restart_with_same_state_keeps_identity_and_address(
    world: World, tmp_path: Path
) -> None:
    """A new agent over the same key store and state file is the same node, back in the mesh."""
    a, b = await pair(world, tmp_path)
    first = a.agent.state
    assert first is not None
    await a.agent.teardown()
    again = make_agent(world, a, tmp_path, "a", "198.51.100.21")
    await again.agent.start()
    assert again.agent.state is not None
    assert again.agent.state.node_id == first.node_id
    assert again.agent.state.overlay_addresses == first.overlay_addresses
    assert again.agent.state.tunnel_key == first.tunnel_key
    assert b.agent.state is not None
    assert await again.tunnel.peers() == {}  # no peer before control has spoken
    await again.agent.step(timeout=0)  # token renewal with the stored identity works
    assert b.agent.state.tunnel_key in await again.tunnel.peers()  # saved map confirmed current
    status = await again.agent.status()
    assert status.connected
    assert status.peermap_source == "control"


async def test_tunnel_key_rotation_reaches_the_peer(world: World, tmp_path: Path) -> None:
    """After B rotates, A's next map holds B's new key (and not the old one)."""
    a, b = await pair(world, tmp_path)
    assert b.agent.state is not None
    old = b.agent.state.tunnel_key
    await b.agent.rotate_tunnel_key()
    assert b.agent.state.tunnel_key != old
    assert await a.agent.step(timeout=0)
    peers = await a.tunnel.peers()
    assert b.agent.state.tunnel_key in peers
    assert old not in peers
    assert b.tunnel.interface is not None


async def test_parked_long_poll_does_not_delay_the_responder(world: World, tmp_path: Path) -> None:
    """While run() waits on a long poll, the ticker re-plans: the silent responder gets the
    keepalive toward the initiator once it is overdue, without waiting for a new peer map."""
    a, b = await pair(world, tmp_path)
    assert a.agent.state is not None
    assert b.agent.state is not None
    a_key, b_key = a.agent.state.tunnel_key, b.agent.state.tunnel_key
    responder, initiator_key = (b, a_key) if a_key.raw < b_key.raw else (a, b_key)
    held = (await responder.tunnel.peers())[initiator_key]
    assert held.keepalive_seconds is None  # waits to be spoken to first
    responder.agent.settings = attrs.evolve(responder.agent.settings, reconcile_interval=0.05)
    world.clock.advance(timedelta(seconds=4))  # past the responder grace: overdue
    task = asyncio.create_task(responder.agent.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            peer = (await responder.tunnel.peers())[initiator_key]
            if peer.keepalive_seconds is not None:
                break
        assert peer.keepalive_seconds is not None
        assert not task.done()  # still parked on the long poll: the ticker did it
    finally:
        await responder.agent.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_path_switch_gives_an_overdue_responder_its_grace_again(
    world: World, tmp_path: Path
) -> None:
    """Both ends switch path (to the relay, say) at nearly the same instant with fresh
    sessions; a responder that was overdue (it never heard from the initiator, as through a
    relay that broke every packet) waits the grace again instead of initiating in step with
    the initiator, whose crossing handshake it would collide with."""
    a, b = await pair(world, tmp_path)
    assert a.agent.state is not None
    assert b.agent.state is not None
    a_key, b_key = a.agent.state.tunnel_key, b.agent.state.tunnel_key
    responder, initiator_key = (b, a_key) if a_key.raw < b_key.raw else (a, b_key)
    reconciler = responder.agent.reconciler
    world.clock.advance(timedelta(seconds=4))  # past the responder grace: overdue
    now = world.clock.now()
    overdue = reconciler.desired(now, {initiator_key: None}, Plan())
    assert initiator_key in overdue.initiator_for
    switched = reconciler.desired(
        now, {initiator_key: None}, Plan(switched=frozenset({initiator_key}))
    )
    assert initiator_key not in switched.initiator_for  # the grace starts again
    world.clock.advance(timedelta(seconds=4))
    later = reconciler.desired(world.clock.now(), {initiator_key: None}, Plan())
    assert initiator_key in later.initiator_for  # and ends: a silent initiator is not waited for
