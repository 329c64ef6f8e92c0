"""Peer-map long-poll wake-ups: one asyncio Event per waiting request, keyed by node id.

The one rule: a wake-up is never lost. A request subscribes BEFORE it reads the node's serial,
so a change committed between the read and the wait still sets its event; `wake(ids)` sets the
events of every request waiting for those nodes. Waking is a hint only: the woken request
re-reads the serial (and re-checks the node) from the store.

Scope: one process. Across control instances, `ControlService.start()` subscribes a
`ports.change_feed.ChangeFeed` (PostgreSQL LISTEN/NOTIFY) that calls `wake` / `wake_all` here
for changes other instances commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from rustynet.domain.errors import LocalProtocolError


class TooManyWaiters(LocalProtocolError):  # noqa: N818 - names the state
    """The waiter table is full; the caller should answer at once (or 429)."""


class Subscription:
    """One waiting request; use as a context manager so it always unsubscribes."""

    def __init__(self, owner: PeerMapWaiters, node_id: str) -> None:
        self._owner = owner
        self.node_id = node_id
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True when woken within `timeout` seconds (or already woken), else False."""
        if self.event.is_set():
            return True
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self.event.wait()
        except TimeoutError:
            return False
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._drop(self)


class PeerMapWaiters:
    """Registry of waiting peer-map requests; `wake` is synchronous and cheap."""

    def __init__(self, max_waiters: int = 50_000) -> None:
        self.max_waiters = max_waiters
        self._by_node: dict[str, set[Subscription]] = {}
        self._count = 0

    @property
    def active(self) -> int:
        """How many requests are subscribed right now (for /metrics)."""
        return self._count

    def subscribe(self, node_id: str) -> Subscription:
        """Register a waiter for `node_id` (before reading its serial)."""
        if self._count >= self.max_waiters:
            raise TooManyWaiters(f"{self._count} peer-map requests are already waiting")
        sub = Subscription(self, node_id)
        self._by_node.setdefault(node_id, set()).add(sub)
        self._count += 1
        return sub

    def wake(self, node_ids: Iterable[str]) -> int:
        """Set the event of every waiter of these nodes; return how many were woken."""
        woken = 0
        for node_id in set(node_ids):
            for sub in self._by_node.get(node_id, ()):
                if not sub.event.is_set():
                    sub.event.set()
                    woken += 1
        return woken

    def wake_all(self) -> int:
        """Wake every waiter (e.g. on shutdown: they answer 204 at once)."""
        return self.wake(list(self._by_node))

    def waiting(self, node_id: str) -> int:
        """How many requests wait for `node_id`."""
        return len(self._by_node.get(node_id, ()))

    def _drop(self, sub: Subscription) -> None:
        subs = self._by_node.get(sub.node_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self._count -= 1
        if not subs:
            del self._by_node[sub.node_id]
