# ruff: noqa: S608 - only module constants (column lists, dialect fragments, generated
# placeholder names) are interpolated into SQL; every value is a bound parameter.
"""SQL repositories shared by the SQLite and PostgreSQL stores (plain SQL, no ORM).

The one rule: each race a use case could lose is decided by ONE statement the database
executes atomically (conditional UPDATE, INSERT ... ON CONFLICT, upsert-increment, or a row
lock taken before a read-modify-write), never by Python comparing what it read earlier.

Queries are written once with `:name` placeholders; a `Dialect` rewrites them for the driver
(psycopg wants `%(name)s`) and adds what only one database needs (PostgreSQL's `FOR UPDATE`
row locks and advisory locks; SQLite's `BEGIN IMMEDIATE` already serializes every writer).
Times are stored as integer microseconds since the epoch (exact, and ordered in SQL).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Final, Protocol

import attrs

from rustynet.domain.audit import AuditEntry, Checkpoint
from rustynet.domain.credentials import Credential, CredentialId, CredentialState, Redemption
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.ipam import AddressPlan, AddressPoolExhausted
from rustynet.domain.keys import TunnelKey, VerifyKey
from rustynet.domain.limits import (
    BucketOutcome,
    BucketPolicy,
    FailureRecord,
    LimitPolicy,
    after_failure,
    after_success,
    bucket_take,
)
from rustynet.domain.replay import NonceRecord, ReplayCacheFullError, ReplayedNonceError
from rustynet.domain.scope import Tag
from rustynet.ports.store import (
    AlreadyExists,
    ApiKeyRecord,
    ApiKeyScope,
    BucketTable,
    ChallengeKind,
    ChallengeRecord,
    MigrationError,
    NodeRecord,
    NodeState,
    NotFound,
    PolicyVersion,
    StoreConflict,
    StoreError,
    TooManyChallenges,
    UnknownCredential,
)

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_PLACEHOLDER: Final = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
_MIGRATION_NAME: Final = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_PROBE_BATCHES: Final = (4, 64)  # candidates per probe query: the first few, then 64 at a time
_BATCH: Final = 500  # ids per multi-row statement (well under both databases' limits)
_MAX_REDEEM_ROUNDS: Final = 10_000  # each lost round means another redemption committed
_CREDENTIAL_TIMES: Final = ("created_at", "expires_at", "last_used_at", "ended_at")

Row = tuple[Any, ...]
Params = Mapping[str, object]


def to_micros(when: datetime) -> int:
    """A UTC datetime as integer microseconds since the epoch."""
    return (when - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """Inverse of `to_micros` (a UTC datetime)."""
    return EPOCH + value * _MICROSECOND


def _opt_micros(when: datetime | None) -> int | None:
    return None if when is None else to_micros(when)


def _opt_time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


@attrs.frozen
class Dialect:
    """What differs between the two databases, as SQL fragments."""

    name: str
    named_style: bool  # psycopg: %(name)s instead of :name
    for_update: str  # appended to a SELECT that must lock its row until the end of the UoW
    lock_nonces: str | None  # statement serializing nonce inserts (exact capacity check)
    lock_migrations: str | None
    lock_writers: str | None = None  # `UnitOfWork.lock_writers` (SQLite: BEGIN IMMEDIATE is)
    lock_challenges: str | None = None  # serializing challenge issues (exact capacity check)

    def sql(self, text: str) -> str:
        """The statement in this driver's placeholder style."""
        return _PLACEHOLDER.sub(r"%(\1)s", text) if self.named_style else text


SQLITE: Final = Dialect("sqlite", False, "", None, None)
POSTGRES: Final = Dialect(
    "postgres",
    True,
    " FOR UPDATE",
    "SELECT pg_advisory_xact_lock(7217001)",
    "SELECT pg_advisory_xact_lock(7217000)",
    "SELECT pg_advisory_xact_lock(7217002)",
    "SELECT pg_advisory_xact_lock(7217003)",
)


