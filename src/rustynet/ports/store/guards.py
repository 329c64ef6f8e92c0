"""Ports: the request guards' shared state (replay nonces, rate limits, enrollment challenges).

Every decision here is one atomic repository call, so several control instances on one
database share one budget and one single-use record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from rustynet.domain.challenges import ChallengeKind, ChallengeRecord
from rustynet.domain.limits import (
    BucketOutcome,
    BucketPolicy,
    BucketTable,
    FailureRecord,
    LimitPolicy,
)
from rustynet.domain.replay import NonceRecord


class NonceRepository(Protocol):
    """Persisted single-use nonces (`domain.replay.NonceRecord`): the live replay control."""

    async def insert(self, record: NonceRecord, now: datetime, capacity: int) -> None:
        """Remember `record.nonce` until `record.expires_at` in one atomic step: refuse with
        `ReplayedNonceError` if it is remembered and live at `now` (`now <= expires_at`), and
        with `ReplayCacheFullError` if `capacity` live nonces are remembered. Of concurrent
        inserts of one nonce exactly one succeeds."""
        ...

    async def purge(self, now: datetime) -> int:
        """Forget nonces whose retention ended before `now`; return how many."""
        ...

    async def count(self, now: datetime) -> int:
        """How many nonces are live at `now`."""
        ...


class LimiterRepository(Protocol):
    """Per-key GCRA timestamps and per-credential failure records (`domain.limits`).
    Every method is an atomic read-modify-write of one row (row lock / writer lock)."""

    async def take(
        self, table: BucketTable, key: str, now: datetime, bucket: BucketPolicy
    ) -> BucketOutcome:
        """One `limits.bucket_take` on the stored `tat`; stores the new `tat` if allowed."""
        ...

    async def load_tat(self, table: BucketTable, key: str) -> datetime | None:
        """The stored `tat` (None: full bucket), locked until the unit of work ends."""
        ...

    async def peek(self, table: BucketTable, key: str) -> datetime | None:
        """The stored `tat` (None: full bucket), read only: no row is written or locked."""
        ...

    async def store_tat(self, table: BucketTable, key: str, tat: datetime) -> None:
        """Write a `tat` computed from `load_tat` in this unit of work."""
        ...

    async def failures(self, credential: str) -> FailureRecord:
        """The credential's failure record (clear when none is stored)."""
        ...

    async def record_failure(
        self, credential: str, now: datetime, policy: LimitPolicy
    ) -> FailureRecord:
        """Apply `limits.after_failure` to the stored record; return the new record."""
        ...

    async def record_success(self, credential: str) -> None:
        """Apply `limits.after_success` (a clear record is deleted)."""
        ...

    async def reset(self, credential: str) -> None:
        """Admin action: forget the credential's failures and disabled flag."""
        ...

    async def prune(self, now: datetime) -> int:
        """Forget full buckets (`tat <= now`; they decide like absent ones); return how many."""
        ...


class ChallengeRepository(Protocol):
    """Single-use enrollment challenges shared by every instance."""

    async def issue(self, record: ChallengeRecord, now: datetime, capacity: int) -> None:
        """Store a new, unused challenge; `TooManyChallenges` when `capacity` challenges of its
        kind are live at `now` (exact, also across instances); `AlreadyExists` on a taken id."""
        ...

    async def get(self, kind: ChallengeKind, challenge_id: bytes) -> ChallengeRecord | None:
        """The challenge (used and expired ones too, until purged: the caller decides), or
        None."""
        ...

    async def consume(
        self, kind: ChallengeKind, challenge_id: bytes, now: datetime
    ) -> ChallengeRecord:
        """Mark the challenge used with ONE conditional UPDATE (unused and `now < expires_at`)
        whose row count decides, and return it; `NotFound` when it is unknown, used or expired
        (nothing changes). Of concurrent consumes of one challenge exactly one succeeds."""
        ...

    async def purge(self, now: datetime) -> int:
        """Forget challenges that expired before `now`; return how many."""
        ...

    async def count(self, kind: ChallengeKind, now: datetime) -> int:
        """How many challenges of `kind` are pending: unused and live (`now < expires_at`)."""
        ...
