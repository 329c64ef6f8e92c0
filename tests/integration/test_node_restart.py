"""A node agent restarted after a crash: no peer before the control plane speaks; a peer
revoked while the daemon was down is never configured again; the saved (signed) map applies on
its own only after a bounded time without control, and `status` says so.

Real in-process control plane (ControlService on MemoryStore), in-memory tunnel and firewall;
the tunnel records every peer it was ever given, so "never" is checked, not sampled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend

from rustynet.application.node import STORED_MAP_FALLBACK
from rustynet.domain.keys import TunnelKey
from rustynet.domain.tunnel import PeerDiff
from tests.integration.test_control_service import World, world_with_policy
from tests.integration.test_node_agent import Node, joined, make_agent

pytestmark = pytest.mark.asyncio


class RecordingTunnel(MemoryTunnelBackend):
    """The in-memory tunnel, remembering every peer key any diff ever added."""

    def __init__(self) -> None:
        super().__init__()
        self.ever_added: set[TunnelKey] = set()

    async def apply(self, diff: PeerDiff) -> None:
        self.ever_added |= {p.key for p in (*diff.add, *diff.update)}
        await super().apply(diff)


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    """A control plane with a client→server:22 policy."""
    async with world_with_policy() as made:
        yield made


async def _mesh(w: World, tmp: Path) -> tuple[Node, Node, Node]:
    """A (client) sees B and C (servers); everyone has applied its first map."""
    a = await joined(w, tmp, "a", "tag:client", "198.51.100.21")
    b = await joined(w, tmp, "b", "tag:server", "198.51.100.22")
    c = await joined(w, tmp, "c", "tag:server", "198.51.100.23")
    for node in (a, b, c, a):
        await node.agent.step(timeout=0)
    return a, b, c


def _restarted(w: World, a: Node, tmp: Path) -> tuple[Node, RecordingTunnel]:
    """A new agent on A's key store and state file (the daemon after a kill -9)."""
    tunnel = RecordingTunnel()
    again = make_agent(w, a, tmp, "a", "198.51.100.21", tunnel=tunnel)
    return again, tunnel


def _key(node: Node) -> TunnelKey:
    assert node.agent.state is not None
    return node.agent.state.tunnel_key


async def test_peer_revoked_while_down_is_never_configured_after_restart(
    world: World, tmp_path: Path
) -> None:
    """A's saved map holds C; C is revoked while A is down; the restarted A configures no
    peer before its first poll and then only B: C's key never reaches A's tunnel."""
    a, b, c = await _mesh(world, tmp_path)
    assert set(await a.tunnel.peers()) == {_key(b), _key(c)}
    assert a.agent.state is not None
    assert a.agent.state.last_peer_map is not None  # C is in the saved, signed map
    assert c.agent.state is not None
    await world.service.revoke_node(world.admin, c.agent.state.node_id)

    again, tunnel = _restarted(world, a, tmp_path)
    await again.agent.start()
    await again.agent.reconcile()
    assert await tunnel.peers() == {}
    assert (await again.agent.status()).peermap_source.startswith("none (waiting")
    assert await again.agent.step(timeout=0)
    assert set(await tunnel.peers()) == {_key(b)}
    assert _key(c) not in tunnel.ever_added
    assert (await again.agent.status()).peermap_source == "control"


async def test_without_control_the_stored_map_applies_only_after_the_bound(
    world: World, tmp_path: Path
) -> None:
    """Control unreachable at start: no peer until `stored_map_fallback` has passed, then the
    saved map, with status saying "stored (control plane unreachable since T)"; once control
    answers again, the source is "control"."""
    a, b, _ = await _mesh(world, tmp_path)
    again, tunnel = _restarted(world, a, tmp_path)
    again.control.reachable = False
    started = world.clock.now()
    await again.agent.start()
    world.clock.advance(STORED_MAP_FALLBACK - timedelta(seconds=1))
    await again.agent.reconcile()
    assert await tunnel.peers() == {}
    world.clock.advance(timedelta(seconds=1))
    await again.agent.reconcile()
    assert _key(b) in await tunnel.peers()
    status = await again.agent.status()
    assert status.peermap_source == (
        f"stored (control plane unreachable since {started.isoformat()})"
    )
    assert status.to_json()["peermap_source"] == status.peermap_source
    again.control.reachable = True
    await again.agent.step(timeout=0)
    assert (await again.agent.status()).peermap_source == "control"
    assert _key(b) in await tunnel.peers()
