"""Port: peer-map serials and the network generation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class SerialRepository(Protocol):
    """Peer-map serials: per node, strictly increasing, never reused (even across restarts)."""

    async def bump(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        """Increment each node's serial atomically; return the new serials (first is 1)."""
        ...

    async def get(self, node_id: str) -> int:
        """The node's current serial (0 when never bumped)."""
        ...

    async def get_active(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        """The current serial (0 when never bumped) of each of `node_ids` that is a stored,
        ACTIVE node; unknown and revoked nodes are absent. One read for a whole batch of woken
        long polls."""
        ...

    async def generation(self) -> int:
        """The network generation: a counter (0 at first) that moves whenever the node set or
        policy that peer maps are compiled from changes, so a cached compilation can tell
        whether another control instance changed the network."""
        ...

    async def bump_generation(self) -> int:
        """Increment the network generation (call inside `lock_writers`); return the new one."""
        ...