class Executor(Protocol):
    """Runs one statement inside the current transaction (driver errors already translated)."""

    dialect: Dialect
    failed: bool  # a statement failed or a write was refused: the transaction must not commit

    async def execute(self, sql: str, params: Params = ...) -> tuple[list[Row], int]:
        """Rows (all of them, fetched) and the row count."""
        ...


def spoil(ex: Executor, exc: StoreError) -> StoreError:
    """Mark the transaction as failed (it will roll back) and return `exc` to raise."""
    ex.failed = True
    return exc


async def _rows(ex: Executor, sql: str, params: Params | None = None) -> list[Row]:
    return (await ex.execute(sql, params or {}))[0]


async def _one(ex: Executor, sql: str, params: Params | None = None) -> Row | None:
    rows = await _rows(ex, sql, params)
    return rows[0] if rows else None


async def _count(ex: Executor, sql: str, params: Params | None = None) -> int:
    return (await ex.execute(sql, params or {}))[1]


# --- migrations -------------------------------------------------------------------------------


@attrs.frozen
class Migration:
    """One versioned schema change."""

    version: int
    name: str
    statements: tuple[str, ...]


def load_migrations() -> list[Migration]:
    """The packaged migrations (`migrations/NNNN_name.sql`), in version order."""
    found = []
    for item in resources.files(__package__).joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.fullmatch(item.name)
        if match is None:
            continue
        text = item.read_text(encoding="utf-8")
        statements = tuple(
            s.strip() for s in re.split(r"^;\s*$", text, flags=re.MULTILINE) if _has_sql(s)
        )
        found.append(Migration(int(match[1]), match[2], statements))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise MigrationError("migrations must be numbered 0001, 0002, ... without gaps")
    return found


def _has_sql(chunk: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in chunk.splitlines())


async def migrate(ex: Executor, now: datetime) -> list[int]:
    """Apply pending migrations inside the caller's transaction; return the versions applied."""
    if ex.dialect.lock_migrations is not None:
        await ex.execute(ex.dialect.lock_migrations, {})
    await ex.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        {},
    )
    applied = {r[0] for r in await _rows(ex, "SELECT version FROM schema_migrations")}
    known = load_migrations()
    newer = applied - {m.version for m in known}
    if newer:
        raise MigrationError(f"database schema version {max(newer)} is newer than this code")
    done = []
    for migration in known:
        if migration.version in applied:
            continue
        for statement in migration.statements:
            await ex.execute(statement, {})
        await ex.execute(
            ex.dialect.sql(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"
            ),
            {"v": migration.version, "n": migration.name, "t": to_micros(now)},
        )
        done.append(migration.version)
    return done


# --- nodes and IPAM ---------------------------------------------------------------------------

_NODE_COLUMNS: Final = (
    "id, name, identity_key, tunnel_key, tunnel_key_expires_at, overlay_ipv4, tags, state,"
    " created_at, last_seen_at, revoked_at, underlay_endpoints"
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
        state=NodeState(row[7]),
        created_at=from_micros(row[8]),
        last_seen_at=_opt_time(row[9]),
        revoked_at=_opt_time(row[10]),
        underlay_endpoints=tuple(json.loads(row[11])),
    )


def _tags_json(tags: frozenset[Tag]) -> str:
    return json.dumps(sorted(t.value for t in tags))


