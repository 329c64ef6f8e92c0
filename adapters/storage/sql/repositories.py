"""Every SQL repository over one executor, reachable through a unit of work while it is entered.

`SqlRepositories` builds the repositories for one transaction; `RepositoryAccess` is the base of
the SQLite and PostgreSQL units of work (the `UnitOfWork` port's properties, `lock_writers` and
a do-nothing `announce` that the PostgreSQL unit of work overrides).
"""

from __future__ import annotations

from collections.abc import Iterable

from rustynet.adapters.storage.sql.credentials import SqlApiKeys, SqlCredentials
from rustynet.adapters.storage.sql.dialect import Executor
from rustynet.adapters.storage.sql.guards import SqlChallenges, SqlLimiter, SqlNonces
from rustynet.adapters.storage.sql.nodes import SqlIpam, SqlNodes
from rustynet.adapters.storage.sql.policy_audit import SqlAudit, SqlPolicies
from rustynet.adapters.storage.sql.serials import SqlSerials

from rustynet.domain.ipam import AddressPlan
from rustynet.ports.store import StoreError


class SqlRepositories:
    """Every repository over one executor (the unit of work's transaction)."""

    def __init__(self, ex: Executor, plan: AddressPlan) -> None:
        self.nodes = SqlNodes(ex)
        self.credentials = SqlCredentials(ex)
        self.api_keys = SqlApiKeys(ex)
        self.policies = SqlPolicies(ex)
        self.audit = SqlAudit(ex)
        self.nonces = SqlNonces(ex)
        self.limiter = SqlLimiter(ex)
        self.serials = SqlSerials(ex)
        self.ipam = SqlIpam(ex, plan)
        self.challenges = SqlChallenges(ex)
        self.executor = ex


class RepositoryAccess:
    """The repositories of a unit of work, reachable only while it is entered."""

    def __init__(self) -> None:
        self._repos: SqlRepositories | None = None

    def _r(self) -> SqlRepositories:
        if self._repos is None:
            raise StoreError("use the unit of work inside `async with`")
        return self._repos

    @property
    def nodes(self) -> SqlNodes:
        """Nodes."""
        return self._r().nodes

    @property
    def credentials(self) -> SqlCredentials:
        """Join credentials."""
        return self._r().credentials

    @property
    def api_keys(self) -> SqlApiKeys:
        """Admin API keys."""
        return self._r().api_keys

    @property
    def policies(self) -> SqlPolicies:
        """Policy versions."""
        return self._r().policies

    @property
    def audit(self) -> SqlAudit:
        """Audit chain storage."""
        return self._r().audit

    @property
    def nonces(self) -> SqlNonces:
        """Replay nonces."""
        return self._r().nonces

    @property
    def limiter(self) -> SqlLimiter:
        """Rate-limit state."""
        return self._r().limiter

    @property
    def serials(self) -> SqlSerials:
        """Peer-map serials."""
        return self._r().serials

    @property
    def ipam(self) -> SqlIpam:
        """Overlay address leases."""
        return self._r().ipam

    @property
    def challenges(self) -> SqlChallenges:
        """Single-use challenges."""
        return self._r().challenges

    async def lock_writers(self) -> None:
        """See `UnitOfWork.lock_writers` (the dialect's lock; none on SQLite)."""
        ex = self._r().executor
        if ex.dialect.lock_writers is not None:
            await ex.execute(ex.dialect.lock_writers, {})

    async def announce(self, node_ids: Iterable[str]) -> None:  # noqa: ARG002 - port signature
        """See `UnitOfWork.announce`: nothing to tell here (the PostgreSQL unit of work
        overrides it)."""
        self._r()
