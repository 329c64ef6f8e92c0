# ruff: noqa: S608 - only module constants (column lists, dialect fragments, generated
# placeholder names) are interpolated into SQL; every value is a bound parameter.
"""Enrolled nodes and their overlay address leases in SQL.

A node's row is inserted only onto its own IPAM lease; a lease is claimed with an INSERT a
unique constraint decides (`ON CONFLICT DO NOTHING`), so two allocations never share an
address.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime
from typing import Final

from rustynet.adapters.storage.sql.dialect import (
    Executor,
    Params,
    Row,
    fetch_one,
    fetch_rows,
    from_micros,
    opt_micros,
    opt_time,
    row_count,
    spoil,
    to_micros,
)

from rustynet.domain.candidates import Candidate
from rustynet.domain.ipam import AddressPlan, AddressPoolExhausted
from rustynet.domain.keys import TunnelKey, VerifyKey
from rustynet.domain.nat import NatClass
from rustynet.domain.nodes import NodeRecord, NodeStatus
from rustynet.domain.scope import Tag
from rustynet.ports.store import AlreadyExists, NotFound

_PROBE_BATCHES: Final = (4, 64)  # candidates per probe query: the first few, then 64 at a time

_NODE_COLUMNS: Final = (
    "id, name, identity_key, tunnel_key, tunnel_key_expires_at, overlay_ipv4, tags, state,"
    " created_at, last_seen_at, revoked_at, candidates, candidates_updated_at, nat_classification"
)


def _node(row: Row) -> NodeRecord:
    return NodeRecord(
        id=row[0],
        name=row[1],
        identity_key=VerifyKey.from_text(row[2]),
        tunnel_key=TunnelKey.from_text(row[3]),
        tunnel_key_expires_at=from_micros(row[4]),
        overlay_ipv4=ipaddress.IPv4Address(row[5]),
        tags=frozenset(Tag(t) for t in json.loads(row[6])),
        state=NodeStatus(row[7]),
        created_at=from_micros(row[8]),
        last_seen_at=opt_time(row[9]),
        revoked_at=opt_time(row[10]),
        candidates=_candidates(row[11]),
        candidates_updated_at=opt_time(row[12]),
        nat_classification=None if row[13] is None else NatClass(row[13]),
    )


def _candidates(text: str) -> tuple[Candidate, ...]:
    return tuple(Candidate.parse(c["endpoint"], c["kind"]) for c in json.loads(text))


def _candidates_json(candidates: tuple[Candidate, ...]) -> str:
    return json.dumps([c.to_json() for c in candidates])


def _tags_json(tags: frozenset[Tag]) -> str:
    return json.dumps(sorted(t.value for t in tags))


class SqlNodes:
    """`NodeRepository` in SQL."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def add(self, node: NodeRecord) -> None:
        """See `NodeRepository.add`."""
        lease = await fetch_one(
            self._ex,
            self._d.sql("SELECT address FROM ip_leases WHERE node_id = :id"),
            {"id": node.id},
        )
        if lease is None or lease[0] != int(node.overlay_ipv4):
            raise NotFound("the node's overlay address is not its lease")
        await self._ex.execute(
            self._d.sql(
                f"INSERT INTO nodes ({_NODE_COLUMNS}) VALUES (:id, :name, :identity_key,"
                " :tunnel_key, :tke, :ip, :tags, :state, :created_at, :last_seen_at, :revoked_at,"
                " :candidates, :candidates_updated_at, :nat)"
            ),
            {
                "id": node.id,
                "name": node.name,
                "identity_key": node.identity_key.to_text(),
                "tunnel_key": node.tunnel_key.to_text(),
                "tke": to_micros(node.tunnel_key_expires_at),
                "ip": int(node.overlay_ipv4),
                "tags": _tags_json(node.tags),
                "state": node.state.value,
                "created_at": to_micros(node.created_at),
                "last_seen_at": opt_micros(node.last_seen_at),
                "revoked_at": opt_micros(node.revoked_at),
                "candidates": _candidates_json(node.candidates),
                "candidates_updated_at": opt_micros(node.candidates_updated_at),
                "nat": None if node.nat_classification is None else node.nat_classification.value,
            },
        )

    async def get(self, node_id: str) -> NodeRecord | None:
        """See `NodeRepository.get`."""
        row = await fetch_one(
            self._ex,
            self._d.sql(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = :id"),
            {"id": node_id},
        )
        return None if row is None else _node(row)

    async def get_by_identity(self, identity_key: VerifyKey) -> NodeRecord | None:
        """See `NodeRepository.get_by_identity`."""
        row = await fetch_one(
            self._ex,
            self._d.sql(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE identity_key = :k"),
            {"k": identity_key.to_text()},
        )
        return None if row is None else _node(row)

    async def get_by_name(self, name: str) -> NodeRecord | None:
        """See `NodeRepository.get_by_name` (the unique index on name)."""
        row = await fetch_one(
            self._ex, self._d.sql(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = :n"), {"n": name}
        )
        return None if row is None else _node(row)

    async def names_starting_with(self, prefix: str) -> frozenset[str]:
        """See `NodeRepository.names_starting_with` (reads names only, not whole rows)."""
        rows = await fetch_rows(
            self._ex,
            self._d.sql("SELECT name FROM nodes WHERE substr(name, 1, :n) = :prefix"),
            {"n": len(prefix), "prefix": prefix},
        )
        return frozenset(str(r[0]) for r in rows)

    async def list_all(self) -> list[NodeRecord]:
        """See `NodeRepository.list_all`."""
        rows = await fetch_rows(
            self._ex, f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY created_at, id"
        )
        return [_node(r) for r in rows]

    async def _update(self, node_id: str, assignments: str, params: Params) -> NodeRecord:
        row = await fetch_one(
            self._ex,
            self._d.sql(f"UPDATE nodes SET {assignments} WHERE id = :id RETURNING {_NODE_COLUMNS}"),
            {**params, "id": node_id},
        )
        if row is None:
            raise NotFound(f"no node {node_id!r}")
        return _node(row)

    async def rename(self, node_id: str, name: str) -> NodeRecord:
        """See `NodeRepository.rename`."""
        return await self._update(node_id, "name = :name", {"name": name})

    async def set_tags(self, node_id: str, tags: frozenset[Tag]) -> NodeRecord:
        """See `NodeRepository.set_tags`."""
        return await self._update(node_id, "tags = :tags", {"tags": _tags_json(tags)})

    async def set_tunnel_key(
        self, node_id: str, tunnel_key: TunnelKey, expires_at: datetime
    ) -> NodeRecord:
        """See `NodeRepository.set_tunnel_key`."""
        return await self._update(
            node_id,
            "tunnel_key = :k, tunnel_key_expires_at = :e",
            {"k": tunnel_key.to_text(), "e": to_micros(expires_at)},
        )

    async def set_candidates(
        self,
        node_id: str,
        candidates: tuple[Candidate, ...],
        now: datetime,
        nat: NatClass | None = None,
    ) -> NodeRecord:
        """See `NodeRepository.set_candidates`."""
        return await self._update(
            node_id,
            "candidates = :c, candidates_updated_at = :t, nat_classification = :n",
            {
                "c": _candidates_json(candidates),
                "t": to_micros(now),
                "n": None if nat is None else nat.value,
            },
        )

    async def touch(self, node_id: str, now: datetime) -> None:
        """See `NodeRepository.touch`."""
        await self._update(
            node_id,
            "last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < :now"
            " THEN :now ELSE last_seen_at END",
            {"now": to_micros(now)},
        )

    async def revoke(self, node_id: str, now: datetime) -> NodeRecord:
        """See `NodeRepository.revoke`."""
        return await self._update(
            node_id,
            "state = 'revoked', revoked_at = COALESCE(revoked_at, :now)",
            {"now": to_micros(now)},
        )

    async def delete(self, node_id: str) -> None:
        """See `NodeRepository.delete`."""
        if not await row_count(
            self._ex, self._d.sql("DELETE FROM nodes WHERE id = :id"), {"id": node_id}
        ):
            raise NotFound(f"no node {node_id!r}")
        await self._ex.execute(
            self._d.sql("DELETE FROM ip_leases WHERE node_id = :id"), {"id": node_id}
        )


class SqlIpam:
    """`IpamRepository` in SQL: probe candidates, claim with INSERT ... ON CONFLICT DO NOTHING."""

    def __init__(self, ex: Executor, plan: AddressPlan) -> None:
        self._ex = ex
        self._d = ex.dialect
        self._plan = plan

    async def lookup(self, node_id: str) -> ipaddress.IPv4Address | None:
        """See `IpamRepository.lookup`."""
        row = await fetch_one(
            self._ex,
            self._d.sql("SELECT address FROM ip_leases WHERE node_id = :id"),
            {"id": node_id},
        )
        return None if row is None else ipaddress.IPv4Address(row[0])

    async def allocate(self, node_id: str) -> ipaddress.IPv4Address:
        """See `IpamRepository.allocate`."""
        existing = await self.lookup(node_id)
        if existing is not None:
            return existing
        # A sparse pool (the usual case: 100.64.0.0/10 holds 4 million addresses) almost always
        # has the first candidate free: probe a few first, without building 64 of them.
        batch: list[ipaddress.IPv4Address] = []
        size = _PROBE_BATCHES[0]
        for candidate in self._plan.candidates(node_id):
            batch.append(candidate)
            if len(batch) == size:
                found = await self._claim_first(node_id, batch)
                if found is not None:
                    return found
                batch, size = [], _PROBE_BATCHES[-1]
        found = await self._claim_first(node_id, batch) if batch else None
        if found is None:
            raise AddressPoolExhausted(f"no free overlay address in {self._plan.network}")
        return found

    async def _claim_first(
        self, node_id: str, batch: list[ipaddress.IPv4Address]
    ) -> ipaddress.IPv4Address | None:
        names = {f"a{i}": int(a) for i, a in enumerate(batch)}
        taken = {
            r[0]
            for r in await fetch_rows(
                self._ex,
                self._d.sql(
                    "SELECT address FROM ip_leases WHERE address IN ("
                    + ", ".join(f":{n}" for n in names)
                    + ")"
                ),
                names,
            )
        }
        for address in batch:
            if int(address) in taken:
                continue
            # The unique constraint decides; a concurrent claimer makes this a no-op.
            claimed = await row_count(
                self._ex,
                self._d.sql(
                    "INSERT INTO ip_leases (address, node_id) VALUES (:a, :id)"
                    " ON CONFLICT DO NOTHING"
                ),
                {"a": int(address), "id": node_id},
            )
            if claimed:
                return address
            existing = await self.lookup(node_id)  # a concurrent allocate for the same node
            if existing is not None:
                return existing
        return None

    async def release(self, node_id: str) -> None:
        """See `IpamRepository.release`."""
        node = await fetch_one(
            self._ex, self._d.sql("SELECT id FROM nodes WHERE id = :id"), {"id": node_id}
        )
        if node is not None:
            raise spoil(self._ex, AlreadyExists("the node exists: delete it instead"))
        await self._ex.execute(
            self._d.sql("DELETE FROM ip_leases WHERE node_id = :id"), {"id": node_id}
        )
