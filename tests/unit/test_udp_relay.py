"""UDP relay allocations and the bind rule (`rustynet.domain.udp_relay`): who may bind a side,
replays, re-binding, bounds per node and in total, expiry and renewal; the forwarder's queue
(coalescing, urgent work first)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.udp_relay import (
    BIND_MAGIC,
    BIND_PACKET_BYTES,
    Allocation,
    AllocationRefusedError,
    AllocationTable,
    BindOutcome,
    ForwardingQueue,
    Side,
    UdpRelayLimits,
    bind_packet,
)
from tests.doubles import CountingEntropy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(seconds=120)
A_SRC = ("203.0.113.20", 50001)
B_SRC = ("203.0.113.21", 50002)
EVIL = ("203.0.113.66", 4444)


def _table(**limits: int) -> AllocationTable:
    return AllocationTable(UdpRelayLimits(**limits), CountingEntropy())


def _pair(table: AllocationTable) -> tuple[Allocation, Side, Side]:
    allocation, a = table.ask("node-a", "node-b", LATER)
    again, b = table.ask("node-b", "node-a", LATER)
    assert again is allocation
    return allocation, a, b


def _bind(table: AllocationTable, side: Side, source: tuple[str, int], counter: int) -> BindOutcome:
    (allocation,) = table
    packet = bind_packet(side.key, allocation.allocation_id, side.port, counter)
    return table.bind(side.port, source, packet)[0]


def test_first_ask_allocates_a_port_pair_and_the_peers_ask_gets_the_other_port() -> None:
    table = _table()
    allocation, a, b = _pair(table)
    assert a.port != b.port
    assert a.key != b.key
    assert len(table) == 1
    assert not allocation.active


def test_valid_binds_from_each_side_activate_the_allocation() -> None:
    table = _table()
    allocation, a, b = _pair(table)
    assert _bind(table, a, A_SRC, 1) is BindOutcome.BOUND
    half = allocation.active
    assert _bind(table, b, B_SRC, 1) is BindOutcome.BOUND
    assert (half, allocation.active) == (False, True)
    assert (a.source, b.source) == (A_SRC, B_SRC)


def test_a_bind_with_the_wrong_key_binds_nothing() -> None:
    """Whoever sends first without the side's key cannot take the port."""
    table = _table()
    allocation, a, b = _pair(table)
    forged = bind_packet(b.key, allocation.allocation_id, a.port, 1)
    assert table.bind(a.port, EVIL, forged)[0] is BindOutcome.REFUSED
    assert a.source is None
    assert _bind(table, a, A_SRC, 1) is BindOutcome.BOUND


def test_a_replayed_bind_from_another_address_is_ignored() -> None:
    """A captured valid bind sent again (same counter) from elsewhere does not re-bind."""
    table = _table()
    allocation, a, _ = _pair(table)
    packet = bind_packet(a.key, allocation.allocation_id, a.port, 7)
    assert table.bind(a.port, A_SRC, packet)[0] is BindOutcome.BOUND
    assert table.bind(a.port, EVIL, packet)[0] is BindOutcome.REFUSED
    older = bind_packet(a.key, allocation.allocation_id, a.port, 6)
    assert table.bind(a.port, EVIL, older)[0] is BindOutcome.REFUSED
    assert a.source == A_SRC


def test_a_bind_for_the_other_port_is_refused() -> None:
    """The MAC covers the relay port: a side's bind sent to the peer's port binds nothing."""
    table = _table()
    allocation, a, b = _pair(table)
    packet = bind_packet(a.key, allocation.allocation_id, a.port, 1)
    assert table.bind(b.port, EVIL, packet)[0] is BindOutcome.REFUSED


def test_a_fresh_valid_bind_from_a_new_source_rebinds() -> None:
    table = _table()
    _, a, _ = _pair(table)
    assert _bind(table, a, A_SRC, 1) is BindOutcome.BOUND
    assert _bind(table, a, A_SRC, 2) is BindOutcome.REFRESHED
    assert _bind(table, a, EVIL, 3) is BindOutcome.REBOUND  # the node's NAT moved
    assert a.source == EVIL


def test_the_side_nobody_asked_for_cannot_be_bound_yet() -> None:
    table = _table()
    allocation, _ = table.ask("node-a", "node-b", LATER)
    b = allocation.second
    packet = bind_packet(b.key, allocation.allocation_id, b.port, 1)
    assert table.bind(b.port, B_SRC, packet)[0] is BindOutcome.REFUSED


