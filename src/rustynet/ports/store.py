"""Store port: the control plane's persistent state behind one unit of work.

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

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Final, Protocol, Self

import attrs

from rustynet.domain.audit import AuditEntry, Checkpoint
from rustynet.domain.credentials import Credential, CredentialId, CredentialRejected, Redemption
from rustynet.domain.errors import LocalProtocolError, RustynetError
from rustynet.domain.keys import TunnelKey, VerifyKey
from rustynet.domain.limits import BucketOutcome, BucketPolicy, FailureRecord, LimitPolicy
from rustynet.domain.replay import NonceRecord
from rustynet.domain.scope import Tag

MAX_NAME_LENGTH: Final = 63  # a DNS label
MAX_ENDPOINTS: Final = 16  # underlay endpoints one node may report
MAX_ENDPOINT_LENGTH: Final = 64  # "[full IPv6 literal]:65535" fits
NODE_ID_BYTES: Final = 12  # a node id is "node_" + base64url of this many random bytes
NODE_ID_RE: Final = re.compile(r"node_[A-Za-z0-9_-]{16}")


# --- errors -----------------------------------------------------------------------------------


class StoreError(RustynetError):
    """The store failed or refused; the message is for the operator (never holds a secret)."""


class StoreUnavailable(StoreError):  # noqa: N818 - names the state, like KeystoreUnavailable
    """The database cannot be reached or answered with a driver error (nothing committed)."""


class StoreConflict(StoreError):  # noqa: N818 - names the outcome, like CredentialRejected
    """A concurrent unit of work won (serialization failure, deadlock, lost race): the whole
    unit of work was rolled back and may be retried from the start."""


class UnitOfWorkAborted(StoreError):  # noqa: N818 - names the outcome
    """The block ended normally although a repository call in it had failed (and the
    exception was caught): nothing was committed."""


class NotFound(StoreError):  # noqa: N818 - reads as the fact it reports, like KeyError
    """The record to change does not exist."""


class AlreadyExists(StoreError):  # noqa: N818 - reads as the fact it reports
    """A record with this id (or unique name / identity key / version) already exists."""


class MigrationError(StoreError):
    """The database schema is newer than this code or a migration failed (nothing applied)."""


class TooManyChallenges(StoreError):  # noqa: N818 - names the state, like TooManyWaiters
    """`capacity` live challenges of this kind are outstanding; nothing was stored (the unit
    of work is not spoiled: the refusal is by design)."""


class UnknownCredential(CredentialRejected):
    """No credential with this id exists (the edge answers it like any other rejection)."""


# --- stored values ----------------------------------------------------------------------------


def _aware(_: object, attribute: attrs.Attribute[datetime], value: object) -> None:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise LocalProtocolError(f"{attribute.name} must be a timezone-aware UTC datetime")


def _optional_aware(_: object, attribute: attrs.Attribute[datetime | None], value: object) -> None:
    if value is not None:
        _aware(_, attribute, value)  # type: ignore[arg-type]  # same check, optional value


def _name(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise LocalProtocolError(f"{attribute.name} must be 1..{MAX_NAME_LENGTH} characters")


def _text_id(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isprintable():
        raise LocalProtocolError(f"{attribute.name} must be 1..128 printable characters")


def _tags(_: object, attribute: attrs.Attribute[frozenset[Tag]], value: object) -> None:
    if not isinstance(value, frozenset) or not all(isinstance(t, Tag) for t in value):
        raise LocalProtocolError(f"{attribute.name} must be a frozenset of Tag")


def _endpoints(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: object) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) > MAX_ENDPOINTS
        or len(set(value)) != len(value)
        or not all(
            isinstance(e, str) and 0 < len(e) <= MAX_ENDPOINT_LENGTH and e.isascii() for e in value
        )
    ):
        raise LocalProtocolError(
            f"{attribute.name} must be a tuple of at most {MAX_ENDPOINTS} distinct short ASCII"
            " strings"
        )


class NodeState(enum.Enum):
    """A node is active until revoked; revoked nodes stay listed (and keep their address)
    until an admin deletes them."""

    ACTIVE = "active"
    REVOKED = "revoked"


@attrs.frozen
class NodeRecord:
    """An enrolled node as the control plane stores it (public keys only)."""

    id: str = attrs.field(validator=_text_id)
    name: str = attrs.field(validator=_name)
    identity_key: VerifyKey = attrs.field(validator=attrs.validators.instance_of(VerifyKey))
    tunnel_key: TunnelKey = attrs.field(validator=attrs.validators.instance_of(TunnelKey))
    tunnel_key_expires_at: datetime = attrs.field(validator=_aware)
    overlay_ipv4: ipaddress.IPv4Address = attrs.field(
        validator=attrs.validators.instance_of(ipaddress.IPv4Address)
    )
    tags: frozenset[Tag] = attrs.field(validator=_tags)
    created_at: datetime = attrs.field(validator=_aware)
    state: NodeState = attrs.field(
        default=NodeState.ACTIVE, validator=attrs.validators.instance_of(NodeState)
    )
    last_seen_at: datetime | None = attrs.field(default=None, validator=_optional_aware)
    revoked_at: datetime | None = attrs.field(default=None, validator=_optional_aware)
    underlay_endpoints: tuple[str, ...] = attrs.field(default=(), validator=_endpoints)
    """Where peers can reach the node (`host:port`, validated by the use case), as it last
    reported them; kept across restarts."""

    def __attrs_post_init__(self) -> None:
        if (self.state is NodeState.REVOKED) != (self.revoked_at is not None):
            raise LocalProtocolError("revoked_at is set exactly for revoked nodes")

    @property
    def overlay_addresses(self) -> tuple[ipaddress.IPv4Address]:
        """Every overlay address of the node (IPv4 only for now)."""
        return (self.overlay_ipv4,)


class ApiKeyScope(enum.Enum):
    """What an admin API key may do."""

    ADMIN = "admin"
    READ_ONLY = "read-only"
    ENROLL_ONLY = "enroll-only"


@attrs.frozen
class ApiKeyRecord:
    """An admin API key as stored: its id, the secret's hash (never the secret), scope, times."""

    id: str = attrs.field(validator=_text_id)
    secret_hash: bytes = attrs.field(repr=False, validator=attrs.validators.instance_of(bytes))
    scope: ApiKeyScope = attrs.field(validator=attrs.validators.instance_of(ApiKeyScope))
    description: str = attrs.field(validator=attrs.validators.instance_of(str))
    created_at: datetime = attrs.field(validator=_aware)
    expires_at: datetime = attrs.field(validator=_aware)
    revoked_at: datetime | None = attrs.field(default=None, validator=_optional_aware)
    last_used_at: datetime | None = attrs.field(default=None, validator=_optional_aware)

    def usable_at(self, now: datetime) -> bool:
        """True when the key is neither revoked nor expired at `now`."""
        return self.revoked_at is None and now < self.expires_at


