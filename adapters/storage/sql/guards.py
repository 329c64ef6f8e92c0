# ruff: noqa: S608 - only module constants (column lists, dialect fragments, generated
# placeholder names) are interpolated into SQL; every value is a bound parameter.
"""The request guards' shared state in SQL: replay nonces, rate limits, enrollment challenges.

Each decision two instances could race for is one atomic step: a nonce is inserted if absent
(under a capacity bound), a limiter row is locked before its read-modify-write, a challenge is
consumed by one conditional UPDATE whose row count decides.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from rustynet.adapters.storage.sql.dialect import (
    Executor,
    Row,
    fetch_one,
    from_micros,
    opt_micros,
    opt_time,
    row_count,
    to_micros,
)

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
from rustynet.ports.store import NotFound, TooManyChallenges


class SqlNonces:
    """`NonceRepository` in SQL."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def insert(self, record: NonceRecord, now: datetime, capacity: int) -> None:
        """See `NonceRepository.insert`."""
        if self._d.lock_nonces is not None:
            await self._ex.execute(self._d.lock_nonces, {})  # capacity is exact, not racy
        at = to_micros(now)
        if await self.count(now) >= capacity:
            live = await fetch_one(
                self._ex,
                self._d.sql("SELECT 1 FROM nonces WHERE nonce = :n AND expires_at >= :now"),
                {"n": record.nonce, "now": at},
            )
            if live is not None:
                raise ReplayedNonceError("nonce already used")
            raise ReplayCacheFullError("replay cache is full; refusing new signed requests")
        # Insert if absent; an expired leftover row may be reused. Row count 0: replay.
        inserted = await row_count(
            self._ex,
            self._d.sql(
                "INSERT INTO nonces (nonce, expires_at) VALUES (:n, :e)"
                " ON CONFLICT (nonce) DO UPDATE SET expires_at = excluded.expires_at"
                " WHERE nonces.expires_at < :now"
            ),
            {"n": record.nonce, "e": to_micros(record.expires_at), "now": at},
        )
        if inserted != 1:
            raise ReplayedNonceError("nonce already used")

    async def purge(self, now: datetime) -> int:
        """See `NonceRepository.purge`."""
        return await row_count(
            self._ex,
            self._d.sql("DELETE FROM nonces WHERE expires_at < :now"),
            {"now": to_micros(now)},
        )

    async def count(self, now: datetime) -> int:
        """See `NonceRepository.count`."""
        row = await fetch_one(
            self._ex,
            self._d.sql("SELECT COUNT(*) FROM nonces WHERE expires_at >= :now"),
            {"now": to_micros(now)},
        )
        return int(row[0]) if row else 0


