"""Store port: the control plane's persistent state behind one unit of work.

This package's face: every name importers use, from `errors`, one module per repository group
(`nodes`, `credentials`, `guards`, `policy_audit`, `serials`), `unit_of_work` (`UnitOfWork`,
`Store`), and the entity records the repositories take and return, which the domain owns
(`domain.nodes`, `domain.api_keys`, `domain.challenges`, `domain.policy_versions`,
`domain.limits.BucketTable`).

The one rule: everything a use case reads and writes inside `async with store.unit_of_work()
as uow:` commits together when the block exits normally and not at all when it raises; nothing
written is visible to any other unit of work before the commit, and a success is reported to
a client only after the commit returned.

Race-free by construction (development.md): every decision that two requests could race for is
ONE repository call that the database decides atomically — `credentials.redeem` (a conditional
UPDATE whose row count decides), `nonces.insert` (insert-if-absent with a capacity bound),
`ipam.allocate` (an insert a unique constraint decides), `serials.bump` (an increment),
`limiter.take` / `record_failure` (read-modify-write under a row lock), `challenges.consume`
(a conditional UPDATE whose row count decides). Use cases never implement these as
get-then-put.

Several control instances on one database (scale-out.md): every nonce, challenge, limiter
record and serial lives here, never in one process; `UnitOfWork.lock_writers` serializes the
units of work that change the network (so each instance's cached view can be validated against
`serials.generation()`), and `UnitOfWork.announce` tells the other instances, on commit only,
which nodes' peer maps may have changed (`ports.change_feed` delivers it).

Adapters (each passes `tests/contract/test_store.py`):
`rustynet.adapters.storage.memory.MemoryStore` (tests), `...sqlite.SqliteStore` (default, WAL)
and `...postgres.PostgresStore` (several control instances on one database). Every method is
async (the control plane is asyncio). Repositories take and return domain values only; driver
errors surface as `StoreError` subclasses.

A repository call that raises `AlreadyExists`, `StoreConflict` or `StoreUnavailable` spoils
its unit of work (PostgreSQL aborts the transaction at a failed statement; every adapter keeps
that rule): the unit of work rolls back, and if the caller caught the error and left the block
normally, the exit raises `UnitOfWorkAborted`. Rejections that change nothing by design
(`CredentialRejected`, `ReplayError`, `NotFound`, lifecycle errors) do not spoil it.

"Not found": `get`-style reads return None; a change to something that is not there raises
`NotFound` (never a silent no-op). Times are timezone-aware UTC `datetime`s, stored with
microsecond precision.
"""

from __future__ import annotations

from rustynet.domain.api_keys import ApiKeyRecord, ApiKeyScope
from rustynet.domain.challenges import (
    MAX_CHALLENGE_ID,
    MAX_CHALLENGE_PAYLOAD,
    MIN_CHALLENGE_ID,
    ChallengeKind,
    ChallengeRecord,
)
from rustynet.domain.limits import BucketTable
from rustynet.domain.nodes import (
    MAX_NAME_LENGTH,
    NODE_ID_BYTES,
    NODE_ID_RE,
    NodeRecord,
    NodeStatus,
)
from rustynet.domain.policy_versions import PolicyVersion
from rustynet.ports.store.credentials import ApiKeyRepository, CredentialRepository
from rustynet.ports.store.errors import (
    AlreadyExists,
    MigrationError,
    NotFound,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    TooManyChallenges,
    UnitOfWorkAborted,
    UnknownCredential,
)
from rustynet.ports.store.guards import ChallengeRepository, LimiterRepository, NonceRepository
from rustynet.ports.store.nodes import IpamRepository, NodeRepository
from rustynet.ports.store.policy_audit import AuditRepository, PolicyRepository
from rustynet.ports.store.serials import SerialRepository
from rustynet.ports.store.unit_of_work import Store, UnitOfWork

__all__ = [
    "MAX_CHALLENGE_ID",
    "MAX_CHALLENGE_PAYLOAD",
    "MAX_NAME_LENGTH",
    "MIN_CHALLENGE_ID",
    "NODE_ID_BYTES",
    "NODE_ID_RE",
    "AlreadyExists",
    "ApiKeyRecord",
    "ApiKeyRepository",
    "ApiKeyScope",
    "AuditRepository",
    "BucketTable",
    "ChallengeKind",
    "ChallengeRecord",
    "ChallengeRepository",
    "CredentialRepository",
    "IpamRepository",
    "LimiterRepository",
    "MigrationError",
    "NodeRecord",
    "NodeRepository",
    "NodeStatus",
    "NonceRepository",
    "NotFound",
    "PolicyRepository",
    "PolicyVersion",
    "SerialRepository",
    "Store",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "TooManyChallenges",
    "UnitOfWork",
    "UnitOfWorkAborted",
    "UnknownCredential",
]
