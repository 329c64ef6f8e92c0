"""Races decided by the database, not by Python: many concurrent units of work over several
connections. SQLite runs several `SqliteStore`s (each its own writer connection) on one file;
PostgreSQL runs two `PostgresStore`s (two "control instances") with several pool connections
each, on a real throwaway PostgreSQL 15; memory runs many tasks on one store.

The HTTP-level version of the redemption race comes with the API; this is the store level."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self, TypeVar

import pytest
import pytest_asyncio
from rustynet.adapters.storage.memory import MemoryStore
from rustynet.adapters.storage.postgres import PostgresStore, PostgresUnitOfWork
from rustynet.adapters.storage.sql.credentials import SqlCredentials
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.domain.credentials import (
    Credential,
    CredentialExhausted,
    CredentialId,
    CredentialUsed,
)
from rustynet.domain.ipam import AddressPlan
from rustynet.domain.keys import SigningKey, TunnelKey, TunnelKeyScheme
from rustynet.domain.replay import NonceRecord, ReplayedNonceError
from rustynet.domain.scope import Scope
from rustynet.ports.store import NodeRecord, Store

T = TypeVar("T")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PLAN = AddressPlan(network=ipaddress.IPv4Network("100.64.0.0/24"))  # 254 usable: dense
CONCURRENCY = 50

Stores = list[Store]


@pytest_asyncio.fixture(params=["memory", "sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    """Several open stores on ONE database (memory: one store), each with its own
    connection(s); tasks are spread over them round-robin."""
    made: Stores
    if request.param == "memory":
        made = [MemoryStore(plan=PLAN)]
    elif request.param == "sqlite":
        made = [SqliteStore(tmp_path / "race.db", plan=PLAN) for _ in range(5)]
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        made = [PostgresStore(dsn, plan=PLAN, min_size=4, max_size=8) for _ in range(2)]
    for store in made:
        await store.open()
    try:
        yield made
    finally:
        for store in made:
            await store.close()


async def race(stores: Stores, n: int, job: Callable[[Store, int], Awaitable[T]]) -> list[object]:
    """Run `job` n times at once, spread over the stores; results or exceptions, in order."""
    start = asyncio.Event()

    async def one(i: int) -> T:
        await start.wait()
        return await job(stores[i % len(stores)], i)

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    await asyncio.sleep(0)
    start.set()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def credential(*, reusable: bool = False, uses: int | None = None) -> Credential:
    """A live credential (tags so it may be reusable)."""
    return Credential.create(
        id=CredentialId(b"\x05" * 16),
        secret_hash=b"\x06" * 32,
        scope=Scope.of(["tag:ci"]),
        now=NOW,
        reusable=reusable,
        max_uses=uses,
    )


async def enroll_with(store: Store, cred: Credential, i: int) -> NodeRecord:
    """What enrollment does in one unit of work: redeem, allocate, add the node."""
    async with store.unit_of_work() as uow:
        await uow.credentials.redeem(cred.id, NOW + timedelta(seconds=1))
        address = await uow.ipam.allocate(f"node-{i}")
        node = NodeRecord(
            id=f"node-{i}",
            name=f"host-{i}",
            identity_key=SigningKey.from_seed(i.to_bytes(32, "big")).public_key,
            tunnel_key=TunnelKey(TunnelKeyScheme.X25519, i.to_bytes(32, "big")),
            tunnel_key_expires_at=NOW + timedelta(days=180),
            overlay_ipv4=address,
            tags=cred.scope.tags,
            created_at=NOW,
        )
        await uow.nodes.add(node)
    return node


async def setup_credential(store: Store, cred: Credential) -> None:
    """Store the credential before the race."""
    async with store.unit_of_work() as uow:
        await uow.credentials.add(cred)


@pytest.mark.asyncio
async def test_one_time_credential_races_to_exactly_one_node(stores: Stores) -> None:
    """50 concurrent enrollments with one one-time credential: one node, 49 CredentialUsed."""
    cred = credential()
    await setup_credential(stores[0], cred)
    results = await race(stores, CONCURRENCY, lambda s, i: enroll_with(s, cred, i))
    nodes = [r for r in results if isinstance(r, NodeRecord)]
    assert len(nodes) == 1
    assert all(isinstance(r, CredentialUsed) for r in results if r not in nodes), results
    async with stores[-1].unit_of_work() as uow:
        assert await uow.nodes.list_all() == nodes
        stored = await uow.credentials.get(cred.id)
    assert stored is not None
    assert stored.uses == 1


@pytest.mark.asyncio
async def test_reusable_credential_with_three_uses_races_to_exactly_three(stores: Stores) -> None:
    """50 concurrent enrollments with a reusable credential (max_uses 3): exactly three."""
    cred = credential(reusable=True, uses=3)
    await setup_credential(stores[0], cred)
    results = await race(stores, CONCURRENCY, lambda s, i: enroll_with(s, cred, i))
    nodes = [r for r in results if isinstance(r, NodeRecord)]
    assert len(nodes) == 3
    assert all(isinstance(r, CredentialExhausted) for r in results if r not in nodes), results
    async with stores[-1].unit_of_work() as uow:
        assert len(await uow.nodes.list_all()) == 3
        stored = await uow.credentials.get(cred.id)
    assert stored is not None
    assert stored.uses == 3


async def allocate(store: Store, i: int) -> ipaddress.IPv4Address:
    """One allocation in its own unit of work."""
    async with store.unit_of_work() as uow:
        return await uow.ipam.allocate(f"node-{i}")


@pytest.mark.asyncio
async def test_concurrent_allocations_in_a_dense_pool_are_all_distinct(stores: Stores) -> None:
    """200 concurrent allocations in a /24 (254 usable, so probe sequences collide): 200
    distinct usable addresses, each stored for its node."""
    results = await race(stores, 200, allocate)
    addresses = [r for r in results if isinstance(r, ipaddress.IPv4Address)]
    assert len(addresses) == 200, [r for r in results if not isinstance(r, ipaddress.IPv4Address)]
    assert len(set(addresses)) == 200
    assert all(PLAN.usable(a) for a in addresses)
    async with stores[-1].unit_of_work() as uow:
        for i in range(0, 200, 37):
            assert await uow.ipam.lookup(f"node-{i}") == addresses[i]


async def insert_nonce(store: Store, _: int) -> str:
    """Insert the same nonce (capacity is not the limit here)."""
    async with store.unit_of_work() as uow:
        await uow.nonces.insert(NonceRecord(b"n" * 16, NOW + timedelta(minutes=3)), NOW, 1000)
    return "accepted"


@pytest.mark.asyncio
async def test_concurrent_inserts_of_one_nonce_have_one_winner(stores: Stores) -> None:
    """50 concurrent inserts of one nonce: one accepted, 49 ReplayedNonceError."""
    results = await race(stores, CONCURRENCY, insert_nonce)
    assert results.count("accepted") == 1
    assert all(isinstance(r, ReplayedNonceError) for r in results if r != "accepted"), results


@pytest.mark.asyncio
async def test_concurrent_serial_bumps_never_repeat_a_serial(stores: Stores) -> None:
    """50 concurrent bumps of one node's serial: the serials 1..50, each exactly once."""

    async def bump(store: Store, _: int) -> int:
        async with store.unit_of_work() as uow:
            return (await uow.serials.bump(["node"]))["node"]

    results = await race(stores, CONCURRENCY, bump)
    assert sorted(r for r in results if isinstance(r, int)) == list(range(1, CONCURRENCY + 1))


