"""`rustynet status` reports the path controller's phase, not "any past handshake" (issue 11).

The agent runs against the in-process control plane with the real `RelayBridge` (so the path
controller runs) and an in-memory tunnel whose handshake times the test sets: the one thing a
memory tunnel cannot produce by itself. A NATed peer whose tunnel still holds a handshake from
before the current direct attempt used to show `direct` while pings failed; it must show
`trying` until a handshake on the current path confirms it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest
import pytest_asyncio
import structlog
from rustynet.adapters.control_plane_local import LocalControlPlane
from rustynet.adapters.firewall.memory import MemoryFirewall
from rustynet.adapters.keystore.memory import MemoryKeystore
from rustynet.adapters.node_state_file import FileNodeStateStore
from rustynet.adapters.relay.bridge import RelayBridge
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend

from rustynet.application.node import AgentSettings, NodeAgent
from rustynet.domain.keys import TunnelKey
from rustynet.domain.tunnel import PeerStats
from rustynet.ports.wire.v1 import CreateJoinKeyRequest
from tests.integration.test_control_service import World, world_with_policy

pytestmark = pytest.mark.asyncio


class HandshakeTunnel(MemoryTunnelBackend):
    """The memory tunnel, plus the handshake times the test says the peers made."""

    def __init__(self) -> None:
        super().__init__()
        self.handshakes: dict[TunnelKey, datetime] = {}

    async def stats(self) -> Mapping[TunnelKey, PeerStats]:
        base = await super().stats()
        return {k: attrs.evolve(s, last_handshake=self.handshakes.get(k)) for k, s in base.items()}


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    """An in-process control plane over a memory store, with POLICY."""
    async with world_with_policy() as made:
        yield made


async def _agent(
    w: World, tmp: Path, name: str, tag: str, ip: str, tunnel: MemoryTunnelBackend
) -> NodeAgent:
    keystore = MemoryKeystore()
    keystore.open()
    agent = NodeAgent(
        control=LocalControlPlane(w.service, client_ip=ip),
        tunnel=tunnel,
        firewall=MemoryFirewall(),
        keystore=keystore,
        state_store=FileNodeStateStore(tmp / f"{name}.json"),
        clock=w.clock,
        entropy=w.entropy,
        settings=AgentSettings(interface=f"rs{name}", endpoints=(f"{ip}:41641",)),
        bridge=RelayBridge(lambda: None),
    )
    created = await w.service.create_join_key(w.admin, CreateJoinKeyRequest(tags=(tag,)))
    await agent.join(created.token, name)
    await agent.start()
    return agent


async def test_status_is_trying_until_the_controller_confirms_direct(
    world: World, tmp_path: Path
) -> None:
    """A handshake older than the controller's direct attempt shows `trying` (phase
    direct-trying), a handshake after it shows `direct` (direct-up), and `status --json`
    carries the phase."""
    tunnel = HandshakeTunnel()
    a = await _agent(world, tmp_path, "a", "tag:client", "198.51.100.31", tunnel)
    b = await _agent(world, tmp_path, "b", "tag:server", "198.51.100.32", MemoryTunnelBackend())
    assert await a.step(timeout=0)
    assert await b.step(timeout=0)
    await a.step(timeout=0)
    assert b.state is not None
    b_key = b.state.tunnel_key

    await a.reconcile()  # the controller starts its direct attempt for B now
    (before,) = (await a.status()).peers
    assert (before.path.text(), before.phase) == ("trying", "direct-trying")

    # The tunnel reports a handshake from before this attempt (an old session): not proof.
    tunnel.handshakes[b_key] = world.clock.now() - timedelta(seconds=10)
    world.clock.advance(timedelta(seconds=1))
    await a.reconcile()
    (stale,) = (await a.status()).peers
    assert stale.last_handshake is not None
    assert (stale.path.text(), stale.phase) == ("trying", "direct-trying")
    doc = (await a.status()).to_json()["peers"]
    assert isinstance(doc, list)
    assert doc[0]["path"] == "trying"
    assert (doc[0]["endpoint"], doc[0]["endpoint_kind"], doc[0]["relay"]) == (None, None, None)
    assert doc[0]["phase"] == "direct-trying"

    # A handshake on the current path confirms it.
    tunnel.handshakes[b_key] = world.clock.now()
    world.clock.advance(timedelta(seconds=1))
    with structlog.testing.capture_logs() as logs:
        await a.reconcile()
    (changed,) = [e for e in logs if e["event"] == "path.changed"]
    # The log speaks the same vocabulary as status (`PathView.text`).
    assert changed["path"] == "direct 198.51.100.32:41641 (configured)"
    assert (changed["from_phase"], changed["to_phase"]) == ("direct-trying", "direct-up")
    (confirmed,) = (await a.status()).peers
    assert (confirmed.path.kind, confirmed.phase) == ("direct", "direct-up")
    # The endpoint in use is B's configured underlay endpoint, and says so.
    assert confirmed.path.text() == "direct 198.51.100.32:41641 (configured)"
    assert confirmed.path.to_json() == {
        "path": "direct",
        "endpoint": "198.51.100.32:41641",
        "endpoint_kind": "configured",
        "relay": None,
        "relay_transport": None,
    }
    for agent in (a, b):
        await agent.teardown()
