# ruff: noqa: S608 - only module constants (column lists, dialect fragments, generated
# placeholder names) are interpolated into SQL; every value is a bound parameter.
"""Peer-map serials and the network generation in SQL.

A bump is one multi-row upsert-increment per batch, in sorted node order (two bumps of
overlapping node sets never deadlock); serials never go back, even across restarts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rustynet.adapters.storage.sql.dialect import (
    BATCH,
    Executor,
    fetch_one,
    fetch_rows,
    spoil,
)

from rustynet.ports.store import StoreConflict, StoreError


class SqlSerials:
    """`SerialRepository` in SQL: one upsert-increment per node, in sorted order (no
    deadlock between two bumps of overlapping node sets)."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def bump(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        """See `SerialRepository.bump` (one multi-row upsert per `BATCH` nodes: a policy
        change that wakes every node was one statement per node)."""
        ordered = sorted(set(node_ids))
        serials: dict[str, int] = {}
        for start in range(0, len(ordered), BATCH):
            chunk = ordered[start : start + BATCH]
            values = ", ".join(f"(:id{i}, 1)" for i in range(len(chunk)))
            rows = await fetch_rows(
                self._ex,
                self._d.sql(
                    f"INSERT INTO peer_serials (node_id, serial) VALUES {values}"
                    " ON CONFLICT (node_id) DO UPDATE SET serial = peer_serials.serial + 1"
                    " RETURNING node_id, serial"
                ),
                {f"id{i}": node_id for i, node_id in enumerate(chunk)},
            )
            serials.update((str(r[0]), int(r[1])) for r in rows)
            if len(rows) != len(chunk):  # pragma: no cover - an upsert returns every row
                raise spoil(self._ex, StoreConflict("serial upsert returned too few rows"))
        return {node_id: serials[node_id] for node_id in ordered}

    async def get(self, node_id: str) -> int:
        """See `SerialRepository.get`."""
        row = await fetch_one(
            self._ex,
            self._d.sql("SELECT serial FROM peer_serials WHERE node_id = :id"),
            {"id": node_id},
        )
        return 0 if row is None else int(row[0])

    async def get_active(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        """See `SerialRepository.get_active` (one SELECT per `BATCH` nodes)."""
        ordered = sorted(set(node_ids))
        serials: dict[str, int] = {}
        for start in range(0, len(ordered), BATCH):
            chunk = ordered[start : start + BATCH]
            names = ", ".join(f":id{i}" for i in range(len(chunk)))
            rows = await fetch_rows(
                self._ex,
                self._d.sql(
                    "SELECT n.id, COALESCE(s.serial, 0) FROM nodes n"
                    " LEFT JOIN peer_serials s ON s.node_id = n.id"
                    f" WHERE n.state = 'active' AND n.id IN ({names})"
                ),
                {f"id{i}": node_id for i, node_id in enumerate(chunk)},
            )
            serials.update((str(r[0]), int(r[1])) for r in rows)
        return serials

    async def generation(self) -> int:
        """See `SerialRepository.generation`."""
        row = await fetch_one(self._ex, "SELECT generation FROM net_generation WHERE id = 1")
        return 0 if row is None else int(row[0])

    async def bump_generation(self) -> int:
        """See `SerialRepository.bump_generation`."""
        row = await fetch_one(
            self._ex,
            "UPDATE net_generation SET generation = generation + 1 WHERE id = 1"
            " RETURNING generation",
        )
        if row is None:  # pragma: no cover - migration 0003 inserts the row
            raise spoil(self._ex, StoreError("net_generation row is missing"))
        return int(row[0])
