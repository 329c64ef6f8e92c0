"""In-process change feed for stores one control instance owns (SQLite, memory).

The one rule: with a single instance there is nobody else whose changes could be missed — the
use cases wake their own waiters after each commit — so the feed only keeps the `ChangeFeed`
contract (one subscriber, idempotent close) and never calls its listener on its own.
`publish` lets a test or an embedding process inject a wake-up as a peer instance would.
"""

from __future__ import annotations

from rustynet.domain.errors import LocalProtocolError
from rustynet.ports.change_feed import ChangeListener


class LocalChangeFeed:
    """`ChangeFeed` for one process."""

    def __init__(self) -> None:
        self._listener: ChangeListener | None = None
        self._closed = False

    async def subscribe(self, on_change: ChangeListener) -> None:
        """See `ChangeFeed.subscribe`."""
        if self._listener is not None:
            raise LocalProtocolError("this change feed already has a subscriber")
        self._listener = on_change
        self._closed = False

    async def close(self) -> None:
        """See `ChangeFeed.close`."""
        self._listener = None
        self._closed = True

    def publish(self, node_ids: frozenset[str] | None) -> None:
        """Deliver a change to the subscriber now (None: every node), if there is one."""
        if self._listener is not None and not self._closed:
            self._listener(node_ids)