@given(st.binary(max_size=BIND_PACKET_BYTES + 4))
def test_arbitrary_datagrams_never_bind(data: bytes) -> None:
    table = _table()
    _, a, _ = _pair(table)
    assert table.bind(a.port, EVIL, BIND_MAGIC + data)[0] is BindOutcome.REFUSED
    assert table.bind(a.port, EVIL, data)[0] is BindOutcome.REFUSED


def test_allocations_are_bounded_per_node_and_in_total() -> None:
    table = _table(per_node=2, total=3, port_first=40000, port_last=40009)
    table.ask("node-a", "p1", LATER)
    table.ask("node-a", "p2", LATER)
    with pytest.raises(AllocationRefusedError) as per_node:
        table.ask("node-a", "p3", LATER)
    assert per_node.value.reason == "node_limit"
    table.ask("node-b", "p1", LATER)
    with pytest.raises(AllocationRefusedError) as total:
        table.ask("node-c", "p1", LATER)
    assert total.value.reason == "relay_full"
    # Asking again for an existing pair costs nothing.
    table.ask("node-a", "p1", LATER)


@pytest.mark.parametrize("peer", ["", "node-a", "x" * 65, 7, None, "n\u00e9", "a\nb"])
def test_bad_peers_are_refused(peer: object) -> None:
    with pytest.raises(AllocationRefusedError):
        _table().ask("node-a", peer, LATER)


def test_allocations_expire_with_the_earlier_token_and_renew_with_it() -> None:
    table = _table()
    allocation, _, _ = _pair(table)
    table.renew("node-a", LATER + timedelta(seconds=100))
    assert allocation.expires_at == LATER
    assert table.expire(LATER - timedelta(seconds=1)) == []
    table.renew("node-b", LATER + timedelta(seconds=50))
    assert table.expire(LATER) == []
    assert table.expire(LATER + timedelta(seconds=50)) == [allocation]
    assert len(table) == 0


def test_removal_frees_the_ports_and_the_node_budget() -> None:
    table = _table(per_node=1, total=1, port_first=40000, port_last=40001)
    allocation, _ = table.ask("node-a", "node-b", LATER)
    with pytest.raises(AllocationRefusedError):
        table.ask("node-a", "node-c", LATER)
    assert table.remove_node("node-b") == [allocation]
    again, side = table.ask("node-a", "node-c", LATER)
    assert side.port == 40000
    assert again.allocation_id != allocation.allocation_id


def test_limits_must_fit_the_port_range() -> None:
    with pytest.raises(LocalProtocolError):
        UdpRelayLimits(port_first=40000, port_last=40009, total=6)
    with pytest.raises(LocalProtocolError):
        UdpRelayLimits(port_first=80, port_last=40000)


def _allocations(n: int) -> list[Allocation]:
    table = _table(per_node=n, total=n)
    return [table.ask("node-a", f"node-{i}", LATER)[0] for i in range(n)]


def test_the_forwarding_queue_keeps_one_entry_per_allocation() -> None:
    """A renewal cycle refreshes each allocation once per side: one entry each; an install
    absorbs a refresh (it carries the expiry too); a removal replaces either."""
    x, y, z = _allocations(3)
    queue = ForwardingQueue()
    for allocation in (x, y, x, y, z):
        queue.refresh(allocation)
    queue.install(y)
    queue.refresh(y)
    queue.remove(z)
    queue.install(x)
    queue.remove(x)
    assert len(queue) == 3
    batch = queue.take(100)
    assert (batch.installs, batch.refreshes, batch.removals) == ((y,), (), (z, x))
    assert len(queue) == 0
    assert len(queue.take(100)) == 0


def test_installs_and_removals_never_wait_behind_refreshes() -> None:
    """Every drain takes all urgent work and at most `refresh_limit` refreshes, oldest
    first: a new pair's install or a revoked node's teardown queued after a renewal storm
    goes into the next drain."""
    *renewed, new, revoked = _allocations(12)
    queue = ForwardingQueue()
    for allocation in renewed:
        queue.refresh(allocation)
    queue.install(new)
    queue.remove(revoked)
    first = queue.take(4)
    assert (first.installs, first.removals) == ((new,), (revoked,))
    assert first.refreshes == tuple(renewed[:4])
    queue.install(renewed[9])  # a re-bind while its refresh waits: it becomes urgent
    second = queue.take(4)
    assert (second.installs, second.refreshes) == ((renewed[9],), tuple(renewed[4:8]))
    assert queue.take(4).refreshes == (renewed[8],)
