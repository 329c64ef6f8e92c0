"""Authentication budgets per source: failures (checked before any work, folded in the audit
log) and authenticated admin calls.

The one rule: a source that has used up its failure budget is answered 429 before anything is
looked up or written, and the audit log grows by a bounded amount however fast failures come.

Theory of operation.

* Every authenticated route (node access token, token renewal, enrollment and its proof, admin
  API key) calls `admit(ip)` first: one read of the source network's failure bucket
  (`BucketTable.AUTH_FAILURE`, GCRA, `LimitPolicy.auth_failures_per_ip`, default burst 20 then
  10 per minute). An empty bucket is 429 with `Retry-After`; the read writes and locks nothing.
  Successes never take from this bucket (a client behind the same address keeps working while
  it is not empty; the admin routes charge successes to their own, larger bucket).
* A failure is `failed(...)`: in ONE unit of work it takes a token from that bucket (if another
  failure took the last one meanwhile, the unit writes nothing and the answer is 429), counts
  the failure against the credential (backoff and lockout) and hands the event to the
  `AuditFolder`: the first of a key is written at once, repeats of it within the fold window
  are only counted and later written as one summary entry (count, first and last seen).
* `flush(now)` (the periodic tick) writes the summaries of closed windows; `flush()` (graceful
  shutdown) writes all of them, so no counted failure is lost.

Bound: from one source network, at most `burst + ⌊W / T⌋` failures are admitted in any window W
(T = the bucket's refill interval), each writes at most one entry at once and one summary
later, so at most twice as many audit entries (docs/threat-model/auth-controls.md derives the
database bound from that).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta

from rustynet.application.audit_writer import AuditWriter
from rustynet.application.errors import RateLimited
from rustynet.domain.audit_fold import AuditFolder, FoldKey, Summary
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.limits import BucketPolicy, LimitPolicy, bucket_take, ip_key
from rustynet.domain.signed import JsonValue
from rustynet.ports.clock import Clock
from rustynet.ports.store import BucketTable, Store, StoreError, UnitOfWork

WriteUnit = Callable[[], AbstractAsyncContextManager[UnitOfWork]]


class _OverBudget(Exception):  # noqa: N818 - internal signal: roll the unit back, answer 429
    def __init__(self, retry_after: timedelta) -> None:
        super().__init__("failure budget used up")
        self.retry_after = retry_after


def _seconds(wait: timedelta) -> int:
    return max(1, int(-(-wait.total_seconds() // 1)))


class AuthGuard:
    """The failure budget, the folded audit of failures and the authenticated-admin bucket of
    one control process."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        audit: AuditWriter,
        write: WriteUnit,
        policy: LimitPolicy,
        admin_bucket: BucketPolicy,
        folder: AuditFolder | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.audit = audit
        self.write = write
        self.policy = policy
        self.admin_bucket = admin_bucket
        self.folder = folder if folder is not None else AuditFolder()

    def source_key(self, ip: str) -> str:
        """The bucket key of a client address (its /32 or /64); a non-IP shares one key."""
        try:
            return ip_key(ip, self.policy)
        except LocalProtocolError:
            return "not-an-ip"

    def _refuse(self, wait: timedelta) -> RateLimited:
        return RateLimited(_seconds(wait), "too many failed authentications from this address")

    async def admit(self, ip: str) -> None:
        """RateLimited (429) when the source has no failure left; reads, never writes."""
        try:
            async with self.store.unit_of_work() as uow:
                await self.check(uow, ip, self.clock.now())
        except (StoreError, LocalProtocolError):
            raise self._refuse(self.policy.unavailable_retry_after) from None  # fail closed

    async def check(self, uow: UnitOfWork, ip: str, now: datetime) -> None:
        """`admit` inside the caller's unit of work (one read of the failure bucket)."""
        try:
            tat = await uow.limiter.peek(BucketTable.AUTH_FAILURE, self.source_key(ip))
        except (StoreError, LocalProtocolError):
            raise self._refuse(self.policy.unavailable_retry_after) from None  # fail closed
        outcome = bucket_take(tat, now, self.policy.auth_failures_per_ip)
        if not outcome.allowed:
            raise self._refuse(outcome.retry_after or self.policy.unavailable_retry_after)

    async def authenticated_admin(self, uow: UnitOfWork, ip: str, now: datetime) -> None:
        """Charge an authenticated admin call to the source's admin bucket (failures never
        take from it); RateLimited when it is empty or cannot be read."""
        try:
            outcome = await uow.limiter.take(
                BucketTable.ADMIN, self.source_key(ip), now, self.admin_bucket
            )
        except (StoreError, LocalProtocolError):
            raise self._refuse(self.policy.unavailable_retry_after) from None
        if not outcome.allowed:
            raise RateLimited(_seconds(outcome.retry_after or self.policy.unavailable_retry_after))

    async def failed(
        self,
        *,
        ip: str,
        credential: str | None,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        """Charge one failure to the source and the credential and audit it (folded).
        RateLimited instead, with nothing written, when the source's budget ran out meanwhile."""
        now = self.clock.now()
        key = FoldKey.of(action, actor, target, details)
        summaries: list[Summary] = []
        try:
            async with self.write() as uow:
                await self._take_failure(uow, ip, now)
                if credential is not None:
                    await uow.limiter.record_failure(credential, now, self.policy)
                first, summaries = self.folder.observe(key, now)
                await self._append(uow, now, summaries)
                if first is not None:
                    body = json.loads(first.details_json)
                    await self.audit.append(uow, now, first.actor, first.action, first.target, body)
        except _OverBudget as over:
            raise self._refuse(over.retry_after) from None
        except BaseException:
            self.folder.restore(summaries)  # rolled back: write them with a later flush
            raise

    async def _take_failure(self, uow: UnitOfWork, ip: str, now: datetime) -> None:
        outcome = await uow.limiter.take(
            BucketTable.AUTH_FAILURE, self.source_key(ip), now, self.policy.auth_failures_per_ip
        )
        if not outcome.allowed:
            raise _OverBudget(outcome.retry_after or self.policy.unavailable_retry_after)

    async def flush(self, now: datetime | None = None) -> None:
        """Write the summaries of the windows closed by `now` (the periodic tick), or of every
        open window when `now` is None (graceful shutdown): nothing counted is lost. A unit
        that fails keeps them for the next flush."""
        summaries = self.folder.drain() if now is None else self.folder.due(now)
        if not summaries:
            return
        try:
            async with self.write() as uow:
                await self._append(uow, self.clock.now(), summaries)
        except BaseException:
            self.folder.restore(summaries)
            raise

    async def _append(self, uow: UnitOfWork, now: datetime, summaries: list[Summary]) -> None:
        for s in summaries:
            await self.audit.append(uow, now, s.key.actor, s.key.action, s.key.target, s.details())