class SqlNodes:
    """`NodeRepository` in SQL."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def add(self, node: NodeRecord) -> None:
        """See `NodeRepository.add`."""
        lease = await _one(
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
                " :endpoints)"
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
                "last_seen_at": _opt_micros(node.last_seen_at),
                "revoked_at": _opt_micros(node.revoked_at),
                "endpoints": json.dumps(list(node.underlay_endpoints)),
            },
        )

    async def get(self, node_id: str) -> NodeRecord | None:
        """See `NodeRepository.get`."""
        row = await _one(
            self._ex,
            self._d.sql(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = :id"),
            {"id": node_id},
        )
        return None if row is None else _node(row)

    async def get_by_identity(self, identity_key: VerifyKey) -> NodeRecord | None:
        """See `NodeRepository.get_by_identity`."""
        row = await _one(
            self._ex,
            self._d.sql(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE identity_key = :k"),
            {"k": identity_key.to_text()},
        )
        return None if row is None else _node(row)

    async def get_by_name(self, name: str) -> NodeRecord | None:
        """See `NodeRepository.get_by_name` (the unique index on name)."""
        row = await _one(
            self._ex, self._d.sql(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = :n"), {"n": name}
        )
        return None if row is None else _node(row)

    async def names_starting_with(self, prefix: str) -> frozenset[str]:
        """See `NodeRepository.names_starting_with` (reads names only, not whole rows)."""
        rows = await _rows(
            self._ex,
            self._d.sql("SELECT name FROM nodes WHERE substr(name, 1, :n) = :prefix"),
            {"n": len(prefix), "prefix": prefix},
        )
        return frozenset(str(r[0]) for r in rows)

    async def list_all(self) -> list[NodeRecord]:
        """See `NodeRepository.list_all`."""
        rows = await _rows(self._ex, f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY created_at, id")
        return [_node(r) for r in rows]

    async def _update(self, node_id: str, assignments: str, params: Params) -> NodeRecord:
        row = await _one(
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

    async def set_endpoints(self, node_id: str, endpoints: tuple[str, ...]) -> NodeRecord:
        """See `NodeRepository.set_endpoints`."""
        return await self._update(
            node_id, "underlay_endpoints = :e", {"e": json.dumps(list(endpoints))}
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
        if not await _count(
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
        row = await _one(
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
            for r in await _rows(
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
            claimed = await _count(
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
        node = await _one(
            self._ex, self._d.sql("SELECT id FROM nodes WHERE id = :id"), {"id": node_id}
        )
        if node is not None:
            raise spoil(self._ex, AlreadyExists("the node exists: delete it instead"))
        await self._ex.execute(
            self._d.sql("DELETE FROM ip_leases WHERE node_id = :id"), {"id": node_id}
        )


# --- credentials ------------------------------------------------------------------------------

_CREDENTIAL_COLUMNS: Final = (
    "id, secret_hash, scope, kind, created_at, expires_at, max_uses, uses, state,"
    " last_used_at, ended_at"
)


def _credential(row: Row) -> Credential:
    record: dict[str, object] = dict(zip(_CREDENTIAL_COLUMNS.split(", "), row, strict=True))
    record["scope"] = json.loads(str(record["scope"]))
    for name in _CREDENTIAL_TIMES:
        value = record[name]
        record[name] = None if value is None else from_micros(int(str(value))).isoformat()
    return Credential.from_record(record)


def _credential_params(credential: Credential) -> dict[str, object]:
    record = credential.to_record()
    params = dict(record)
    params["scope"] = json.dumps(record["scope"])
    for name in _CREDENTIAL_TIMES:
        value = record[name]
        params[name] = None if value is None else to_micros(datetime.fromisoformat(str(value)))
    return params


class SqlCredentials:
    """`CredentialRepository` in SQL; redemption is the conditional UPDATE of credentials.py."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def add(self, credential: Credential) -> None:
        """See `CredentialRepository.add`."""
        await self._ex.execute(
            self._d.sql(
                f"INSERT INTO credentials ({_CREDENTIAL_COLUMNS}) VALUES (:id, :secret_hash,"
                " :scope, :kind, :created_at, :expires_at, :max_uses, :uses, :state,"
                " :last_used_at, :ended_at)"
            ),
            _credential_params(credential),
        )

    async def get(self, credential_id: CredentialId) -> Credential | None:
        """See `CredentialRepository.get`."""
        row = await _one(
            self._ex,
            self._d.sql(f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials WHERE id = :id"),
            {"id": credential_id.to_text()},
        )
        return None if row is None else _credential(row)

    async def list_all(self) -> list[Credential]:
        """See `CredentialRepository.list_all`."""
        rows = await _rows(
            self._ex, f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials ORDER BY created_at, id"
        )
        return [_credential(r) for r in rows]

    async def redeem(self, credential_id: CredentialId, now: datetime) -> Credential:
        """See `CredentialRepository.redeem`."""
        for _ in range(_MAX_REDEEM_ROUNDS):
            current = await self.get(credential_id)
            if current is None:
                raise UnknownCredential("credential is unknown")
            redemption = current.redemption(now)  # raises the specific rejection
            if await self.apply_redemption(redemption):
                return redemption.after
            # Another redemption (or a revocation) committed first: re-read and decide again.
        raise spoil(self._ex, StoreConflict("credential kept changing under redemption"))

    async def apply_redemption(self, redemption: Redemption) -> bool:
        """See `CredentialRepository.apply_redemption`: the conditional UPDATE's row count."""
        after = redemption.after
        won = await _count(
            self._ex,
            self._d.sql(
                "UPDATE credentials SET state = :state, uses = :uses,"
                " last_used_at = :now, ended_at = :ended"
                " WHERE id = :id AND state = :expected_state"
                " AND uses = :expected_uses AND expires_at > :now"
            ),
            {
                "state": after.state.value,
                "uses": after.uses,
                "now": to_micros(redemption.now),
                "ended": _opt_micros(after.ended_at),
                "id": redemption.credential_id.to_text(),
                "expected_state": redemption.expected_state.value,
                "expected_uses": redemption.expected_uses,
            },
        )
        return won == 1

    async def revoke(self, credential_id: CredentialId, now: datetime) -> Credential:
        """See `CredentialRepository.revoke`."""
        for _ in range(_MAX_REDEEM_ROUNDS):
            current = await self.get(credential_id)
            if current is None:
                raise NotFound("credential is unknown")
            after = current.revoke(now)  # raises CredentialTransitionError when it ended
            won = await _count(
                self._ex,
                self._d.sql(
                    "UPDATE credentials SET state = :state, ended_at = :ended"
                    " WHERE id = :id AND state = :created AND uses = :uses"
                ),
                {
                    "state": after.state.value,
                    "ended": to_micros(now),
                    "id": credential_id.to_text(),
                    "created": CredentialState.CREATED.value,
                    "uses": current.uses,
                },
            )
            if won == 1:
                return after
        raise spoil(self._ex, StoreConflict("credential kept changing under revocation"))

    async def expire_lapsed(self, now: datetime) -> int:
        """See `CredentialRepository.expire_lapsed`."""
        return await _count(
            self._ex,
            self._d.sql(
                "UPDATE credentials SET state = :expired, ended_at = :now"
                " WHERE state = :created AND expires_at <= :now"
            ),
            {
                "expired": CredentialState.EXPIRED.value,
                "created": CredentialState.CREATED.value,
                "now": to_micros(now),
            },
        )


# --- API keys and policies --------------------------------------------------------------------

_KEY_COLUMNS: Final = (
    "id, secret_hash, scope, description, created_at, expires_at, revoked_at, last_used_at"
)


def _api_key(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row[0],
        secret_hash=bytes(row[1]),
        scope=ApiKeyScope(row[2]),
        description=row[3],
        created_at=from_micros(row[4]),
        expires_at=from_micros(row[5]),
        revoked_at=_opt_time(row[6]),
        last_used_at=_opt_time(row[7]),
    )


class SqlApiKeys:
    """`ApiKeyRepository` in SQL."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def add(self, key: ApiKeyRecord) -> None:
        """See `ApiKeyRepository.add`."""
        await self._ex.execute(
            self._d.sql(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (:id, :h, :scope, :d, :c, :e,"
                " :r, :u)"
            ),
            {
                "id": key.id,
                "h": key.secret_hash,
                "scope": key.scope.value,
                "d": key.description,
                "c": to_micros(key.created_at),
                "e": to_micros(key.expires_at),
                "r": _opt_micros(key.revoked_at),
                "u": _opt_micros(key.last_used_at),
            },
        )

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """See `ApiKeyRepository.get`."""
        row = await _one(
            self._ex,
            self._d.sql(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = :id"),
            {"id": key_id},
        )
        return None if row is None else _api_key(row)

    async def list_all(self) -> list[ApiKeyRecord]:
        """See `ApiKeyRepository.list_all`."""
        rows = await _rows(self._ex, f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_api_key(r) for r in rows]

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord:
        """See `ApiKeyRepository.revoke`."""
        row = await _one(
            self._ex,
            self._d.sql(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, :now) WHERE id = :id"
                f" RETURNING {_KEY_COLUMNS}"
            ),
            {"now": to_micros(now), "id": key_id},
        )
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        return _api_key(row)

    async def touch(self, key_id: str, now: datetime) -> None:
        """See `ApiKeyRepository.touch`."""
        changed = await _count(
            self._ex,
            self._d.sql(
                "UPDATE api_keys SET last_used_at = CASE WHEN last_used_at IS NULL"
                " OR last_used_at < :now THEN :now ELSE last_used_at END WHERE id = :id"
            ),
            {"now": to_micros(now), "id": key_id},
        )
        if not changed:
            raise NotFound(f"no API key {key_id!r}")


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
        row = await _one(
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
        row = await _one(self._ex, "SELECT COALESCE(MAX(version), 0) + 1 FROM policies")
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
        row = await _one(
            self._ex,
            "SELECT p.version, p.document, p.created_at, p.author FROM policies p"
            " JOIN policy_current c ON c.version = p.version WHERE c.id = 1",
        )
        return None if row is None else _policy(row)

    async def get(self, version: int) -> PolicyVersion | None:
        """See `PolicyRepository.get`."""
        row = await _one(
            self._ex,
            self._d.sql(
                "SELECT version, document, created_at, author FROM policies WHERE version = :v"
            ),
            {"v": version},
        )
        return None if row is None else _policy(row)

    async def list_all(self) -> list[PolicyVersion]:
        """See `PolicyRepository.list_all`."""
        rows = await _rows(
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


# --- audit ------------------------------------------------------------------------------------

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
        row = await _one(self._ex, "SELECT COALESCE(MAX(idx), -1) + 1 FROM audit_entries")
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
        return [_entry(r) for r in await _rows(self._ex, self._d.sql(sql), params)]

    async def last_entry(self) -> AuditEntry | None:
        """See `AuditRepository.last_entry`."""
        row = await _one(
            self._ex, f"SELECT {_ENTRY_COLUMNS} FROM audit_entries ORDER BY idx DESC LIMIT 1"
        )
        return None if row is None else _entry(row)

    async def checkpoints(self) -> list[Checkpoint]:
        """See `AuditRepository.checkpoints`."""
        rows = await _rows(
            self._ex, f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY idx"
        )
        return [_checkpoint(r) for r in rows]

    async def last_checkpoint(self) -> Checkpoint | None:
        """See `AuditRepository.last_checkpoint`."""
        row = await _one(
            self._ex,
            f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY idx DESC LIMIT 1",
        )
        return None if row is None else _checkpoint(row)


# --- nonces, limiter, serials -----------------------------------------------------------------


class SqlNonces:
    """`NonceRepository` in SQL."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def insert(self, record: NonceRecord, now: datetime, capacity: int) -> None:
        """See `NonceRepository.insert`."""
        if self._d.lock_nonces is not None:
            await self._ex.execute(self._d.lock_nonces, {})  # capacity is exact, not racy
        at = to_micros(now)
        if await self.count(now) >= capacity:
            live = await _one(
                self._ex,
                self._d.sql("SELECT 1 FROM nonces WHERE nonce = :n AND expires_at >= :now"),
                {"n": record.nonce, "now": at},
            )
            if live is not None:
                raise ReplayedNonceError("nonce already used")
            raise ReplayCacheFullError("replay cache is full; refusing new signed requests")
        # Insert if absent; an expired leftover row may be reused. Row count 0: replay.
        inserted = await _count(
            self._ex,
            self._d.sql(
                "INSERT INTO nonces (nonce, expires_at) VALUES (:n, :e)"
                " ON CONFLICT (nonce) DO UPDATE SET expires_at = excluded.expires_at"
                " WHERE nonces.expires_at < :now"
            ),
            {"n": record.nonce, "e": to_micros(record.expires_at), "now": at},
        )
        if inserted != 1:
            raise ReplayedNonceError("nonce already used")

    async def purge(self, now: datetime) -> int:
        """See `NonceRepository.purge`."""
        return await _count(
            self._ex,
            self._d.sql("DELETE FROM nonces WHERE expires_at < :now"),
            {"now": to_micros(now)},
        )

    async def count(self, now: datetime) -> int:
        """See `NonceRepository.count`."""
        row = await _one(
            self._ex,
            self._d.sql("SELECT COUNT(*) FROM nonces WHERE expires_at >= :now"),
            {"now": to_micros(now)},
        )
        return int(row[0]) if row else 0


class SqlLimiter:
    """`LimiterRepository` in SQL: placeholder insert, then lock the row, then update it."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def load_tat(self, table: BucketTable, key: str) -> datetime | None:
        """See `LimiterRepository.load_tat`."""
        params = {"t": table.value, "k": key}
        # The placeholder row exists before the lock, so two first requests cannot both
        # see "no row" and both write (an absent row has nothing to lock).
        await self._ex.execute(
            self._d.sql(
                "INSERT INTO limiter_buckets (tbl, key, tat) VALUES (:t, :k, NULL)"
                " ON CONFLICT DO NOTHING"
            ),
            params,
        )
        row = await _one(
            self._ex,
            self._d.sql(
                f"SELECT tat FROM limiter_buckets WHERE tbl = :t AND key = :k{self._d.for_update}"
            ),
            params,
        )
        return None if row is None or row[0] is None else from_micros(row[0])

    async def peek(self, table: BucketTable, key: str) -> datetime | None:
        """See `LimiterRepository.peek`."""
        row = await _one(
            self._ex,
            self._d.sql("SELECT tat FROM limiter_buckets WHERE tbl = :t AND key = :k"),
            {"t": table.value, "k": key},
        )
        return None if row is None or row[0] is None else from_micros(row[0])

    async def store_tat(self, table: BucketTable, key: str, tat: datetime) -> None:
        """See `LimiterRepository.store_tat`."""
        await self._ex.execute(
            self._d.sql(
                "INSERT INTO limiter_buckets (tbl, key, tat) VALUES (:t, :k, :tat)"
                " ON CONFLICT (tbl, key) DO UPDATE SET tat = excluded.tat"
            ),
            {"t": table.value, "k": key, "tat": to_micros(tat)},
        )

    async def take(
        self, table: BucketTable, key: str, now: datetime, bucket: BucketPolicy
    ) -> BucketOutcome:
        """See `LimiterRepository.take`."""
        outcome = bucket_take(await self.load_tat(table, key), now, bucket)
        if outcome.allowed:
            await self.store_tat(table, key, outcome.tat)
        return outcome

    async def _locked_failures(self, credential: str) -> FailureRecord:
        await self._ex.execute(
            self._d.sql(
                "INSERT INTO limiter_failures (credential, consecutive, blocked_until, disabled)"
                " VALUES (:c, 0, NULL, 0) ON CONFLICT DO NOTHING"
            ),
            {"c": credential},
        )
        return await self._read_failures(credential, lock=True)

    async def _read_failures(self, credential: str, *, lock: bool) -> FailureRecord:
        suffix = self._d.for_update if lock else ""
        row = await _one(
            self._ex,
            self._d.sql(
                "SELECT consecutive, blocked_until, disabled FROM limiter_failures"
                f" WHERE credential = :c{suffix}"
            ),
            {"c": credential},
        )
        if row is None:
            return FailureRecord()
        return FailureRecord(int(row[0]), _opt_time(row[1]), bool(row[2]))

    async def _write_failures(self, credential: str, record: FailureRecord) -> None:
        if record.is_clear:
            await self._ex.execute(
                self._d.sql("DELETE FROM limiter_failures WHERE credential = :c"), {"c": credential}
            )
            return
        await self._ex.execute(
            self._d.sql(
                "UPDATE limiter_failures SET consecutive = :n, blocked_until = :b, disabled = :d"
                " WHERE credential = :c"
            ),
            {
                "n": record.consecutive,
                "b": _opt_micros(record.blocked_until),
                "d": int(record.disabled),
                "c": credential,
            },
        )

    async def failures(self, credential: str) -> FailureRecord:
        """See `LimiterRepository.failures`."""
        return await self._read_failures(credential, lock=False)

    async def record_failure(
        self, credential: str, now: datetime, policy: LimitPolicy
    ) -> FailureRecord:
        """See `LimiterRepository.record_failure`."""
        updated = after_failure(await self._locked_failures(credential), now, policy)
        await self._write_failures(credential, updated)
        return updated

    async def record_success(self, credential: str) -> None:
        """See `LimiterRepository.record_success`."""
        current = await self._read_failures(credential, lock=True)
        await self._write_failures(credential, after_success(current))

    async def reset(self, credential: str) -> None:
        """See `LimiterRepository.reset`."""
        await self._ex.execute(
            self._d.sql("DELETE FROM limiter_failures WHERE credential = :c"), {"c": credential}
        )

    async def prune(self, now: datetime) -> int:
        """See `LimiterRepository.prune`."""
        return await _count(
            self._ex,
            self._d.sql("DELETE FROM limiter_buckets WHERE tat IS NULL OR tat <= :now"),
            {"now": to_micros(now)},
        )


class SqlSerials:
    """`SerialRepository` in SQL: one upsert-increment per node, in sorted order (no
    deadlock between two bumps of overlapping node sets)."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def bump(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        """See `SerialRepository.bump` (one multi-row upsert per `_BATCH` nodes: a policy
        change that wakes every node was one statement per node)."""
        ordered = sorted(set(node_ids))
        serials: dict[str, int] = {}
        for start in range(0, len(ordered), _BATCH):
            chunk = ordered[start : start + _BATCH]
            values = ", ".join(f"(:id{i}, 1)" for i in range(len(chunk)))
            rows = await _rows(
                self._ex,
                self._d.sql(
                    f"INSERT INTO peer_serials (node_id, serial) VALUES {values}"
                    " ON CONFLICT (node_id) DO UPDATE SET serial = peer_serials.serial + 1"
                    " RETURNING node_id, serial"
                ),
                {f"id{i}": node_id for i, node_id in enumerate(chunk)},
            )
            serials.update((str(r[0]), int(r[1])) for r in rows)
            if len(rows) != len(chunk):  # pragma: no cover - an upsert returns every row
                raise spoil(self._ex, StoreConflict("serial upsert returned too few rows"))
        return {node_id: serials[node_id] for node_id in ordered}

    async def get(self, node_id: str) -> int:
        """See `SerialRepository.get`."""
        row = await _one(
            self._ex,
            self._d.sql("SELECT serial FROM peer_serials WHERE node_id = :id"),
            {"id": node_id},
        )
        return 0 if row is None else int(row[0])

    async def get_active(self, node_ids: Sequence[str]) -> Mapping[str, int]:
        """See `SerialRepository.get_active` (one SELECT per `_BATCH` nodes)."""
        ordered = sorted(set(node_ids))
        serials: dict[str, int] = {}
        for start in range(0, len(ordered), _BATCH):
            chunk = ordered[start : start + _BATCH]
            names = ", ".join(f":id{i}" for i in range(len(chunk)))
            rows = await _rows(
                self._ex,
                self._d.sql(
                    "SELECT n.id, COALESCE(s.serial, 0) FROM nodes n"
                    " LEFT JOIN peer_serials s ON s.node_id = n.id"
                    f" WHERE n.state = 'active' AND n.id IN ({names})"
                ),
                {f"id{i}": node_id for i, node_id in enumerate(chunk)},
            )
            serials.update((str(r[0]), int(r[1])) for r in rows)
        return serials

    async def generation(self) -> int:
        """See `SerialRepository.generation`."""
        row = await _one(self._ex, "SELECT generation FROM net_generation WHERE id = 1")
        return 0 if row is None else int(row[0])

    async def bump_generation(self) -> int:
        """See `SerialRepository.bump_generation`."""
        row = await _one(
            self._ex,
            "UPDATE net_generation SET generation = generation + 1 WHERE id = 1"
            " RETURNING generation",
        )
        if row is None:  # pragma: no cover - migration 0003 inserts the row
            raise spoil(self._ex, StoreError("net_generation row is missing"))
        return int(row[0])


_CHALLENGE_COLUMNS: Final = "id, kind, subject, payload, expires_at, used"


def _challenge(row: Row) -> ChallengeRecord:
    return ChallengeRecord(
        id=bytes(row[0]),
        kind=ChallengeKind(row[1]),
        subject=row[2],
        payload=row[3],
        expires_at=from_micros(row[4]),
        used=bool(row[5]),
    )


class SqlChallenges:
    """`ChallengeRepository` in SQL: consumption is one conditional UPDATE."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def issue(self, record: ChallengeRecord, now: datetime, capacity: int) -> None:
        """See `ChallengeRepository.issue`."""
        if self._d.lock_challenges is not None:
            await self._ex.execute(self._d.lock_challenges, {})  # capacity is exact, not racy
        if await self.count(record.kind, now) >= capacity:
            raise TooManyChallenges(f"{capacity} {record.kind.value} challenges are live")
        await self._ex.execute(
            self._d.sql(
                f"INSERT INTO challenges ({_CHALLENGE_COLUMNS})"
                " VALUES (:id, :kind, :subject, :payload, :expires_at, 0)"
            ),
            {
                "id": record.id,
                "kind": record.kind.value,
                "subject": record.subject,
                "payload": record.payload,
                "expires_at": to_micros(record.expires_at),
            },
        )

    async def get(self, kind: ChallengeKind, challenge_id: bytes) -> ChallengeRecord | None:
        """See `ChallengeRepository.get`."""
        row = await _one(
            self._ex,
            self._d.sql(
                f"SELECT {_CHALLENGE_COLUMNS} FROM challenges WHERE id = :id AND kind = :kind"
            ),
            {"id": bytes(challenge_id), "kind": kind.value},
        )
        return None if row is None else _challenge(row)

    async def consume(
        self, kind: ChallengeKind, challenge_id: bytes, now: datetime
    ) -> ChallengeRecord:
        """See `ChallengeRepository.consume` (a concurrent consumer waits for the row lock,
        then re-checks `used = 0` on the committed row and updates nothing)."""
        row = await _one(
            self._ex,
            self._d.sql(
                "UPDATE challenges SET used = 1 WHERE id = :id AND kind = :kind AND used = 0"
                f" AND expires_at > :now RETURNING {_CHALLENGE_COLUMNS}"
            ),
            {"id": bytes(challenge_id), "kind": kind.value, "now": to_micros(now)},
        )
        if row is None:
            raise NotFound("no such live, unused challenge")
        return _challenge(row)

    async def purge(self, now: datetime) -> int:
        """See `ChallengeRepository.purge`."""
        return await _count(
            self._ex,
            self._d.sql("DELETE FROM challenges WHERE expires_at < :now"),
            {"now": to_micros(now)},
        )

    async def count(self, kind: ChallengeKind, now: datetime) -> int:
        """See `ChallengeRepository.count`."""
        row = await _one(
            self._ex,
            self._d.sql(
                "SELECT COUNT(*) FROM challenges"
                " WHERE kind = :kind AND used = 0 AND expires_at > :now"  # index challenges_pending
            ),
            {"kind": kind.value, "now": to_micros(now)},
        )
        return int(row[0]) if row else 0


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
