"""Ports: versioned policy documents and the append-only audit chain."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from rustynet.domain.audit import AuditEntry, Checkpoint
from rustynet.domain.policy_versions import PolicyVersion


class PolicyRepository(Protocol):
    """Versioned policy documents with a current pointer."""

    async def put(
        self, document: str, now: datetime, author: str, *, expected_current: int | None
    ) -> PolicyVersion:
        """Store `document` as the next version and make it current. `expected_current` is
        the version the caller validated against (None: no policy yet); if another writer
        moved the pointer meanwhile, raise `StoreConflict` and change nothing."""
        ...

    async def current(self) -> PolicyVersion | None:
        """The current version, or None when no policy was ever stored (deny all)."""
        ...

    async def get(self, version: int) -> PolicyVersion | None:
        """One version, or None."""
        ...

    async def list_all(self) -> list[PolicyVersion]:
        """Every version, oldest first."""
        ...

    async def set_current(self, version: int) -> PolicyVersion:
        """Point `current` at an existing version (rollback); `NotFound`."""
        ...


class AuditRepository(Protocol):
    """The audit chain's entries and checkpoints, stored as their `to_record()` forms.
    Append-only: there is no update and no delete."""

    async def append(self, entry: AuditEntry) -> None:
        """Store the entry; its index must be exactly the next one (`StoreConflict` when
        another writer took that index, `LocalProtocolError` on a gap)."""
        ...

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store a checkpoint; `AlreadyExists` for an index already checkpointed."""
        ...

    async def entries(self, start: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with index >= start, in index order, at most `limit`."""
        ...

    async def last_entry(self) -> AuditEntry | None:
        """The entry with the highest index, or None."""
        ...

    async def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, in index order."""
        ...

    async def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint with the highest index, or None."""
        ...
