"""In-memory store: the `Store` contract in plain dicts, for tests and one-shot tools.

The one rule: it keeps the same contract as the SQL stores (same errors, same atomic calls,
nothing visible before commit), so code tested against it behaves the same on a database.

A unit of work holds the store's asyncio lock from enter to exit and works on a copy of the
state (every stored value is frozen, so copying the containers suffices); commit swaps the copy
in, rollback drops it. Units of work are therefore serialized, which trivially makes every
repository call atomic.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Self

import attrs

from rustynet.domain.api_keys import ApiKeyRecord
from rustynet.domain.audit import AuditEntry, Checkpoint
from rustynet.domain.challenges import ChallengeKind, ChallengeRecord
from rustynet.domain.credentials import Credential, CredentialId, CredentialState, Redemption
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.ipam import AddressPlan, AddressPoolExhausted
from rustynet.domain.keys import TunnelKey, VerifyKey
from rustynet.domain.limits import (
    BucketOutcome,
    BucketPolicy,
    BucketTable,
    FailureRecord,
    LimitPolicy,
    after_failure,
    after_success,
    bucket_take,
)
from rustynet.domain.nodes import NodeRecord, NodeStatus
from rustynet.domain.policy_versions import PolicyVersion
from rustynet.domain.replay import NonceRecord, ReplayCacheFullError, ReplayedNonceError
from rustynet.domain.scope import Tag
from rustynet.ports.store import (
    AlreadyExists,
    NotFound,
    StoreConflict,
    StoreError,
    TooManyChallenges,
    UnitOfWorkAborted,
    UnknownCredential,
)


@attrs.define
class _State:
    nodes: dict[str, NodeRecord] = attrs.Factory(dict)
    leases: dict[ipaddress.IPv4Address, str] = attrs.Factory(dict)
    credentials: dict[CredentialId, Credential] = attrs.Factory(dict)
    api_keys: dict[str, ApiKeyRecord] = attrs.Factory(dict)
    policies: dict[int, PolicyVersion] = attrs.Factory(dict)
    current_policy: int | None = None
    entries: list[AuditEntry] = attrs.Factory(list)
    checkpoints: dict[int, Checkpoint] = attrs.Factory(dict)
    nonces: dict[bytes, datetime] = attrs.Factory(dict)
    buckets: dict[tuple[BucketTable, str], datetime] = attrs.Factory(dict)
    failures: dict[str, FailureRecord] = attrs.Factory(dict)
    serials: dict[str, int] = attrs.Factory(dict)
    generation: int = 0
    challenges: dict[bytes, ChallengeRecord] = attrs.Factory(dict)
    spoiled: bool = False  # a refused write happened: this copy must not be committed

    def copy(self) -> _State:
        return _State(**{f.name: copy.copy(getattr(self, f.name)) for f in attrs.fields(_State)})


def _spoil(state: _State, exc: StoreError) -> StoreError:
    state.spoiled = True
    return exc


class _Nodes:
    def __init__(self, s: _State) -> None:
        self._s = s

    def _lease_of(self, node_id: str) -> ipaddress.IPv4Address | None:
        return next((a for a, n in self._s.leases.items() if n == node_id), None)

    async def add(self, node: NodeRecord) -> None:
        if self._lease_of(node.id) != node.overlay_ipv4:
            raise NotFound("the node's overlay address is not its lease")
        for other in self._s.nodes.values():
            if node.id == other.id or node.name == other.name:
                raise _spoil(self._s, AlreadyExists("a node with this id or name exists"))
            if node.identity_key == other.identity_key:
                raise _spoil(self._s, AlreadyExists("a node with this identity key exists"))
        self._s.nodes[node.id] = node

    async def get(self, node_id: str) -> NodeRecord | None:
        return self._s.nodes.get(node_id)

    async def get_by_identity(self, identity_key: VerifyKey) -> NodeRecord | None:
        return next((n for n in self._s.nodes.values() if n.identity_key == identity_key), None)

    async def get_by_name(self, name: str) -> NodeRecord | None:
        return next((n for n in self._s.nodes.values() if n.name == name), None)

    async def names_starting_with(self, prefix: str) -> frozenset[str]:
        return frozenset(n.name for n in self._s.nodes.values() if n.name.startswith(prefix))

    async def list_all(self) -> list[NodeRecord]:
        return sorted(self._s.nodes.values(), key=lambda n: (n.created_at, n.id))

    def _require(self, node_id: str) -> NodeRecord:
        node = self._s.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}")
        return node

    def _put(self, node: NodeRecord) -> NodeRecord:
        self._s.nodes[node.id] = node
        return node

    async def rename(self, node_id: str, name: str) -> NodeRecord:
        node = self._require(node_id)
        if any(n.name == name and n.id != node_id for n in self._s.nodes.values()):
            raise _spoil(self._s, AlreadyExists(f"a node named {name!r} exists"))
        return self._put(attrs.evolve(node, name=name))

    async def set_tags(self, node_id: str, tags: frozenset[Tag]) -> NodeRecord:
        return self._put(attrs.evolve(self._require(node_id), tags=tags))

    async def set_tunnel_key(
        self, node_id: str, tunnel_key: TunnelKey, expires_at: datetime
    ) -> NodeRecord:
        node = self._require(node_id)
        return self._put(
            attrs.evolve(node, tunnel_key=tunnel_key, tunnel_key_expires_at=expires_at)
        )

    async def set_endpoints(self, node_id: str, endpoints: tuple[str, ...]) -> NodeRecord:
        return self._put(attrs.evolve(self._require(node_id), underlay_endpoints=endpoints))

    async def touch(self, node_id: str, now: datetime) -> None:
        node = self._require(node_id)
        if node.last_seen_at is None or node.last_seen_at < now:
            self._put(attrs.evolve(node, last_seen_at=now))

    async def revoke(self, node_id: str, now: datetime) -> NodeRecord:
        node = self._require(node_id)
        if node.state is NodeStatus.REVOKED:
            return node
        return self._put(attrs.evolve(node, state=NodeStatus.REVOKED, revoked_at=now))

    async def delete(self, node_id: str) -> None:
        node = self._require(node_id)
        del self._s.nodes[node_id]
        self._s.leases.pop(node.overlay_ipv4, None)


class _Ipam:
    def __init__(self, s: _State, plan: AddressPlan) -> None:
        self._s = s
        self._plan = plan

    async def lookup(self, node_id: str) -> ipaddress.IPv4Address | None:
        return next((a for a, n in self._s.leases.items() if n == node_id), None)

    async def allocate(self, node_id: str) -> ipaddress.IPv4Address:
        existing = await self.lookup(node_id)
        if existing is not None:
            return existing
        for candidate in self._plan.candidates(node_id):
            if candidate not in self._s.leases:
                self._s.leases[candidate] = node_id
                return candidate
        raise AddressPoolExhausted(f"no free overlay address in {self._plan.network}")

    async def release(self, node_id: str) -> None:
        if node_id in self._s.nodes:
            raise _spoil(self._s, AlreadyExists("the node exists: delete it instead"))
        address = await self.lookup(node_id)
        if address is not None:
            del self._s.leases[address]


class _Credentials:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, credential: Credential) -> None:
        if credential.id in self._s.credentials:
            raise _spoil(self._s, AlreadyExists("a credential with this id exists"))
        self._s.credentials[credential.id] = credential

    async def get(self, credential_id: CredentialId) -> Credential | None:
        return self._s.credentials.get(credential_id)

    async def list_all(self) -> list[Credential]:
        return sorted(self._s.credentials.values(), key=lambda c: (c.created_at, c.id.to_text()))

    async def redeem(self, credential_id: CredentialId, now: datetime) -> Credential:
        current = self._s.credentials.get(credential_id)
        if current is None:
            raise UnknownCredential("credential is unknown")
        redemption = current.redemption(now)
        if not await self.apply_redemption(redemption):  # pragma: no cover - serialized UoWs
            raise _spoil(self._s, StoreConflict("credential changed under redemption"))
        return redemption.after

    async def apply_redemption(self, redemption: Redemption) -> bool:
        stored = self._s.credentials.get(redemption.credential_id)
        if stored is None or not redemption.precondition_holds(stored):
            return False  # computed from a read that no longer holds: write nothing
        self._s.credentials[redemption.credential_id] = redemption.after
        return True

    async def revoke(self, credential_id: CredentialId, now: datetime) -> Credential:
        current = self._s.credentials.get(credential_id)
        if current is None:
            raise NotFound("credential is unknown")
        after = current.revoke(now)
        self._s.credentials[credential_id] = after
        return after

    async def expire_lapsed(self, now: datetime) -> int:
        lapsed = [
            c
            for c in self._s.credentials.values()
            if c.state is CredentialState.CREATED and c.expires_at <= now
        ]
        for c in lapsed:
            self._s.credentials[c.id] = c.expire(now)
        return len(lapsed)


class _ApiKeys:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, key: ApiKeyRecord) -> None:
        if key.id in self._s.api_keys:
            raise _spoil(self._s, AlreadyExists("an API key with this id exists"))
        self._s.api_keys[key.id] = key

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._s.api_keys.get(key_id)

    async def list_all(self) -> list[ApiKeyRecord]:
        return sorted(self._s.api_keys.values(), key=lambda k: (k.created_at, k.id))

    def _require(self, key_id: str) -> ApiKeyRecord:
        key = self._s.api_keys.get(key_id)
        if key is None:
            raise NotFound(f"no API key {key_id!r}")
        return key

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord:
        key = self._require(key_id)
        if key.revoked_at is None:
            key = attrs.evolve(key, revoked_at=now)
            self._s.api_keys[key_id] = key
        return key

    async def touch(self, key_id: str, now: datetime) -> None:
        key = self._require(key_id)
        if key.last_used_at is None or key.last_used_at < now:
            self._s.api_keys[key_id] = attrs.evolve(key, last_used_at=now)


class _Policies:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def put(
        self, document: str, now: datetime, author: str, *, expected_current: int | None
    ) -> PolicyVersion:
        if self._s.current_policy != expected_current:
            raise _spoil(self._s, StoreConflict("the policy changed since it was read"))
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


class _Audit:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def append(self, entry: AuditEntry) -> None:
        expected = len(self._s.entries)
        if entry.index > expected:
            raise LocalProtocolError(f"audit entry {entry.index} leaves a gap after {expected - 1}")
        if entry.index < expected:
            raise _spoil(self._s, StoreConflict(f"audit index {entry.index} is taken"))
        self._s.entries.append(entry)

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        if checkpoint.index in self._s.checkpoints:
            raise _spoil(self._s, AlreadyExists(f"a checkpoint at {checkpoint.index} exists"))
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


class _Nonces:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def insert(self, record: NonceRecord, now: datetime, capacity: int) -> None:
        expires_at = self._s.nonces.get(record.nonce)
        if expires_at is not None and now <= expires_at:
            raise ReplayedNonceError("nonce already used")
        if await self.count(now) >= capacity:
            raise ReplayCacheFullError("replay cache is full; refusing new signed requests")
        self._s.nonces[record.nonce] = record.expires_at

    async def purge(self, now: datetime) -> int:
        gone = [n for n, e in self._s.nonces.items() if e < now]
        for nonce in gone:
            del self._s.nonces[nonce]
        return len(gone)

    async def count(self, now: datetime) -> int:
        return sum(1 for e in self._s.nonces.values() if e >= now)


class _Limiter:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def load_tat(self, table: BucketTable, key: str) -> datetime | None:
        return self._s.buckets.get((table, key))

    async def peek(self, table: BucketTable, key: str) -> datetime | None:
        return self._s.buckets.get((table, key))

    async def store_tat(self, table: BucketTable, key: str, tat: datetime) -> None:
        self._s.buckets[table, key] = tat

    async def take(
        self, table: BucketTable, key: str, now: datetime, bucket: BucketPolicy
    ) -> BucketOutcome:
        outcome = bucket_take(await self.load_tat(table, key), now, bucket)
        if outcome.allowed:
            await self.store_tat(table, key, outcome.tat)
        return outcome

    async def failures(self, credential: str) -> FailureRecord:
        return self._s.failures.get(credential, FailureRecord())

    def _write(self, credential: str, record: FailureRecord) -> None:
        if record.is_clear:
            self._s.failures.pop(credential, None)
        else:
            self._s.failures[credential] = record

    async def record_failure(
        self, credential: str, now: datetime, policy: LimitPolicy
    ) -> FailureRecord:
        updated = after_failure(await self.failures(credential), now, policy)
        self._write(credential, updated)
        return updated

    async def record_success(self, credential: str) -> None:
        self._write(credential, after_success(await self.failures(credential)))

    async def reset(self, credential: str) -> None:
        self._s.failures.pop(credential, None)

    async def prune(self, now: datetime) -> int:
        gone = [k for k, tat in self._s.buckets.items() if tat <= now]
        for key in gone:
            del self._s.buckets[key]
        return len(gone)


class _Serials:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def bump(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        bumped = {}
        for node_id in sorted(set(node_ids)):
            bumped[node_id] = self._s.serials.get(node_id, 0) + 1
            self._s.serials[node_id] = bumped[node_id]
        return bumped

    async def get(self, node_id: str) -> int:
        return self._s.serials.get(node_id, 0)

    async def get_active(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        nodes = self._s.nodes
        return {
            i: self._s.serials.get(i, 0)
            for i in node_ids
            if (n := nodes.get(i)) is not None and n.state is NodeStatus.ACTIVE
        }

    async def generation(self) -> int:
        return self._s.generation

    async def bump_generation(self) -> int:
        self._s.generation += 1
        return self._s.generation


class _Challenges:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def issue(self, record: ChallengeRecord, now: datetime, capacity: int) -> None:
        if await self.count(record.kind, now) >= capacity:
            raise TooManyChallenges(f"{capacity} {record.kind.value} challenges are live")
        if record.id in self._s.challenges:
            raise _spoil(self._s, AlreadyExists("challenge id is taken"))
        self._s.challenges[record.id] = attrs.evolve(record, used=False)

    async def get(self, kind: ChallengeKind, challenge_id: bytes) -> ChallengeRecord | None:
        found = self._s.challenges.get(bytes(challenge_id))
        return found if found is not None and found.kind is kind else None

    async def consume(
        self, kind: ChallengeKind, challenge_id: bytes, now: datetime
    ) -> ChallengeRecord:
        found = await self.get(kind, challenge_id)
        if found is None or found.used or not now < found.expires_at:
            raise NotFound("no such live, unused challenge")
        used = attrs.evolve(found, used=True)
        self._s.challenges[used.id] = used
        return used

    async def purge(self, now: datetime) -> int:
        gone = [c for c, r in self._s.challenges.items() if r.expires_at < now]
        for challenge_id in gone:
            del self._s.challenges[challenge_id]
        return len(gone)

    async def count(self, kind: ChallengeKind, now: datetime) -> int:
        return sum(
            1
            for r in self._s.challenges.values()
            if r.kind is kind and not r.used and now < r.expires_at
        )


class MemoryUnitOfWork:
    """A serialized transaction over a copy of the store's state."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._state: _State | None = None

    def _s(self) -> _State:
        if self._state is None:
            raise StoreError("use the unit of work inside `async with`")
        return self._state

    @property
    def nodes(self) -> _Nodes:
        """Nodes."""
        return _Nodes(self._s())

    @property
    def credentials(self) -> _Credentials:
        """Join credentials."""
        return _Credentials(self._s())

    @property
    def api_keys(self) -> _ApiKeys:
        """Admin API keys."""
        return _ApiKeys(self._s())

    @property
    def policies(self) -> _Policies:
        """Policy versions."""
        return _Policies(self._s())

    @property
    def audit(self) -> _Audit:
        """Audit chain storage."""
        return _Audit(self._s())

    @property
    def nonces(self) -> _Nonces:
        """Replay nonces."""
        return _Nonces(self._s())

    @property
    def limiter(self) -> _Limiter:
        """Rate-limit state."""
        return _Limiter(self._s())

    @property
    def serials(self) -> _Serials:
        """Peer-map serials."""
        return _Serials(self._s())

    @property
    def ipam(self) -> _Ipam:
        """Overlay address leases."""
        return _Ipam(self._s(), self._store.plan)

    @property
    def challenges(self) -> _Challenges:
        """Single-use challenges."""
        return _Challenges(self._s())

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
        self.state = _State()
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
