"""One-time redemption is atomic on every adapter: two redemptions interleaved by hand.

The concurrency test (`tests/integration/test_store_concurrency.py`) races 50 enrollments, but
only PostgreSQL lets two units of work overlap: SQLite (`BEGIN IMMEDIATE`) and the memory store
(one lock) serialise whole units, so there a redemption without its condition would still pass
the race. Here the interleaving is written out — both redemptions read the credential, then
both write — so each write must itself check that what it was computed from still holds
(`CredentialRepository.apply_redemption`: SQL's conditional UPDATE, the memory store's
precondition check). Drop that condition on any adapter and these tests fail on it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from rustynet.domain.credentials import Credential, CredentialState, Redemption
from rustynet.ports.store import Store
from tests.contract.test_store import NOW, make_credential, store

__all__ = ["store"]  # the fixture: memory, SQLite and PostgreSQL


async def plan(store: Store, cred: Credential, seconds: int) -> Redemption:
    """Read the stored credential in a unit of work of its own and plan one redemption."""
    async with store.unit_of_work() as uow:
        current = await uow.credentials.get(cred.id)
    assert current is not None
    return current.redemption(NOW + timedelta(seconds=seconds))


async def apply(store: Store, redemption: Redemption) -> bool:
    async with store.unit_of_work() as uow:
        return await uow.credentials.apply_redemption(redemption)


async def stored(store: Store, cred: Credential) -> Credential | None:
    async with store.unit_of_work() as uow:
        return await uow.credentials.get(cred.id)


async def add(store: Store, cred: Credential) -> None:
    async with store.unit_of_work() as uow:
        await uow.credentials.add(cred)


@pytest.mark.asyncio
async def test_a_one_time_key_read_by_two_redemptions_is_spent_once(store: Store) -> None:
    """Both read the unused one-time key, both write: the first is applied, the second is
    refused and changes nothing (a second node would otherwise enroll with a used key)."""
    cred = make_credential(1)
    await add(store, cred)
    first, second = await plan(store, cred, 1), await plan(store, cred, 2)
    assert await apply(store, first) is True
    assert await apply(store, second) is False
    assert await stored(store, cred) == first.after
    assert first.after.state is CredentialState.USED


@pytest.mark.asyncio
async def test_two_redemptions_of_a_reusable_key_from_one_read_spend_two_uses_not_one(
    store: Store,
) -> None:
    """A reusable key with 3 uses, read by two redemptions at 1 use: only one is applied (the
    state is `created` for both, so only the use count can tell them apart); the loser re-reads
    and spends the next use, so the count is never lost."""
    cred = make_credential(1, reusable=True, uses=3)
    await add(store, cred)
    assert await apply(store, await plan(store, cred, 1)) is True
    first, second = await plan(store, cred, 2), await plan(store, cred, 3)
    assert first.expected_state is second.expected_state is CredentialState.CREATED
    assert await apply(store, first) is True
    assert await apply(store, second) is False
    retried = await plan(store, cred, 3)
    assert await apply(store, retried) is True
    after = await stored(store, cred)
    assert after is not None
    assert (after.uses, after.state) == (3, CredentialState.EXHAUSTED)


@pytest.mark.asyncio
async def test_a_redemption_read_before_a_revocation_is_refused(store: Store) -> None:
    """Read live, revoked by an admin before the write: the redemption is refused and the key
    stays revoked (the use count alone would not notice: a revocation spends no use)."""
    cred = make_credential(1)
    await add(store, cred)
    redemption = await plan(store, cred, 1)
    async with store.unit_of_work() as uow:
        revoked = await uow.credentials.revoke(cred.id, NOW + timedelta(seconds=1))
    assert await apply(store, redemption) is False
    assert await stored(store, cred) == revoked


@pytest.mark.asyncio
async def test_a_redemption_of_an_unknown_key_writes_nothing(store: Store) -> None:
    """A redemption whose credential is gone is refused, not inserted."""
    cred = make_credential(1)
    redemption = cred.redemption(NOW + timedelta(seconds=1))
    assert await apply(store, redemption) is False
    assert await stored(store, cred) is None
