"""`MemoryStore` and its unit of work: one asyncio lock, a copy of the state per unit of work."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from rustynet.adapters.storage.memory.credentials import MemoryApiKeys, MemoryCredentials
from rustynet.adapters.storage.memory.guards import MemoryChallenges, MemoryLimiter, MemoryNonces
from rustynet.adapters.storage.memory.nodes import MemoryIpam, MemoryNodes
from rustynet.adapters.storage.memory.policy_audit import MemoryAudit, MemoryPolicies
from rustynet.adapters.storage.memory.serials import MemorySerials
from rustynet.adapters.storage.memory.state import MemoryState

from rustynet.domain.ipam import AddressPlan
from rustynet.ports.store import StoreError, UnitOfWorkAborted


class MemoryUnitOfWork:
    """A serialized transaction over a copy of the store's state."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._state: MemoryState | None = None

    def _s(self) -> MemoryState:
        if self._state is None:
            raise StoreError("use the unit of work inside `async with`")
        return self._state

    @property
    def nodes(self) -> MemoryNodes:
        """Nodes."""
        return MemoryNodes(self._s())

    @property
    def credentials(self) -> MemoryCredentials:
        """Join credentials."""
        return MemoryCredentials(self._s())

    @property
    def api_keys(self) -> MemoryApiKeys:
        """Admin API keys."""
        return MemoryApiKeys(self._s())

    @property
    def policies(self) -> MemoryPolicies:
        """Policy versions."""
        return MemoryPolicies(self._s())

    @property
    def audit(self) -> MemoryAudit:
        """Audit chain storage."""
        return MemoryAudit(self._s())

    @property
    def nonces(self) -> MemoryNonces:
        """Replay nonces."""
        return MemoryNonces(self._s())

    @property
    def limiter(self) -> MemoryLimiter:
        """Rate-limit state."""
        return MemoryLimiter(self._s())

    @property
    def serials(self) -> MemorySerials:
        """Peer-map serials."""
        return MemorySerials(self._s())

    @property
    def ipam(self) -> MemoryIpam:
        """Overlay address leases."""
        return MemoryIpam(self._s(), self._store.plan)

    @property
    def challenges(self) -> MemoryChallenges:
        """Single-use challenges."""
        return MemoryChallenges(self._s())

    async def lock_writers(self) -> None:
        """See `UnitOfWork.lock_writers`: units of work already hold the store's lock."""
        self._s()

    async def announce(self, node_ids: Iterable[str]) -> None:  # noqa: ARG002 - port signature
        """See `UnitOfWork.announce`: one process owns this store, nobody else to tell."""
        self._s()

    async def __aenter__(self) -> Self:
        if not self._store.is_open:
            raise StoreError("the store is not open")
        await self._store.lock.acquire()
        self._state = self._store.state.copy()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._state is not None:
                if self._state.spoiled:
                    raise UnitOfWorkAborted("a write in this unit of work was refused")
                self._store.state = self._state
        finally:
            self._state = None
            self._store.lock.release()


class MemoryStore:
    """`Store` in process memory; nothing survives the process."""

    def __init__(self, *, plan: AddressPlan | None = None) -> None:
        self.plan = plan if plan is not None else AddressPlan()
        self.lock = asyncio.Lock()
        self.state = MemoryState()
        self.is_open = False

    async def open(self) -> None:
        """See `Store.open` (no schema to migrate)."""
        self.is_open = True

    async def close(self) -> None:
        """See `Store.close`; the state stays for a later `open`."""
        self.is_open = False

    def unit_of_work(self) -> MemoryUnitOfWork:
        """See `Store.unit_of_work`."""
        return MemoryUnitOfWork(self)
