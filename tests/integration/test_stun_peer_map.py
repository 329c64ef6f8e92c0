"""The control plane's STUN list (`ControlSettings.stun_servers`, from control.toml [stun])
reaches every node inside its signed peer map, in order."""

from __future__ import annotations

import pytest
from rustynet.adapters.storage.memory import MemoryStore

from tests.integration.test_control_service import POLICY, enroll, make_world

STUN = ("203.0.113.1:3478", "203.0.113.1:3479", "[2001:db8::1]:3478")


@pytest.mark.asyncio
async def test_every_node_gets_the_stun_servers_in_its_signed_map() -> None:
    world = await make_world(MemoryStore(), stun=STUN)
    try:
        await world.service.put_policy(world.admin, POLICY)
        for name in ("server", "laptop"):
            node = await enroll(world, name)
            response = await world.service.peer_map(node.auth(), 0, timeout=0)
            assert response is not None
            peer_map = node.acceptor.accept(response.envelope, world.clock.now())
            assert peer_map.stun == STUN
    finally:
        await world.store.close()
