"""Change feed port: wake-ups from the other control instances sharing one database.

The one rule: a change committed by another instance (announced in its unit of work with
`UnitOfWork.announce`) reaches `on_change` here after the commit, or — when the feed cannot be
sure it saw everything (a payload too large to list, a lost or re-established connection) —
`on_change(None)` says "anything may have changed: let every waiter re-check". A feed never
reports fewer changes than were committed while it was subscribed; it may report more.

Wake-ups are hints: the receiver re-reads serials and the network generation from the store,
so a spurious or duplicated wake-up costs a read, never a wrong answer.

Adapters: `rustynet.adapters.storage.postgres.PostgresChangeFeed` (LISTEN/NOTIFY on a
dedicated connection) and `rustynet.adapters.storage.local_feed.LocalChangeFeed` (one
instance: nothing to hear, the use cases wake their own waiters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

ChangeListener = Callable[[frozenset[str] | None], None]
"""Called on the event loop with the node ids whose peer maps may have changed (None: all)."""


class ChangeFeed(Protocol):
    """A subscription to the changes other control instances commit."""

    async def subscribe(self, on_change: ChangeListener) -> None:
        """Start listening; return once listening (changes committed after the return are
        delivered). Raises `StoreUnavailable` when the database cannot be reached at all;
        later connection losses are healed inside, each followed by `on_change(None)`.
        One subscription per feed (`LocalProtocolError` on a second)."""
        ...

    async def close(self) -> None:
        """Stop listening and release the connection; idempotent."""
        ...
