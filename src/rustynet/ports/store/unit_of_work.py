"""Ports: the unit of work over every repository, and the store that opens units of work."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Protocol, Self

from rustynet.ports.store.credentials import ApiKeyRepository, CredentialRepository
from rustynet.ports.store.guards import ChallengeRepository, LimiterRepository, NonceRepository
from rustynet.ports.store.nodes import IpamRepository, NodeRepository
from rustynet.ports.store.policy_audit import AuditRepository, PolicyRepository
from rustynet.ports.store.serials import SerialRepository


class UnitOfWork(Protocol):
    """One transaction over every repository; commit on normal exit, rollback on error."""

    @property
    def nodes(self) -> NodeRepository: ...
    @property
    def credentials(self) -> CredentialRepository: ...
    @property
    def api_keys(self) -> ApiKeyRepository: ...
    @property
    def policies(self) -> PolicyRepository: ...
    @property
    def audit(self) -> AuditRepository: ...
    @property
    def nonces(self) -> NonceRepository: ...
    @property
    def limiter(self) -> LimiterRepository: ...
    @property
    def serials(self) -> SerialRepository: ...
    @property
    def ipam(self) -> IpamRepository: ...
    @property
    def challenges(self) -> ChallengeRepository: ...

    async def lock_writers(self) -> None:
        """Serialize this unit of work, until it ends, with every other one that calls this on
        any process sharing the database (PostgreSQL: a transaction-scoped advisory lock).
        Stores whose transactions already exclude each other (SQLite `BEGIN IMMEDIATE`, the
        memory store) do nothing. Call it first, before any read the decision depends on."""
        ...

    async def announce(self, node_ids: Iterable[str]) -> None:
        """Tell every other control instance sharing this database, once this unit of work
        commits and never if it rolls back, that these nodes' peer maps may have changed.
        Stores one process owns do nothing (the use case wakes its own waiters)."""
        ...

    async def __aenter__(self) -> Self:
        """Begin the transaction (for SQLite: take the write lock, `BEGIN IMMEDIATE`)."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Commit if the block succeeded, else roll back; a failed commit raises
        `StoreConflict`/`StoreUnavailable` (and nothing was committed). Never swallows."""
        ...


class Store(Protocol):
    """A database holding the control plane's state."""

    async def open(self) -> None:
        """Connect and apply pending migrations (recorded in `schema_migrations`)."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...

    def unit_of_work(self) -> UnitOfWork:
        """A new unit of work; enter it with `async with`. Not re-entrant."""
        ...
