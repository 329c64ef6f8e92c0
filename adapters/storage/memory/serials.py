"""Peer-map serials and the network generation in memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rustynet.adapters.storage.memory.state import MemoryState

from rustynet.domain.nodes import NodeStatus


class MemorySerials:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    async def bump(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        bumped = {}
        for node_id in sorted(set(node_ids)):
            bumped[node_id] = self._s.serials.get(node_id, 0) + 1
            self._s.serials[node_id] = bumped[node_id]
        return bumped

    async def get(self, node_id: str) -> int:
        return self._s.serials.get(node_id, 0)

    async def get_active(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        nodes = self._s.nodes
        return {
            i: self._s.serials.get(i, 0)
            for i in node_ids
            if (n := nodes.get(i)) is not None and n.state is NodeStatus.ACTIVE
        }

    async def generation(self) -> int:
        return self._s.generation

    async def bump_generation(self) -> int:
        self._s.generation += 1
        return self._s.generation
