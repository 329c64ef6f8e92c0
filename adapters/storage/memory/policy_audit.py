"""Policy versions and the audit chain in memory."""

from __future__ import annotations

from datetime import datetime

from rustynet.adapters.storage.memory.state import MemoryState, spoil

from rustynet.domain.audit import AuditEntry, Checkpoint
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.policy_versions import PolicyVersion
from rustynet.ports.store import AlreadyExists, NotFound, StoreConflict


class MemoryPolicies:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    async def put(
        self, document: str, now: datetime, author: str, *, expected_current: int | None
    ) -> PolicyVersion:
        if self._s.current_policy != expected_current:
            raise spoil(self._s, StoreConflict("the policy changed since it was read"))
        version = PolicyVersion(max(self._s.policies, default=0) + 1, document, now, author)
        self._s.policies[version.version] = version
        self._s.current_policy = version.version
        return version

    async def current(self) -> PolicyVersion | None:
        if self._s.current_policy is None:
            return None
        return self._s.policies[self._s.current_policy]

    async def get(self, version: int) -> PolicyVersion | None:
        return self._s.policies.get(version)

    async def list_all(self) -> list[PolicyVersion]:
        return [self._s.policies[v] for v in sorted(self._s.policies)]

    async def set_current(self, version: int) -> PolicyVersion:
        found = self._s.policies.get(version)
        if found is None:
            raise NotFound(f"no policy version {version}")
        self._s.current_policy = version
        return found


class MemoryAudit:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    async def append(self, entry: AuditEntry) -> None:
        expected = len(self._s.entries)
        if entry.index > expected:
            raise LocalProtocolError(f"audit entry {entry.index} leaves a gap after {expected - 1}")
        if entry.index < expected:
            raise spoil(self._s, StoreConflict(f"audit index {entry.index} is taken"))
        self._s.entries.append(entry)

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        if checkpoint.index in self._s.checkpoints:
            raise spoil(self._s, AlreadyExists(f"a checkpoint at {checkpoint.index} exists"))
        self._s.checkpoints[checkpoint.index] = checkpoint

    async def entries(self, start: int = 0, limit: int | None = None) -> list[AuditEntry]:
        selected = self._s.entries[max(start, 0) :]
        return selected if limit is None else selected[:limit]

    async def last_entry(self) -> AuditEntry | None:
        return self._s.entries[-1] if self._s.entries else None

    async def checkpoints(self) -> list[Checkpoint]:
        return [self._s.checkpoints[i] for i in sorted(self._s.checkpoints)]

    async def last_checkpoint(self) -> Checkpoint | None:
        if not self._s.checkpoints:
            return None
        return self._s.checkpoints[max(self._s.checkpoints)]