class SqlLimiter:
    """`LimiterRepository` in SQL: placeholder insert, then lock the row, then update it."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def load_tat(self, table: BucketTable, key: str) -> datetime | None:
        """See `LimiterRepository.load_tat`."""
        params = {"t": table.value, "k": key}
        # The placeholder row exists before the lock, so two first requests cannot both
        # see "no row" and both write (an absent row has nothing to lock).
        await self._ex.execute(
            self._d.sql(
                "INSERT INTO limiter_buckets (tbl, key, tat) VALUES (:t, :k, NULL)"
                " ON CONFLICT DO NOTHING"
            ),
            params,
        )
        row = await fetch_one(
            self._ex,
            self._d.sql(
                f"SELECT tat FROM limiter_buckets WHERE tbl = :t AND key = :k{self._d.for_update}"
            ),
            params,
        )
        return None if row is None or row[0] is None else from_micros(row[0])

    async def peek(self, table: BucketTable, key: str) -> datetime | None:
        """See `LimiterRepository.peek`."""
        row = await fetch_one(
            self._ex,
            self._d.sql("SELECT tat FROM limiter_buckets WHERE tbl = :t AND key = :k"),
            {"t": table.value, "k": key},
        )
        return None if row is None or row[0] is None else from_micros(row[0])

    async def store_tat(self, table: BucketTable, key: str, tat: datetime) -> None:
        """See `LimiterRepository.store_tat`."""
        await self._ex.execute(
            self._d.sql(
                "INSERT INTO limiter_buckets (tbl, key, tat) VALUES (:t, :k, :tat)"
                " ON CONFLICT (tbl, key) DO UPDATE SET tat = excluded.tat"
            ),
            {"t": table.value, "k": key, "tat": to_micros(tat)},
        )

    async def take(
        self, table: BucketTable, key: str, now: datetime, bucket: BucketPolicy
    ) -> BucketOutcome:
        """See `LimiterRepository.take`."""
        outcome = bucket_take(await self.load_tat(table, key), now, bucket)
        if outcome.allowed:
            await self.store_tat(table, key, outcome.tat)
        return outcome

    async def _locked_failures(self, credential: str) -> FailureRecord:
        await self._ex.execute(
            self._d.sql(
                "INSERT INTO limiter_failures (credential, consecutive, blocked_until, disabled)"
                " VALUES (:c, 0, NULL, 0) ON CONFLICT DO NOTHING"
            ),
            {"c": credential},
        )
        return await self._read_failures(credential, lock=True)

    async def _read_failures(self, credential: str, *, lock: bool) -> FailureRecord:
        suffix = self._d.for_update if lock else ""
        row = await fetch_one(
            self._ex,
            self._d.sql(
                "SELECT consecutive, blocked_until, disabled FROM limiter_failures"
                f" WHERE credential = :c{suffix}"
            ),
            {"c": credential},
        )
        if row is None:
            return FailureRecord()
        return FailureRecord(int(row[0]), opt_time(row[1]), bool(row[2]))

    async def _write_failures(self, credential: str, record: FailureRecord) -> None:
        if record.is_clear:
            await self._ex.execute(
                self._d.sql("DELETE FROM limiter_failures WHERE credential = :c"), {"c": credential}
            )
            return
        await self._ex.execute(
            self._d.sql(
                "UPDATE limiter_failures SET consecutive = :n, blocked_until = :b, disabled = :d"
                " WHERE credential = :c"
            ),
            {
                "n": record.consecutive,
                "b": opt_micros(record.blocked_until),
                "d": int(record.disabled),
                "c": credential,
            },
        )

    async def failures(self, credential: str) -> FailureRecord:
        """See `LimiterRepository.failures`."""
        return await self._read_failures(credential, lock=False)

    async def record_failure(
        self, credential: str, now: datetime, policy: LimitPolicy
    ) -> FailureRecord:
        """See `LimiterRepository.record_failure`."""
        updated = after_failure(await self._locked_failures(credential), now, policy)
        await self._write_failures(credential, updated)
        return updated

    async def record_success(self, credential: str) -> None:
        """See `LimiterRepository.record_success`."""
        current = await self._read_failures(credential, lock=True)
        await self._write_failures(credential, after_success(current))

    async def reset(self, credential: str) -> None:
        """See `LimiterRepository.reset`."""
        await self._ex.execute(
            self._d.sql("DELETE FROM limiter_failures WHERE credential = :c"), {"c": credential}
        )

    async def prune(self, now: datetime) -> int:
        """See `LimiterRepository.prune`."""
        return await row_count(
            self._ex,
            self._d.sql("DELETE FROM limiter_buckets WHERE tat IS NULL OR tat <= :now"),
            {"now": to_micros(now)},
        )


_CHALLENGE_COLUMNS: Final = "id, kind, subject, payload, expires_at, used"


def _challenge(row: Row) -> ChallengeRecord:
    return ChallengeRecord(
        id=bytes(row[0]),
        kind=ChallengeKind(row[1]),
        subject=row[2],
        payload=row[3],
        expires_at=from_micros(row[4]),
        used=bool(row[5]),
    )


class SqlChallenges:
    """`ChallengeRepository` in SQL: consumption is one conditional UPDATE."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def issue(self, record: ChallengeRecord, now: datetime, capacity: int) -> None:
        """See `ChallengeRepository.issue`."""
        if self._d.lock_challenges is not None:
            await self._ex.execute(self._d.lock_challenges, {})  # capacity is exact, not racy
        if await self.count(record.kind, now) >= capacity:
            raise TooManyChallenges(f"{capacity} {record.kind.value} challenges are live")
        await self._ex.execute(
            self._d.sql(
                f"INSERT INTO challenges ({_CHALLENGE_COLUMNS})"
                " VALUES (:id, :kind, :subject, :payload, :expires_at, 0)"
            ),
            {
                "id": record.id,
                "kind": record.kind.value,
                "subject": record.subject,
                "payload": record.payload,
                "expires_at": to_micros(record.expires_at),
            },
        )

    async def get(self, kind: ChallengeKind, challenge_id: bytes) -> ChallengeRecord | None:
        """See `ChallengeRepository.get`."""
        row = await fetch_one(
            self._ex,
            self._d.sql(
                f"SELECT {_CHALLENGE_COLUMNS} FROM challenges WHERE id = :id AND kind = :kind"
            ),
            {"id": bytes(challenge_id), "kind": kind.value},
        )
        return None if row is None else _challenge(row)

    async def consume(
        self, kind: ChallengeKind, challenge_id: bytes, now: datetime
    ) -> ChallengeRecord:
        """See `ChallengeRepository.consume` (a concurrent consumer waits for the row lock,
        then re-checks `used = 0` on the committed row and updates nothing)."""
        row = await fetch_one(
            self._ex,
            self._d.sql(
                "UPDATE challenges SET used = 1 WHERE id = :id AND kind = :kind AND used = 0"
                f" AND expires_at > :now RETURNING {_CHALLENGE_COLUMNS}"
            ),
            {"id": bytes(challenge_id), "kind": kind.value, "now": to_micros(now)},
        )
        if row is None:
            raise NotFound("no such live, unused challenge")
        return _challenge(row)

    async def purge(self, now: datetime) -> int:
        """See `ChallengeRepository.purge`."""
        return await row_count(
            self._ex,
            self._d.sql("DELETE FROM challenges WHERE expires_at < :now"),
            {"now": to_micros(now)},
        )

    async def count(self, kind: ChallengeKind, now: datetime) -> int:
        """See `ChallengeRepository.count`."""
        row = await fetch_one(
            self._ex,
            self._d.sql(
                "SELECT COUNT(*) FROM challenges"
                " WHERE kind = :kind AND used = 0 AND expires_at > :now"  # index challenges_pending
            ),
            {"kind": kind.value, "now": to_micros(now)},
        )
        return int(row[0]) if row else 0
