"""`replace_relays` on the in-process control service over MemoryStore and SqliteStore: a new
list wakes and re-serials every active node in one audited unit of work; an unchanged or an
invalid list changes nothing."""

from __future__ import annotations

import pytest

from rustynet.domain.errors import RustynetError
from rustynet.domain.netmap import RelayEntry
from rustynet.domain.tls_pin import SpkiPin
from tests.integration.test_control_service import World, enroll, world

__all__ = ["world"]  # the store-parametrised fixture

RELAY = RelayEntry("relay-1", "wss://relay1.example.org:443/v1/relay", SpkiPin(bytes(32)))

pytestmark = pytest.mark.asyncio


async def _serial(w: World, node_id: str) -> int:
    async with w.store.unit_of_work() as uow:
        return await uow.serials.get(node_id)


async def _actions(w: World) -> list[str]:
    return [e.action for e in await w.service.list_audit(w.admin, 0, 1000)]


async def test_new_list_bumps_every_active_node_and_is_audited(world: World) -> None:
    a = await enroll(world, "a")
    b = await enroll(world, "b")
    before = {n.result.node_id: await _serial(world, n.result.node_id) for n in (a, b)}
    outcome = await world.service.replace_relays([RELAY], actor="config:control.toml")
    assert outcome.changed
    assert outcome.woken == 2
    for node_id, serial in before.items():
        assert await _serial(world, node_id) == serial + 1
    response = await world.service.peer_map(a.auth(), before[a.result.node_id], timeout=0)
    assert response is not None
    peer_map = a.acceptor.accept(response.envelope, world.clock.now())
    assert [r.id for r in peer_map.relays] == ["relay-1"]
    assert (await _actions(world)).count("relays.replaced") == 1


async def test_unchanged_or_invalid_list_changes_nothing(world: World) -> None:
    a = await enroll(world, "a")
    await world.service.replace_relays([RELAY], actor="test")
    serial = await _serial(world, a.result.node_id)
    audit = await _actions(world)
    same = await world.service.replace_relays([RELAY], actor="test")
    assert not same.changed
    with pytest.raises(RustynetError):
        await world.service.replace_relays([RELAY, RELAY], actor="test")  # duplicate id
    assert world.service.settings.relays == (RELAY,)
    assert await _serial(world, a.result.node_id) == serial
    assert await _actions(world) == audit
