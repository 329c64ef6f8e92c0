"""Contract of the store methods several control instances rely on (scale-out.md), run
against memory, SQLite and a real PostgreSQL 15: challenges are single use (exactly one of
concurrent consumes wins, also from two stores on one database), capacity is exact, the
network generation counts up and survives a rollback-free commit only, `lock_writers` and
`announce` keep the unit-of-work contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from rustynet.adapters.storage.local_feed import LocalChangeFeed
from rustynet.adapters.storage.memory import MemoryStore
from rustynet.adapters.storage.postgres import PostgresStore
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.domain.errors import LocalProtocolError
from rustynet.ports.store import (
    ChallengeKind,
    ChallengeRecord,
    NotFound,
    Store,
    TooManyChallenges,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
pytestmark = pytest.mark.asyncio


def _maker(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], Store]:
    if kind == "memory":
        shared = MemoryStore()
        return lambda: shared
    if kind == "sqlite":
        return lambda: SqliteStore(tmp_path / "control.db")
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresStore(dsn, max_size=4)


@pytest_asyncio.fixture(params=["memory", "sqlite", "postgres"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two open stores on one database (for memory: the same store twice)."""
    make = _maker(request.param, tmp_path, request)
    first, second = make(), make()
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


def _record(n: int = 0) -> ChallengeRecord:
    return ChallengeRecord(
        id=bytes([n]) * 32,
        kind=ChallengeKind.ENROLLMENT,
        subject=f"subject-{n}",
        payload='{"x":1}',
        expires_at=NOW + timedelta(seconds=60),
    )


async def test_challenge_is_consumed_exactly_once(stores: tuple[Store, Store]) -> None:
    """Issued on one store, consumed on the other once; a second consume is NotFound."""
    a, b = stores
    async with a.unit_of_work() as uow:
        await uow.challenges.issue(_record(), NOW, 10)
    async with b.unit_of_work() as uow:
        used = await uow.challenges.consume(ChallengeKind.ENROLLMENT, _record().id, NOW)
    assert used.used
    assert used.payload == _record().payload
    with pytest.raises(NotFound):
        async with a.unit_of_work() as uow:
            await uow.challenges.consume(ChallengeKind.ENROLLMENT, _record().id, NOW)
    async with a.unit_of_work() as uow:
        stored = await uow.challenges.get(ChallengeKind.ENROLLMENT, _record().id)
    assert stored is not None
    assert stored.used


async def test_concurrent_consumes_of_one_challenge_have_one_winner(
    stores: tuple[Store, Store],
) -> None:
    """Ten consumes at once, alternating between the two stores: exactly one succeeds."""
    a, b = stores
    async with a.unit_of_work() as uow:
        await uow.challenges.issue(_record(), NOW, 10)

    async def consume(store: Store) -> bool:
        try:
            async with store.unit_of_work() as uow:
                await uow.challenges.consume(ChallengeKind.ENROLLMENT, _record().id, NOW)
        except NotFound:
            return False
        return True

    results = await asyncio.gather(*(consume((a, b)[n % 2]) for n in range(10)))
    assert results.count(True) == 1


async def test_expired_and_unknown_challenges_are_not_consumable(
    stores: tuple[Store, Store],
) -> None:
    """Consumption checks freshness and the id; a failed consume changes nothing."""
    a, _ = stores
    async with a.unit_of_work() as uow:
        await uow.challenges.issue(_record(), NOW, 10)
    for kind, challenge_id, at in (
        (ChallengeKind.ENROLLMENT, _record().id, NOW + timedelta(seconds=60)),
        (ChallengeKind.ENROLLMENT, bytes([9]) * 32, NOW),
    ):
        with pytest.raises(NotFound):
            async with a.unit_of_work() as uow:
                await uow.challenges.consume(kind, challenge_id, at)
    async with a.unit_of_work() as uow:
        assert (await uow.challenges.consume(ChallengeKind.ENROLLMENT, _record().id, NOW)).used


async def test_challenge_capacity_is_exact_and_purge_frees_it(
    stores: tuple[Store, Store],
) -> None:
    """At `capacity` pending challenges the next is refused (on either store); consuming one or
    purging expired ones frees room."""
    a, b = stores
    for n in range(3):
        async with (a, b)[n % 2].unit_of_work() as uow:
            await uow.challenges.issue(_record(n), NOW, 3)
    with pytest.raises(TooManyChallenges):
        async with b.unit_of_work() as uow:
            await uow.challenges.issue(_record(7), NOW, 3)
    async with a.unit_of_work() as uow:
        assert await uow.challenges.count(ChallengeKind.ENROLLMENT, NOW) == 3
    async with b.unit_of_work() as uow:  # a used challenge is no longer pending: room again
        await uow.challenges.consume(ChallengeKind.ENROLLMENT, _record(1).id, NOW)
        assert await uow.challenges.count(ChallengeKind.ENROLLMENT, NOW) == 2
        await uow.challenges.issue(_record(7), NOW, 3)
    later = NOW + timedelta(seconds=61)
    async with a.unit_of_work() as uow:
        assert await uow.challenges.purge(later) == 4
        assert await uow.challenges.count(ChallengeKind.ENROLLMENT, later) == 0


async def test_generation_counts_up_and_rolls_back(stores: tuple[Store, Store]) -> None:
    """The network generation starts at 0, each bump is seen by the other store after
    commit, and a rolled-back bump leaves no trace."""
    a, b = stores
    async with a.unit_of_work() as uow:
        assert await uow.serials.generation() == 0
        await uow.lock_writers()
        assert await uow.serials.bump_generation() == 1
        await uow.announce(["node_a"])
    with pytest.raises(RuntimeError):  # noqa: PT012 - the whole unit of work rolls back
        async with b.unit_of_work() as uow:
            await uow.serials.bump_generation()
            raise RuntimeError("roll back")
    async with b.unit_of_work() as uow:
        assert await uow.serials.generation() == 1


async def test_challenge_records_validate_their_fields() -> None:
    """Ids shorter than 128 bits, naive times and oversized payloads are refused."""
    with pytest.raises(LocalProtocolError):
        ChallengeRecord(bytes(8), ChallengeKind.ENROLLMENT, "n", "", NOW)
    with pytest.raises(LocalProtocolError):
        ChallengeRecord(bytes(32), ChallengeKind.ENROLLMENT, "n", "", NOW.replace(tzinfo=None))
    with pytest.raises(LocalProtocolError):
        ChallengeRecord(bytes(32), ChallengeKind.ENROLLMENT, "n", "x" * 5000, NOW)


async def test_local_change_feed_has_one_subscriber_and_stops_on_close() -> None:
    """The one-instance feed delivers only what is published, to one subscriber, until
    closed."""
    feed = LocalChangeFeed()
    heard: list[frozenset[str] | None] = []
    await feed.subscribe(heard.append)
    with pytest.raises(LocalProtocolError):
        await feed.subscribe(heard.append)
    feed.publish(frozenset({"n1"}))
    await feed.close()
    feed.publish(None)
    assert heard == [frozenset({"n1"})]
