"""Relay revocation feed: GET /v1/relay/revocations?after=N, a long poll relays follow.

The one rule: the answer is a document signed with the control plane's signing key (the relay
verifies it against the root it pins, `domain/relay_revocations.py`), so nothing on the way,
and no relay, has to be trusted; the route itself is unauthenticated. What it reveals (ids of
nodes revoked in the last `FEED_WINDOW`, no names, keys or addresses) is argued harmless in
docs/threat-model/relay.md; its cost is bounded: a per-IP budget before any work (the
`RELAY_FEED` admission gate), at most `MAX_FEED_WAITERS` waiting polls, a bounded audit scan
and document (`MAX_SCAN_ENTRIES`, `MAX_FEED_ENTRIES`), and a cached answer per audit index.

The source is the audit chain: every `node.revoked` / `node.deleted` entry is a revocation at
the entry's time, its index the feed serial, so the serial is strictly increasing across
restarts and across instances sharing one database, and a deleted node is still listed. The
admin use case wakes `REVOCATION_FEED_KEY` (and announces it to the other instances) after it
commits a revocation.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Final

from rustynet.application.control.context import ControlContext
from rustynet.application.errors import RateLimited, ValidationError
from rustynet.application.waiters import TooManyWaiters
from rustynet.domain.relay_revocations import (
    FEED_WINDOW,
    Revocation,
    feed_of,
    seal_revocation_feed,
)
from rustynet.ports.store import UnitOfWork
from rustynet.ports.wire.v1 import RelayRevocations

REVOCATION_FEED_KEY: Final = "*relay-revocations"  # never a node id (they have no `*`)
REVOCATION_ACTIONS: Final = frozenset({"node.revoked", "node.deleted"})
MAX_FEED_WAITERS: Final = 64
MAX_SCAN_ENTRIES: Final = 20_000
SCAN_PAGE: Final = 500
CACHE_SECONDS: Final = 5.0


class RelayRevocationFeed:
    """The feed's long polls and the cached signed document they are answered with."""

    def __init__(self, ctx: ControlContext) -> None:
        self.ctx = ctx
        self.waiting = 0
        self._cache: tuple[int, datetime, int, RelayRevocations] | None = None

    async def revocations(self, after: int, timeout: float) -> RelayRevocations | None:
        """At once when the feed's serial is above `after`, else wait up to `timeout` seconds
        for a revocation; None means 204 (nothing newer)."""
        if type(after) is not int or after < 0:
            raise ValidationError.at("/after", "a non-negative integer")
        if self.waiting >= MAX_FEED_WAITERS:
            raise RateLimited(5, "too many revocation-feed requests are waiting")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        try:
            subscription = self.ctx.waiters.subscribe(REVOCATION_FEED_KEY)
        except TooManyWaiters:
            raise RateLimited(5, "too many requests are waiting") from None
        self.waiting += 1
        try:
            with subscription:
                while True:
                    serial, document = await self._current()
                    if serial > after:
                        return document
                    remaining = deadline - loop.time()
                    if remaining <= 0 or not await subscription.wait(remaining):
                        return None
                    subscription.event.clear()
        finally:
            self.waiting -= 1

    async def _current(self) -> tuple[int, RelayRevocations]:
        ctx = self.ctx
        now = ctx.clock.now()
        async with ctx.store.unit_of_work() as uow:
            last = await uow.audit.last_entry()
            head = -1 if last is None else last.index
            cached = self._cache
            if (
                cached is not None
                and cached[0] == head
                and 0 <= (now - cached[1]).total_seconds() < CACHE_SECONDS
            ):
                return cached[2], cached[3]
            pairs = [] if last is None else await _recent_revocations(uow, head, now)
        feed = feed_of(ctx.settings.control_url, pairs, now)
        envelope = seal_revocation_feed(ctx.keys.signing, feed, now)
        document = RelayRevocations(envelope.to_text(), ctx.trust())
        self._cache = (head, now, feed.serial, document)
        return feed.serial, document


async def _recent_revocations(
    uow: UnitOfWork, head: int, now: datetime
) -> list[tuple[int, Revocation]]:
    """(audit index, revocation) of the revocation entries of the last `FEED_WINDOW`, read
    backwards in pages from `head`; stops at twice the window (folded summaries may be written
    a little out of time order) or after `MAX_SCAN_ENTRIES`."""
    found: list[tuple[int, Revocation]] = []
    end, scanned = head + 1, 0
    oldest = now - 2 * FEED_WINDOW
    while end > 0 and scanned < MAX_SCAN_ENTRIES:
        start = max(0, end - SCAN_PAGE)
        page = await uow.audit.entries(start, end - start)
        if not page:
            break
        scanned += len(page)
        found.extend(
            (e.index, Revocation(e.target, e.time)) for e in page if e.action in REVOCATION_ACTIONS
        )
        if page[0].time < oldest:
            break
        end = start
    return found


__all__ = ["MAX_FEED_WAITERS", "REVOCATION_FEED_KEY", "RelayRevocationFeed"]
