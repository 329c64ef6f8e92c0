# ruff: noqa: S608 - only module constants (column lists, dialect fragments, generated
# placeholder names) are interpolated into SQL; every value is a bound parameter.
"""Policy versions and the audit chain in SQL.

Policy versions are immutable rows behind a one-row `policy_current` pointer that a write moves
only from the version its caller validated against; audit entries and checkpoints are
insert-only, each entry at exactly the next index.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from rustynet.adapters.storage.sql.dialect import (
    Executor,
    Row,
    fetch_one,
    fetch_rows,
    from_micros,
    spoil,
    to_micros,
)

from rustynet.domain.audit import AuditEntry, Checkpoint
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.policy_versions import PolicyVersion
from rustynet.ports.store import AlreadyExists, NotFound, StoreConflict


def _policy(row: Row) -> PolicyVersion:
    return PolicyVersion(
        version=int(row[0]), document=row[1], created_at=from_micros(row[2]), author=row[3]
    )


class SqlPolicies:
    """`PolicyRepository` in SQL: versions are rows, `policy_current` is a one-row pointer."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def _pointer(self) -> int | None:
        row = await fetch_one(
            self._ex, f"SELECT version FROM policy_current WHERE id = 1{self._d.for_update}"
        )
        return None if row is None else int(row[0])

    async def _point(self, version: int) -> None:
        await self._ex.execute(
            self._d.sql(
                "INSERT INTO policy_current (id, version) VALUES (1, :v)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version"
            ),
            {"v": version},
        )

    async def put(
        self, document: str, now: datetime, author: str, *, expected_current: int | None
    ) -> PolicyVersion:
        """See `PolicyRepository.put`."""
        if await self._pointer() != expected_current:
            raise spoil(self._ex, StoreConflict("the policy changed since it was read"))
        row = await fetch_one(self._ex, "SELECT COALESCE(MAX(version), 0) + 1 FROM policies")
        version = PolicyVersion(int(row[0]) if row else 1, document, now, author)
        try:
            await self._ex.execute(
                self._d.sql(
                    "INSERT INTO policies (version, document, created_at, author)"
                    " VALUES (:v, :doc, :t, :a)"
                ),
                {"v": version.version, "doc": document, "t": to_micros(now), "a": author},
            )
        except AlreadyExists as exc:  # a concurrent first put took version 1
            raise spoil(self._ex, StoreConflict("a concurrent policy write won")) from exc
        await self._point(version.version)
        return version

    async def current(self) -> PolicyVersion | None:
        """See `PolicyRepository.current`."""
        row = await fetch_one(
            self._ex,
            "SELECT p.version, p.document, p.created_at, p.author FROM policies p"
            " JOIN policy_current c ON c.version = p.version WHERE c.id = 1",
        )
        return None if row is None else _policy(row)

    async def get(self, version: int) -> PolicyVersion | None:
        """See `PolicyRepository.get`."""
        row = await fetch_one(
            self._ex,
            self._d.sql(
                "SELECT version, document, created_at, author FROM policies WHERE version = :v"
            ),
            {"v": version},
        )
        return None if row is None else _policy(row)

    async def list_all(self) -> list[PolicyVersion]:
        """See `PolicyRepository.list_all`."""
        rows = await fetch_rows(
            self._ex, "SELECT version, document, created_at, author FROM policies ORDER BY version"
        )
        return [_policy(r) for r in rows]

    async def set_current(self, version: int) -> PolicyVersion:
        """See `PolicyRepository.set_current`."""
        found = await self.get(version)
        if found is None:
            raise NotFound(f"no policy version {version}")
        await self._pointer()  # lock the pointer row (PostgreSQL) before moving it
        await self._point(version)
        return found


_ENTRY_COLUMNS: Final = "idx, time, actor, action, target, details, prev_hash, entry_hash"
_CHECKPOINT_COLUMNS: Final = "idx, head_hash, time, signature"


def _entry(row: Row) -> AuditEntry:
    keys = ("index", "time", "actor", "action", "target", "details", "prev_hash", "entry_hash")
    return AuditEntry.from_record(dict(zip(keys, (int(row[0]), *row[1:]), strict=True)))


def _checkpoint(row: Row) -> Checkpoint:
    keys = ("index", "head_hash", "time", "signature")
    return Checkpoint.from_record(dict(zip(keys, (int(row[0]), *row[1:]), strict=True)))


class SqlAudit:
    """`AuditRepository` in SQL (insert and select only)."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def append(self, entry: AuditEntry) -> None:
        """See `AuditRepository.append`."""
        row = await fetch_one(self._ex, "SELECT COALESCE(MAX(idx), -1) + 1 FROM audit_entries")
        expected = int(row[0]) if row else 0
        if entry.index > expected:
            raise LocalProtocolError(f"audit entry {entry.index} leaves a gap after {expected - 1}")
        if entry.index < expected:
            raise spoil(self._ex, StoreConflict(f"audit index {entry.index} is taken"))
        r = entry.to_record()
        try:
            await self._ex.execute(
                self._d.sql(
                    f"INSERT INTO audit_entries ({_ENTRY_COLUMNS}) VALUES (:index, :time,"
                    " :actor, :action, :target, :details, :prev_hash, :entry_hash)"
                ),
                r,
            )
        except AlreadyExists as exc:
            raise spoil(self._ex, StoreConflict(f"audit index {entry.index} is taken")) from exc

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """See `AuditRepository.add_checkpoint`."""
        await self._ex.execute(
            self._d.sql(
                f"INSERT INTO audit_checkpoints ({_CHECKPOINT_COLUMNS})"
                " VALUES (:index, :head_hash, :time, :signature)"
            ),
            checkpoint.to_record(),
        )

    async def entries(self, start: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """See `AuditRepository.entries`."""
        sql = f"SELECT {_ENTRY_COLUMNS} FROM audit_entries WHERE idx >= :start ORDER BY idx"
        params: dict[str, object] = {"start": start}
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        return [_entry(r) for r in await fetch_rows(self._ex, self._d.sql(sql), params)]

    async def last_entry(self) -> AuditEntry | None:
        """See `AuditRepository.last_entry`."""
        row = await fetch_one(
            self._ex, f"SELECT {_ENTRY_COLUMNS} FROM audit_entries ORDER BY idx DESC LIMIT 1"
        )
        return None if row is None else _entry(row)

    async def checkpoints(self) -> list[Checkpoint]:
        """See `AuditRepository.checkpoints`."""
        rows = await fetch_rows(
            self._ex, f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY idx"
        )
        return [_checkpoint(r) for r in rows]

    async def last_checkpoint(self) -> Checkpoint | None:
        """See `AuditRepository.last_checkpoint`."""
        row = await fetch_one(
            self._ex,
            f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY idx DESC LIMIT 1",
        )
        return None if row is None else _checkpoint(row)