class GetThenPutCredentials(SqlCredentials):
    """BROKEN on purpose: checks in Python, then writes without the conditional WHERE."""

    async def redeem(self, credential_id: CredentialId, now: datetime) -> Credential:
        current = await self.get(credential_id)
        assert current is not None
        after = current.redeem(now)
        await self._ex.execute(
            self._d.sql("UPDATE credentials SET state = :s, uses = :u WHERE id = :id"),
            {"s": after.state.value, "u": after.uses, "id": credential_id.to_text()},
        )
        return after


class BrokenUnitOfWork(PostgresUnitOfWork):
    """A PostgreSQL unit of work whose credential repository is the broken one."""

    async def __aenter__(self) -> Self:
        entered = await super().__aenter__()
        repos = entered._repos
        assert repos is not None
        repos.credentials = GetThenPutCredentials(entered.executor())
        return entered


class BrokenPostgresStore(PostgresStore):
    """Hands out `BrokenUnitOfWork`s."""

    def unit_of_work(self) -> BrokenUnitOfWork:
        return BrokenUnitOfWork(self)


@pytest.mark.asyncio
async def test_the_race_test_catches_a_get_then_put_redemption(postgres_dsn: str) -> None:
    """Negative control: without the conditional UPDATE, PostgreSQL lets several of the 50
    concurrent enrollments through, and the race test above would see it."""
    stores: Stores = [BrokenPostgresStore(postgres_dsn, plan=PLAN, max_size=8) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        cred = credential()
        await setup_credential(stores[0], cred)
        results = await race(stores, CONCURRENCY, lambda s, i: enroll_with(s, cred, i))
    finally:
        for store in stores:
            await store.close()
    assert sum(isinstance(r, NodeRecord) for r in results) > 1
