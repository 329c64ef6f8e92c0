"""The request guards' shared state in memory: replay nonces, rate limits, challenges."""

from __future__ import annotations

from datetime import datetime

import attrs
from rustynet.adapters.storage.memory.state import MemoryState, spoil

from rustynet.domain.challenges import ChallengeKind, ChallengeRecord
from rustynet.domain.limits import (
    BucketOutcome,
    BucketPolicy,
    BucketTable,
    FailureRecord,
    LimitPolicy,
    after_failure,
    after_success,
    bucket_take,
)
from rustynet.domain.replay import NonceRecord, ReplayCacheFullError, ReplayedNonceError
from rustynet.ports.store import AlreadyExists, NotFound, TooManyChallenges


class MemoryNonces:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    async def insert(self, record: NonceRecord, now: datetime, capacity: int) -> None:
        expires_at = self._s.nonces.get(record.nonce)
        if expires_at is not None and now <= expires_at:
            raise ReplayedNonceError("nonce already used")
        if await self.count(now) >= capacity:
            raise ReplayCacheFullError("replay cache is full; refusing new signed requests")
        self._s.nonces[record.nonce] = record.expires_at

    async def purge(self, now: datetime) -> int:
        gone = [n for n, e in self._s.nonces.items() if e < now]
        for nonce in gone:
            del self._s.nonces[nonce]
        return len(gone)

    async def count(self, now: datetime) -> int:
        return sum(1 for e in self._s.nonces.values() if e >= now)


class MemoryLimiter:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    async def load_tat(self, table: BucketTable, key: str) -> datetime | None:
        return self._s.buckets.get((table, key))

    async def peek(self, table: BucketTable, key: str) -> datetime | None:
        return self._s.buckets.get((table, key))

    async def store_tat(self, table: BucketTable, key: str, tat: datetime) -> None:
        self._s.buckets[table, key] = tat

    async def take(
        self, table: BucketTable, key: str, now: datetime, bucket: BucketPolicy
    ) -> BucketOutcome:
        outcome = bucket_take(await self.load_tat(table, key), now, bucket)
        if outcome.allowed:
            await self.store_tat(table, key, outcome.tat)
        return outcome

    async def failures(self, credential: str) -> FailureRecord:
        return self._s.failures.get(credential, FailureRecord())

    def _write(self, credential: str, record: FailureRecord) -> None:
        if record.is_clear:
            self._s.failures.pop(credential, None)
        else:
            self._s.failures[credential] = record

    async def record_failure(
        self, credential: str, now: datetime, policy: LimitPolicy
    ) -> FailureRecord:
        updated = after_failure(await self.failures(credential), now, policy)
        self._write(credential, updated)
        return updated

    async def record_success(self, credential: str) -> None:
        self._write(credential, after_success(await self.failures(credential)))

    async def reset(self, credential: str) -> None:
        self._s.failures.pop(credential, None)

    async def prune(self, now: datetime) -> int:
        gone = [k for k, tat in self._s.buckets.items() if tat <= now]
        for key in gone:
            del self._s.buckets[key]
        return len(gone)


class MemoryChallenges:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    async def issue(self, record: ChallengeRecord, now: datetime, capacity: int) -> None:
        if await self.count(record.kind, now) >= capacity:
            raise TooManyChallenges(f"{capacity} {record.kind.value} challenges are live")
        if record.id in self._s.challenges:
            raise spoil(self._s, AlreadyExists("challenge id is taken"))
        self._s.challenges[record.id] = attrs.evolve(record, used=False)

    async def get(self, kind: ChallengeKind, challenge_id: bytes) -> ChallengeRecord | None:
        found = self._s.challenges.get(bytes(challenge_id))
        return found if found is not None and found.kind is kind else None

    async def consume(
        self, kind: ChallengeKind, challenge_id: bytes, now: datetime
    ) -> ChallengeRecord:
        found = await self.get(kind, challenge_id)
        if found is None or found.used or not now < found.expires_at:
            raise NotFound("no such live, unused challenge")
        used = attrs.evolve(found, used=True)
        self._s.challenges[used.id] = used
        return used

    async def purge(self, now: datetime) -> int:
        gone = [c for c, r in self._s.challenges.items() if r.expires_at < now]
        for challenge_id in gone:
            del self._s.challenges[challenge_id]
        return len(gone)

    async def count(self, kind: ChallengeKind, now: datetime) -> int:
        return sum(
            1
            for r in self._s.challenges.values()
            if r.kind is kind and not r.used and now < r.expires_at
        )