@attrs.frozen
class PolicyVersion:
    """One stored policy document; versions count up from 1 and are never changed."""

    version: int = attrs.field(validator=attrs.validators.instance_of(int))
    document: str = attrs.field(validator=attrs.validators.instance_of(str))
    created_at: datetime = attrs.field(validator=_aware)
    author: str = attrs.field(validator=attrs.validators.instance_of(str))


class ChallengeKind(enum.Enum):
    """Which handshake a stored challenge belongs to. Only enrollment stores its challenges:
    token-renewal challenges are stateless (`domain.renewal_challenge`); rows of the former
    kind `renewal` left by older versions are never read (every read names its kind) and are
    purged when they expire."""

    ENROLLMENT = "enrollment"


MIN_CHALLENGE_ID: Final = 16  # bytes (128 bits)
MAX_CHALLENGE_ID: Final = 64
MAX_CHALLENGE_PAYLOAD: Final = 4096  # characters


def _challenge_id(_: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes) or not MIN_CHALLENGE_ID <= len(value) <= MAX_CHALLENGE_ID:
        raise LocalProtocolError(
            f"{attribute.name} must be {MIN_CHALLENGE_ID}..{MAX_CHALLENGE_ID} bytes"
        )


def _payload(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or len(value) > MAX_CHALLENGE_PAYLOAD:
        raise LocalProtocolError(f"{attribute.name} must be at most {MAX_CHALLENGE_PAYLOAD} chars")


@attrs.frozen
class ChallengeRecord:
    """A single-use server challenge as stored, so any control instance can check the answer.

    `subject` is what the challenge was issued for (a join key id); `payload` is
    opaque text the use case needs to verify the answer (public values only, never a secret).
    """

    id: bytes = attrs.field(validator=_challenge_id)
    kind: ChallengeKind = attrs.field(validator=attrs.validators.instance_of(ChallengeKind))
    subject: str = attrs.field(validator=_text_id)
    payload: str = attrs.field(validator=_payload)
    expires_at: datetime = attrs.field(validator=_aware)
    used: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


class BucketTable(enum.Enum):
    """Which rate-limit table a GCRA key lives in."""

    IP = "ip"
    IDENTITY = "identity"
    AUTH_FAILURE = "auth-failure"  # failed authentications per source network
    ADMIN = "admin"  # authenticated admin calls per source network


# --- repositories -----------------------------------------------------------------------------


class NodeRepository(Protocol):
    """Enrolled nodes. Ids, names and identity keys are unique (`AlreadyExists`); the node's
    overlay address must be its IPAM lease (allocate first, in the same unit of work)."""

    async def add(self, node: NodeRecord) -> None:
        """Insert a new node; `AlreadyExists` on a taken id, name or identity key;
        `NotFound` when `node.overlay_ipv4` is not this node's lease."""
        ...

    async def get(self, node_id: str) -> NodeRecord | None:
        """The node, or None."""
        ...

    async def get_by_identity(self, identity_key: VerifyKey) -> NodeRecord | None:
        """The node enrolled with this identity key, or None."""
        ...

    async def get_by_name(self, name: str) -> NodeRecord | None:
        """The node called `name` (exact, case-sensitive), or None."""
        ...

    async def names_starting_with(self, prefix: str) -> frozenset[str]:
        """Names of all nodes whose name starts with `prefix` (exact, case-sensitive)."""
        ...

    async def list_all(self) -> list[NodeRecord]:
        """Every node (active and revoked), ordered by creation time then id."""
        ...

    async def rename(self, node_id: str, name: str) -> NodeRecord:
        """Set the name; `NotFound`, or `AlreadyExists` when another node has it."""
        ...

    async def set_tags(self, node_id: str, tags: frozenset[Tag]) -> NodeRecord:
        """Replace the node's tags; `NotFound`."""
        ...

    async def set_tunnel_key(
        self, node_id: str, tunnel_key: TunnelKey, expires_at: datetime
    ) -> NodeRecord:
        """Replace the tunnel key and its binding expiry; `NotFound`."""
        ...

    async def set_endpoints(self, node_id: str, endpoints: tuple[str, ...]) -> NodeRecord:
        """Replace the node's underlay endpoints (order kept); `NotFound`."""
        ...

    async def touch(self, node_id: str, now: datetime) -> None:
        """Record that the node was seen at `now`; `NotFound`."""
        ...

    async def revoke(self, node_id: str, now: datetime) -> NodeRecord:
        """Mark the node revoked at `now` (idempotent: a revoked node keeps its first time);
        `NotFound`. The address stays leased until `delete`."""
        ...

    async def delete(self, node_id: str) -> None:
        """Remove the node and release its overlay address; `NotFound`."""
        ...


class CredentialRepository(Protocol):
    """Join credentials, stored as `Credential.to_record()`; the secret hash never leaves
    except inside the returned `Credential` (for a constant-time compare by the use case)."""

    async def add(self, credential: Credential) -> None:
        """Insert a new credential; `AlreadyExists` on a taken id."""
        ...

    async def get(self, credential_id: CredentialId) -> Credential | None:
        """The credential, or None."""
        ...

    async def list_all(self) -> list[Credential]:
        """Every credential, ordered by creation time then id."""
        ...

    async def redeem(self, credential_id: CredentialId, now: datetime) -> Credential:
        """Spend one use at `now`: read, plan (`Credential.redemption`) and `apply_redemption`,
        whose conditional write decides; return the credential after the redemption. Raises
        `UnknownCredential` or the foundation's `CredentialRejected` subclass (used, exhausted,
        expired, revoked) and changes nothing. Losing a race on a reusable credential that
        still has uses re-reads and tries again, so N concurrent redemptions of a credential
        with k uses left yield exactly min(N, k) successes."""
        ...

    async def apply_redemption(self, redemption: Redemption) -> bool:
        """The compare-and-set under `redeem`: write `redemption.after` only if the stored
        credential still has the state and use count the redemption was computed from and is
        unexpired at its `now`; True if it was written, False (nothing written) when the
        credential changed since it was read or is gone. Every adapter decides this in the
        write itself (SQL: the UPDATE's WHERE clause and its row count), never from an earlier
        read, so a redemption computed from a stale read is refused however the units of work
        interleave."""
        ...

    async def revoke(self, credential_id: CredentialId, now: datetime) -> Credential:
        """Revoke a live credential (a conditional UPDATE); `NotFound`, or the lifecycle's
        `CredentialTransitionError` when it already ended."""
        ...

    async def expire_lapsed(self, now: datetime) -> int:
        """Record every live credential whose TTL has passed as expired; return how many."""
        ...


class ApiKeyRepository(Protocol):
    """Admin API keys (hashed)."""

    async def add(self, key: ApiKeyRecord) -> None:
        """Insert; `AlreadyExists` on a taken id."""
        ...

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The key, or None (revoked and expired keys are returned too: the caller decides)."""
        ...

    async def list_all(self) -> list[ApiKeyRecord]:
        """Every key, ordered by creation time then id."""
        ...

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord:
        """Revoke at `now` (idempotent: keeps the first time); `NotFound`."""
        ...

    async def touch(self, key_id: str, now: datetime) -> None:
        """Record a use at `now` (last_used never moves backwards); `NotFound`."""
        ...


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


class NonceRepository(Protocol):
    """Persisted single-use nonces (`domain.replay.NonceRecord`): the live replay control."""

    async def insert(self, record: NonceRecord, now: datetime, capacity: int) -> None:
        """Remember `record.nonce` until `record.expires_at` in one atomic step: refuse with
        `ReplayedNonceError` if it is remembered and live at `now` (`now <= expires_at`), and
        with `ReplayCacheFullError` if `capacity` live nonces are remembered. Of concurrent
        inserts of one nonce exactly one succeeds."""
        ...

    async def purge(self, now: datetime) -> int:
        """Forget nonces whose retention ended before `now`; return how many."""
        ...

    async def count(self, now: datetime) -> int:
        """How many nonces are live at `now`."""
        ...


class LimiterRepository(Protocol):
    """Per-key GCRA timestamps and per-credential failure records (`domain.limits`).
    Every method is an atomic read-modify-write of one row (row lock / writer lock)."""

    async def take(
        self, table: BucketTable, key: str, now: datetime, bucket: BucketPolicy
    ) -> BucketOutcome:
        """One `limits.bucket_take` on the stored `tat`; stores the new `tat` if allowed."""
        ...

    async def load_tat(self, table: BucketTable, key: str) -> datetime | None:
        """The stored `tat` (None: full bucket), locked until the unit of work ends."""
        ...

    async def peek(self, table: BucketTable, key: str) -> datetime | None:
        """The stored `tat` (None: full bucket), read only: no row is written or locked."""
        ...

    async def store_tat(self, table: BucketTable, key: str, tat: datetime) -> None:
        """Write a `tat` computed from `load_tat` in this unit of work."""
        ...

    async def failures(self, credential: str) -> FailureRecord:
        """The credential's failure record (clear when none is stored)."""
        ...

    async def record_failure(
        self, credential: str, now: datetime, policy: LimitPolicy
    ) -> FailureRecord:
        """Apply `limits.after_failure` to the stored record; return the new record."""
        ...

    async def record_success(self, credential: str) -> None:
        """Apply `limits.after_success` (a clear record is deleted)."""
        ...

    async def reset(self, credential: str) -> None:
        """Admin action: forget the credential's failures and disabled flag."""
        ...

    async def prune(self, now: datetime) -> int:
        """Forget full buckets (`tat <= now`; they decide like absent ones); return how many."""
        ...


class SerialRepository(Protocol):
    """Peer-map serials: per node, strictly increasing, never reused (even across restarts)."""

    async def bump(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        """Increment each node's serial atomically; return the new serials (first is 1)."""
        ...

    async def get(self, node_id: str) -> int:
        """The node's current serial (0 when never bumped)."""
        ...

    async def get_active(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        """The current serial (0 when never bumped) of each of `node_ids` that is a stored,
        ACTIVE node; unknown and revoked nodes are absent. One read for a whole batch of woken
        long polls."""
        ...

    async def generation(self) -> int:
        """The network generation: a counter (0 at first) that moves whenever the node set or
        policy that peer maps are compiled from changes, so a cached compilation can tell
        whether another control instance changed the network."""
        ...

    async def bump_generation(self) -> int:
        """Increment the network generation (call inside `lock_writers`); return the new one."""
        ...


class ChallengeRepository(Protocol):
    """Single-use enrollment challenges shared by every instance."""

    async def issue(self, record: ChallengeRecord, now: datetime, capacity: int) -> None:
        """Store a new, unused challenge; `TooManyChallenges` when `capacity` challenges of its
        kind are live at `now` (exact, also across instances); `AlreadyExists` on a taken id."""
        ...

    async def get(self, kind: ChallengeKind, challenge_id: bytes) -> ChallengeRecord | None:
        """The challenge (used and expired ones too, until purged: the caller decides), or
        None."""
        ...

    async def consume(
        self, kind: ChallengeKind, challenge_id: bytes, now: datetime
    ) -> ChallengeRecord:
        """Mark the challenge used with ONE conditional UPDATE (unused and `now < expires_at`)
        whose row count decides, and return it; `NotFound` when it is unknown, used or expired
        (nothing changes). Of concurrent consumes of one challenge exactly one succeeds."""
        ...

    async def purge(self, now: datetime) -> int:
        """Forget challenges that expired before `now`; return how many."""
        ...

    async def count(self, kind: ChallengeKind, now: datetime) -> int:
        """How many challenges of `kind` are pending: unused and live (`now < expires_at`)."""
        ...


class IpamRepository(Protocol):
    """Overlay address leases (`domain.ipam.AddressPlan` decides the candidates)."""

    async def allocate(self, node_id: str) -> ipaddress.IPv4Address:
        """The node's leased address: the existing lease if it has one (stable), else the
        first free candidate of its probe sequence, claimed with an insert a unique constraint
        decides. Raises `ipam.AddressPoolExhausted` when no candidate is free."""
        ...

    async def lookup(self, node_id: str) -> ipaddress.IPv4Address | None:
        """The node's leased address, or None."""
        ...

    async def release(self, node_id: str) -> None:
        """Drop the lease of a node that has no node record (`AlreadyExists` while the node
        exists: delete the node instead); releasing nothing is a no-op."""
        ...


# --- unit of work and store -------------------------------------------------------------------


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
