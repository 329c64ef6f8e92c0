# ruff: noqa: PT012 - the `async with unit_of_work()` block as a whole is what must raise
"""One contract suite for the `Store` port, run against memory, SQLite (a temp file) and a
real PostgreSQL 15 (throwaway cluster from tests/postgres.py; skipped with the reason when the
binaries are missing). Every repository method, rollback on error, isolation before commit,
and strictly increasing serials."""

from __future__ import annotations

import contextlib
import ipaddress
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import pytest_asyncio
from rustynet.adapters.storage.memory import MemoryStore
from rustynet.adapters.storage.postgres import PostgresStore
from rustynet.adapters.storage.sql.migrations import load_migrations
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.domain.audit import AuditChain, Checkpoint
from rustynet.domain.candidates import Candidate
from rustynet.domain.credentials import (
    Credential,
    CredentialExhausted,
    CredentialExpired,
    CredentialId,
    CredentialRevoked,
    CredentialState,
    CredentialTransitionError,
    CredentialUsed,
)
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.ipam import AddressPlan, AddressPoolExhausted
from rustynet.domain.keys import SigningKey, TunnelKey, TunnelKeyScheme
from rustynet.domain.limits import BucketPolicy, FailureRecord, LimitPolicy
from rustynet.domain.replay import NonceRecord, ReplayCacheFullError, ReplayedNonceError
from rustynet.domain.scope import Scope, Tag
from rustynet.ports.store import (
    AlreadyExists,
    ApiKeyRecord,
    ApiKeyScope,
    BucketTable,
    NodeRecord,
    NodeStatus,
    NotFound,
    Store,
    StoreConflict,
    UnitOfWorkAborted,
    UnknownCredential,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SMALL_PLAN = AddressPlan(network=ipaddress.IPv4Network("100.64.0.0/29"))  # 6 usable addresses


class BoomError(Exception):
    """Raised inside a unit of work to force a rollback."""


@pytest_asyncio.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open, empty store of each kind."""
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "control.db")
    else:
        made = PostgresStore(request.getfixturevalue("postgres_dsn"), max_size=4)
    await made.open()
    try:
        yield made
    finally:
        await made.close()


def make_node(n: int, address: ipaddress.IPv4Address) -> NodeRecord:
    """A node with keys derived from `n`."""
    return NodeRecord(
        id=f"node-{n}",
        name=f"host-{n}",
        identity_key=SigningKey.from_seed(bytes([n]) * 32).public_key,
        tunnel_key=TunnelKey(TunnelKeyScheme.X25519, bytes([n]) * 32),
        tunnel_key_expires_at=NOW + timedelta(days=180),
        overlay_ipv4=address,
        tags=frozenset({Tag("tag:server")}),
        created_at=NOW + timedelta(seconds=n),
    )


def make_credential(n: int, *, reusable: bool = False, uses: int | None = None) -> Credential:
    """A one-time (or reusable) credential created at NOW with a 30 min TTL."""
    return Credential.create(
        id=CredentialId(bytes([n]) * 16),
        secret_hash=bytes([n]) * 32,
        scope=Scope.of(["tag:ci"]),
        now=NOW,
        reusable=reusable,
        max_uses=uses,
    )


async def enroll(store: Store, n: int) -> NodeRecord:
    """Allocate an address and add node `n` in one unit of work."""
    async with store.unit_of_work() as uow:
        address = await uow.ipam.allocate(f"node-{n}")
        node = make_node(n, address)
        await uow.nodes.add(node)
    return node


# --- unit of work -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unit_of_work_rolls_back_everything_on_error(store: Store) -> None:
    """An exception inside the block undoes every write of the unit of work."""
    with pytest.raises(BoomError):
        async with store.unit_of_work() as uow:
            await uow.credentials.add(make_credential(1))
            await uow.serials.bump(["node-1"])
            await uow.ipam.allocate("node-1")
            raise BoomError
    async with store.unit_of_work() as uow:
        assert await uow.credentials.get(make_credential(1).id) is None
        assert await uow.serials.get("node-1") == 0
        assert await uow.ipam.lookup("node-1") is None


@pytest.mark.asyncio
async def test_store_error_inside_unit_of_work_rolls_back_earlier_writes(store: Store) -> None:
    """A refused write (duplicate id) aborts the unit of work; its earlier writes are gone."""
    async with store.unit_of_work() as uow:
        await uow.credentials.add(make_credential(1))
    with pytest.raises(AlreadyExists):
        async with store.unit_of_work() as uow:
            await uow.credentials.add(make_credential(2))
            await uow.credentials.add(make_credential(1))
    async with store.unit_of_work() as uow:
        assert [c.id for c in await uow.credentials.list_all()] == [make_credential(1).id]


@pytest.mark.asyncio
async def test_writes_are_invisible_to_others_before_commit(store: Store) -> None:
    """A second unit of work sees a write only after the first committed."""
    seen: list[int] = []
    async with store.unit_of_work() as uow:
        await uow.serials.bump(["n"])
    # The second unit of work cannot start until the first ends (writer lock) or reads the
    # committed state only; either way it sees 1, never a half-done 2.
    async with store.unit_of_work() as uow:
        seen.append(await uow.serials.get("n"))
    assert seen == [1]


@pytest.mark.asyncio
async def test_repositories_are_unreachable_outside_the_block(store: Store) -> None:
    """Using a unit of work that was never entered (or already left) is refused."""
    uow = store.unit_of_work()
    with pytest.raises(Exception, match="inside `async with`"):
        _ = uow.nodes


@pytest.mark.asyncio
async def test_reopening_keeps_data_and_schema(store: Store) -> None:
    """Close + open applies no migration twice and loses nothing committed."""
    async with store.unit_of_work() as uow:
        await uow.serials.bump(["n"])
    await store.close()
    await store.open()
    async with store.unit_of_work() as uow:
        assert await uow.serials.get("n") == 1


# --- nodes and IPAM ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_node_round_trip_and_lookups(store: Store) -> None:
    """A node reads back equal by id, by identity key and in the list."""
    node = await enroll(store, 1)
    other = await enroll(store, 2)
    async with store.unit_of_work() as uow:
        assert await uow.nodes.get("node-1") == node
        assert await uow.nodes.get_by_identity(node.identity_key) == node
        assert await uow.nodes.list_all() == [node, other]
        assert await uow.nodes.get("nope") is None
        assert await uow.nodes.get_by_identity(SigningKey.from_seed(bytes(32)).public_key) is None


@pytest.mark.asyncio
async def test_node_names_starting_with_matches_exact_prefixes(store: Store) -> None:
    """Names-only prefix lookup: case-sensitive, no wildcard meaning for % or _."""
    for n in (1, 2, 11):
        await enroll(store, n)
    async with store.unit_of_work() as uow:
        await uow.nodes.rename("node-11", "host_%x")
        assert await uow.nodes.names_starting_with("host-1") == {"host-1"}
        assert await uow.nodes.names_starting_with("host-") == {"host-1", "host-2"}
        assert await uow.nodes.names_starting_with("host_%") == {"host_%x"}
        assert await uow.nodes.names_starting_with("HOST") == frozenset()
        assert await uow.nodes.names_starting_with("") == {"host-1", "host-2", "host_%x"}
        assert (await uow.nodes.get_by_name("host_%x")) == await uow.nodes.get("node-11")
        assert await uow.nodes.get_by_name("host_%") is None
        assert await uow.nodes.get_by_name("HOST-1") is None


@pytest.mark.asyncio
async def test_node_add_refuses_duplicates_and_foreign_addresses(store: Store) -> None:
    """Unique id, name and identity key; the address must be the node's own lease."""
    node = await enroll(store, 1)
    for dup in (
        attrs.evolve(make_node(2, node.overlay_ipv4), name=node.name),
        attrs.evolve(make_node(2, node.overlay_ipv4), identity_key=node.identity_key),
    ):
        with pytest.raises(AlreadyExists):
            async with store.unit_of_work() as uow:
                address = await uow.ipam.allocate(dup.id)
                await uow.nodes.add(attrs.evolve(dup, overlay_ipv4=address))
    with pytest.raises(NotFound):  # node-3 tries to take node-1's address
        async with store.unit_of_work() as uow:
            await uow.ipam.allocate("node-3")
            await uow.nodes.add(make_node(3, node.overlay_ipv4))


@pytest.mark.asyncio
async def test_node_updates(store: Store) -> None:
    """rename, set_tags, set_tunnel_key, touch and revoke change exactly their fields."""
    node = await enroll(store, 1)
    await enroll(store, 2)
    new_key = TunnelKey(TunnelKeyScheme.X25519, b"\x09" * 32)
    later = NOW + timedelta(hours=1)
    async with store.unit_of_work() as uow:
        assert (await uow.nodes.rename("node-1", "renamed")).name == "renamed"
        tags = frozenset({Tag("tag:a"), Tag("tag:b")})
        assert (await uow.nodes.set_tags("node-1", tags)).tags == tags
        updated = await uow.nodes.set_tunnel_key("node-1", new_key, later)
        assert (updated.tunnel_key, updated.tunnel_key_expires_at) == (new_key, later)
        await uow.nodes.touch("node-1", later)
        await uow.nodes.touch("node-1", NOW)  # last_seen never moves backwards
        revoked = await uow.nodes.revoke("node-1", later)
        again = await uow.nodes.revoke("node-1", later + timedelta(hours=1))
    assert revoked == again
    assert revoked == attrs.evolve(
        node,
        name="renamed",
        tags=tags,
        tunnel_key=new_key,
        tunnel_key_expires_at=later,
        last_seen_at=later,
        state=NodeStatus.REVOKED,
        revoked_at=later,
    )
    with pytest.raises(AlreadyExists):
        async with store.unit_of_work() as uow:
            await uow.nodes.rename("node-2", "renamed")


def cands(*texts: str, kind: str = "local") -> tuple[Candidate, ...]:
    return tuple(Candidate.parse(t, kind) for t in texts)


@pytest.mark.asyncio
async def test_node_candidates_are_replaced_in_order_and_kept(store: Store) -> None:
    """set_candidates replaces the list (order and kinds kept, empty allowed), stamps
    candidates_updated_at and changes nothing else."""
    node = await enroll(store, 1)
    candidates = (
        *cands("198.51.100.2:41641"),
        *cands("[2001:db8::1]:41641", kind="configured"),
        *cands("203.0.113.9:6000", kind="reflexive"),
    )
    async with store.unit_of_work() as uow:
        updated = await uow.nodes.set_candidates("node-1", candidates, NOW)
    assert updated == attrs.evolve(node, candidates=candidates, candidates_updated_at=NOW)
    async with store.unit_of_work() as uow:
        assert await uow.nodes.get("node-1") == updated
        assert (await uow.nodes.list_all())[0].candidates == candidates
        assert (await uow.nodes.rename("node-1", "again")).candidates == candidates
        cleared = await uow.nodes.set_candidates("node-1", (), NOW + timedelta(seconds=1))
    assert cleared.candidates == ()
    assert cleared.candidates_updated_at == NOW + timedelta(seconds=1)
    with pytest.raises(BoomError):
        async with store.unit_of_work() as uow:
            await uow.nodes.set_candidates("node-1", candidates[:1], NOW)
            raise BoomError
    async with store.unit_of_work() as uow:
        found = await uow.nodes.get("node-1")
    assert found is not None
    assert found.candidates == ()


@pytest.mark.asyncio
async def test_node_candidates_survive_close_and_reopen(store: Store) -> None:
    """Candidates are stored, not cached: a closed and reopened store still has them."""
    await enroll(store, 1)
    candidates = cands("203.0.113.7:51820", "[2001:db8::7]:51820")
    async with store.unit_of_work() as uow:
        await uow.nodes.set_candidates("node-1", candidates, NOW)
    await store.close()
    await store.open()
    async with store.unit_of_work() as uow:
        found = await uow.nodes.get("node-1")
    assert found is not None
    assert found.candidates == candidates
    assert found.candidates_updated_at == NOW


@pytest.mark.asyncio
async def test_sqlite_candidates_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    """A second SqliteStore on the file (a restarted process) reads the candidates back."""
    first = SqliteStore(tmp_path / "restart.db")
    await first.open()
    try:
        await enroll(first, 1)
        async with first.unit_of_work() as uow:
            await uow.nodes.set_candidates("node-1", cands("192.0.2.10:41641"), NOW)
    finally:
        await first.close()
    second = SqliteStore(tmp_path / "restart.db")
    await second.open()
    try:
        async with second.unit_of_work() as uow:
            found = await uow.nodes.get("node-1")
    finally:
        await second.close()
    assert found is not None
    assert found.candidates == cands("192.0.2.10:41641")


@pytest.mark.asyncio
async def test_version_4_endpoints_become_configured_candidates(tmp_path: Path) -> None:
    """Migration 5 turns the underlay endpoints schema version 4 stored (typed by hand) into
    `configured` candidates, IPv4 and IPv6, and leaves nodes without any with none."""
    path = tmp_path / "v4.db"
    early = [m for m in load_migrations() if m.version <= 4]
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE schema_migrations ("
            " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        for migration in early:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, 0)",
                (migration.version, migration.name),
            )
        for n, endpoints in ((1, '["198.51.100.2:41641", "[2001:db8::1]:41641"]'), (2, "[]")):
            conn.execute("INSERT INTO ip_leases VALUES (?, ?)", (1684275200 + n, f"node-{n}"))
            conn.execute(
                "INSERT INTO nodes (id, name, identity_key, tunnel_key, tunnel_key_expires_at,"
                " overlay_ipv4, tags, state, created_at, underlay_endpoints)"
                " VALUES (?, ?, ?, ?, 0, ?, '[]', 'active', 0, ?)",
                (
                    f"node-{n}",
                    f"old{n}",
                    SigningKey.from_seed(bytes([n]) * 32).public_key.to_text(),
                    TunnelKey(TunnelKeyScheme.X25519, bytes([n]) * 32).to_text(),
                    1684275200 + n,
                    endpoints,
                ),
            )
    store = SqliteStore(path)
    await store.open()
    try:
        async with store.unit_of_work() as uow:
            one, two = await uow.nodes.get("node-1"), await uow.nodes.get("node-2")
    finally:
        await store.close()
    assert one is not None
    assert two is not None
    assert one.candidates == cands("198.51.100.2:41641", "[2001:db8::1]:41641", kind="configured")
    assert two.candidates == ()
    assert one.candidates_updated_at is None


@pytest.mark.asyncio
async def test_version_1_database_is_migrated_and_its_nodes_have_no_endpoints(
    tmp_path: Path,
) -> None:
    """A database written by schema version 1 opens: migration 2 runs once, old nodes read
    back with no endpoints and can be given some."""
    path = tmp_path / "v1.db"
    first = load_migrations()[0]
    assert first.version == 1
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE schema_migrations ("
            " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        for statement in first.statements:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial', 0)")
        conn.execute("INSERT INTO ip_leases VALUES (1684275201, 'node-1')")
        conn.execute(
            "INSERT INTO nodes VALUES ('node-1', 'old', ?, ?, 0, 1684275201, '[]', 'active',"
            " 0, NULL, NULL)",
            (
                SigningKey.from_seed(bytes(32)).public_key.to_text(),
                TunnelKey(TunnelKeyScheme.X25519, bytes(32)).to_text(),
            ),
        )
    store = SqliteStore(path)
    await store.open()
    try:
        async with store.unit_of_work() as uow:
            old = await uow.nodes.get("node-1")
            assert old is not None
            assert old.candidates == ()
            await uow.nodes.set_candidates("node-1", cands("192.0.2.1:41641"), NOW)
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == [m.version for m in load_migrations()]
    assert 2 in versions


def test_node_record_refuses_malformed_candidate_lists() -> None:
    """The stored value itself refuses a list, duplicates, non-candidates and too many."""
    node = make_node(1, ipaddress.IPv4Address("100.64.0.1"))
    for bad in (
        list(cands("192.0.2.1:1")),
        cands("192.0.2.1:1", "192.0.2.1:1"),
        ("192.0.2.1:1",),
        cands(*(f"192.0.2.{i}:1" for i in range(17))),
    ):
        with pytest.raises(LocalProtocolError):
            attrs.evolve(node, candidates=bad)  # type: ignore[arg-type]  # on purpose


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "call",
    ["rename", "set_tags", "set_tunnel_key", "set_candidates", "touch", "revoke", "delete"],
)
async def test_node_changes_to_a_missing_node_raise_not_found(store: Store, call: str) -> None:
    """No silent no-op: changing an unknown node raises NotFound."""
    key = TunnelKey(TunnelKeyScheme.X25519, b"\x01" * 32)
    with pytest.raises(NotFound):
        async with store.unit_of_work() as uow:
            repo = uow.nodes
            if call == "rename":
                await repo.rename("ghost", "x")
            elif call == "set_tags":
                await repo.set_tags("ghost", frozenset())
            elif call == "set_tunnel_key":
                await repo.set_tunnel_key("ghost", key, NOW)
            elif call == "set_candidates":
                await repo.set_candidates("ghost", cands("192.0.2.1:41641"), NOW)
            elif call == "touch":
                await repo.touch("ghost", NOW)
            elif call == "revoke":
                await repo.revoke("ghost", NOW)
            else:
                await repo.delete("ghost")


@pytest.mark.asyncio
async def test_address_is_stable_and_kept_until_delete(store: Store) -> None:
    """allocate is idempotent per node; a revoked node keeps its address; delete frees it."""
    node = await enroll(store, 1)
    async with store.unit_of_work() as uow:
        assert await uow.ipam.allocate("node-1") == node.overlay_ipv4
        assert await uow.ipam.lookup("node-1") == node.overlay_ipv4
        await uow.nodes.revoke("node-1", NOW)
        assert await uow.ipam.allocate("node-1") == node.overlay_ipv4
    with pytest.raises(AlreadyExists):  # cannot free the address of an existing node
        async with store.unit_of_work() as uow:
            await uow.ipam.release("node-1")
    async with store.unit_of_work() as uow:
        await uow.nodes.delete("node-1")
        assert await uow.nodes.get("node-1") is None
        assert await uow.ipam.lookup("node-1") is None


@pytest.mark.asyncio
async def test_allocation_follows_the_plan_and_release_frees_a_lease(store: Store) -> None:
    """The first free candidate of the node's probe sequence; release of a bare lease."""
    async with store.unit_of_work() as uow:
        address = await uow.ipam.allocate("lonely")
        assert address == next(AddressPlan().candidates("lonely"))
        await uow.ipam.release("lonely")
        await uow.ipam.release("lonely")  # releasing nothing is a no-op
        assert await uow.ipam.lookup("lonely") is None


@pytest.mark.asyncio
async def test_small_pool_hands_out_distinct_addresses_then_is_exhausted(tmp_path: Path) -> None:
    """In a /29 (6 usable) six nodes get six distinct addresses; the seventh is refused."""
    for made in (MemoryStore(plan=SMALL_PLAN), SqliteStore(tmp_path / "s.db", plan=SMALL_PLAN)):
        await made.open()
        async with made.unit_of_work() as uow:
            got = {await uow.ipam.allocate(f"n{i}") for i in range(6)}
            assert len(got) == 6
            assert all(SMALL_PLAN.usable(a) for a in got)
            with pytest.raises(AddressPoolExhausted):
                await uow.ipam.allocate("n6")
        await made.close()


# --- credentials ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_credential_round_trip_and_list(store: Store) -> None:
    """A stored credential reads back equal (its to_record form survives the database)."""
    one, many = make_credential(1), make_credential(2, reusable=True, uses=3)
    async with store.unit_of_work() as uow:
        await uow.credentials.add(one)
        await uow.credentials.add(many)
    with pytest.raises(UnitOfWorkAborted):  # a refused write spoils the unit of work
        async with store.unit_of_work() as uow:
            await uow.credentials.add(make_credential(3))
            with pytest.raises(AlreadyExists):
                await uow.credentials.add(one)
    async with store.unit_of_work() as uow:
        assert await uow.credentials.get(one.id) == one
        assert await uow.credentials.list_all() == sorted([one, many], key=lambda c: c.id.to_text())
        assert await uow.credentials.get(make_credential(9).id) is None


@pytest.mark.asyncio
async def test_one_time_credential_redeems_once(store: Store) -> None:
    """The first redemption returns the used credential; the second raises CredentialUsed."""
    cred = make_credential(1)
    async with store.unit_of_work() as uow:
        await uow.credentials.add(cred)
    async with store.unit_of_work() as uow:
        after = await uow.credentials.redeem(cred.id, NOW + timedelta(minutes=1))
    assert after == cred.redeem(NOW + timedelta(minutes=1))
    with pytest.raises(CredentialUsed):
        async with store.unit_of_work() as uow:
            await uow.credentials.redeem(cred.id, NOW + timedelta(minutes=2))
    async with store.unit_of_work() as uow:
        assert await uow.credentials.get(cred.id) == after


@pytest.mark.asyncio
async def test_reusable_credential_redeems_up_to_its_limit(store: Store) -> None:
    """max_uses 3: three redemptions, then CredentialExhausted."""
    cred = make_credential(1, reusable=True, uses=3)
    async with store.unit_of_work() as uow:
        await uow.credentials.add(cred)
        results = [await uow.credentials.redeem(cred.id, NOW) for _ in range(3)]
        with pytest.raises(CredentialExhausted):
            await uow.credentials.redeem(cred.id, NOW)
    assert [r.uses for r in results] == [1, 2, 3]
    assert results[-1].state is CredentialState.EXHAUSTED


@pytest.mark.asyncio
async def test_redeem_rejects_unknown_expired_and_revoked(store: Store) -> None:
    """Unknown id, lapsed TTL and revocation each raise their CredentialRejected subclass."""
    expired, revoked = make_credential(1), make_credential(2)
    async with store.unit_of_work() as uow:
        await uow.credentials.add(expired)
        await uow.credentials.add(revoked)
        assert (await uow.credentials.revoke(revoked.id, NOW)).state is CredentialState.REVOKED
    async with store.unit_of_work() as uow:
        with pytest.raises(UnknownCredential):
            await uow.credentials.redeem(make_credential(9).id, NOW)
        with pytest.raises(CredentialExpired):
            await uow.credentials.redeem(expired.id, expired.expires_at)
        with pytest.raises(CredentialRevoked):
            await uow.credentials.redeem(revoked.id, NOW)
        with pytest.raises(CredentialTransitionError):
            await uow.credentials.revoke(revoked.id, NOW)
        with pytest.raises(NotFound):
            await uow.credentials.revoke(make_credential(9).id, NOW)
        # the rejections changed nothing
        assert await uow.credentials.get(expired.id) == expired


@pytest.mark.asyncio
async def test_expire_lapsed_records_only_lapsed_live_credentials(store: Store) -> None:
    """The sweeper marks created credentials past their TTL as expired, nothing else."""
    lapsed, used = make_credential(1), make_credential(2)
    fresh = attrs.evolve(make_credential(3), expires_at=NOW + timedelta(days=1))
    async with store.unit_of_work() as uow:
        for cred in (lapsed, used, fresh):
            await uow.credentials.add(cred)
        await uow.credentials.redeem(used.id, NOW)
        when = NOW + timedelta(hours=1)
        assert await uow.credentials.expire_lapsed(when) == 1
        assert await uow.credentials.get(lapsed.id) == lapsed.expire(when)
        assert (await uow.credentials.get(used.id)) == used.redeem(NOW)
        assert await uow.credentials.get(fresh.id) == fresh


# --- API keys and policies --------------------------------------------------------------------


def make_api_key(n: int) -> ApiKeyRecord:
    """An admin key created at NOW, 90 days."""
    return ApiKeyRecord(
        id=f"key-{n}",
        secret_hash=bytes([n]) * 32,
        scope=ApiKeyScope.ADMIN,
        description=f"key {n}",
        created_at=NOW + timedelta(seconds=n),
        expires_at=NOW + timedelta(days=90),
    )


@pytest.mark.asyncio
async def test_api_keys(store: Store) -> None:
    """add/get/list, touch keeps the latest use, revoke keeps the first time, NotFound."""
    key, other = make_api_key(1), make_api_key(2)
    later = NOW + timedelta(minutes=5)
    async with store.unit_of_work() as uow:
        await uow.api_keys.add(key)
        await uow.api_keys.add(other)
    with pytest.raises(AlreadyExists):
        async with store.unit_of_work() as uow:
            await uow.api_keys.add(key)
    async with store.unit_of_work() as uow:
        assert await uow.api_keys.get("key-1") == key
        assert await uow.api_keys.get("nope") is None
        assert await uow.api_keys.list_all() == [key, other]
        await uow.api_keys.touch("key-1", later)
        await uow.api_keys.touch("key-1", NOW)
        revoked = await uow.api_keys.revoke("key-1", later)
        assert await uow.api_keys.revoke("key-1", later + timedelta(days=1)) == revoked
        assert revoked == attrs.evolve(key, last_used_at=later, revoked_at=later)
        assert not revoked.usable_at(later)
        with pytest.raises(NotFound):
            await uow.api_keys.touch("nope", NOW)
        with pytest.raises(NotFound):
            await uow.api_keys.revoke("nope", NOW)


@pytest.mark.asyncio
async def test_policies_are_versioned_with_a_current_pointer(store: Store) -> None:
    """put numbers versions 1, 2, ...; a stale expected_current conflicts; set_current rolls
    back; NotFound for an unknown version."""
    async with store.unit_of_work() as uow:
        assert await uow.policies.current() is None
        v1 = await uow.policies.put("{}", NOW, "admin", expected_current=None)
        v2 = await uow.policies.put('{"acls": []}', NOW, "admin", expected_current=1)
        assert (v1.version, v2.version) == (1, 2)
        assert await uow.policies.current() == v2
        assert await uow.policies.get(1) == v1
        assert await uow.policies.get(3) is None
        assert await uow.policies.list_all() == [v1, v2]
        assert await uow.policies.set_current(1) == v1
        assert await uow.policies.current() == v1
    with pytest.raises(StoreConflict):
        async with store.unit_of_work() as uow:
            await uow.policies.put("{}", NOW, "admin", expected_current=2)
    with pytest.raises(NotFound):
        async with store.unit_of_work() as uow:
            await uow.policies.set_current(7)
    async with store.unit_of_work() as uow:
        assert [p.version for p in await uow.policies.list_all()] == [1, 2]


# --- audit ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_audit_entries_and_checkpoints_round_trip(store: Store) -> None:
    """Entries and checkpoints read back equal and in order; the index must be the next."""
    chain, key = AuditChain(), SigningKey.from_seed(b"\x07" * 32)
    entries = [
        chain.append(now=NOW, actor="admin", action="node.revoke", target=f"n{i}").entry
        for i in range(3)
    ]
    checkpoint = chain.checkpoint(key, NOW)
    async with store.unit_of_work() as uow:
        assert await uow.audit.last_entry() is None
        assert await uow.audit.last_checkpoint() is None
        for entry in entries:
            await uow.audit.append(entry)
        await uow.audit.add_checkpoint(checkpoint)
    with pytest.raises(StoreConflict):  # index taken (by a concurrent writer, say)
        async with store.unit_of_work() as uow:
            await uow.audit.append(entries[1])
    async with store.unit_of_work() as uow:
        assert await uow.audit.entries() == entries
        assert await uow.audit.entries(start=1, limit=1) == entries[1:2]
        assert await uow.audit.last_entry() == entries[-1]
        assert await uow.audit.checkpoints() == [checkpoint]
        assert await uow.audit.last_checkpoint() == checkpoint
        resumed = AuditChain.resume(await uow.audit.last_entry(), checkpoint)
        assert resumed.head_hash == entries[-1].entry_hash
    with pytest.raises(AlreadyExists):
        async with store.unit_of_work() as uow:
            await uow.audit.add_checkpoint(Checkpoint.sign(key, 2, entries[-1].entry_hash, NOW))


@pytest.mark.asyncio
async def test_audit_refuses_a_gap(store: Store) -> None:
    """Appending index 1 to an empty log is a bug on our side, not a silent hole."""
    chain = AuditChain()
    chain.append(now=NOW, actor="a", action="b", target="c")
    second = chain.append(now=NOW, actor="a", action="b", target="d").entry
    with pytest.raises(LocalProtocolError):
        async with store.unit_of_work() as uow:
            await uow.audit.append(second)


# --- nonces, limiter, serials -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_nonce_insert_refuses_replays_and_a_full_cache(store: Store) -> None:
    """A live nonce is refused; capacity is a hard bound; purge forgets only expired ones."""
    exp = NOW + timedelta(seconds=180)
    async with store.unit_of_work() as uow:
        await uow.nonces.insert(NonceRecord(b"a" * 16, exp), NOW, capacity=2)
        with pytest.raises(ReplayedNonceError):
            await uow.nonces.insert(NonceRecord(b"a" * 16, exp), exp, capacity=2)  # boundary
        await uow.nonces.insert(NonceRecord(b"b" * 16, NOW + timedelta(seconds=10)), NOW, 2)
        with pytest.raises(ReplayCacheFullError):
            await uow.nonces.insert(NonceRecord(b"c" * 16, exp), NOW, capacity=2)
        assert await uow.nonces.count(NOW) == 2
        later = NOW + timedelta(seconds=11)
        assert await uow.nonces.count(later) == 1
        # b expired: room again, and an expired nonce's row may be reused
        await uow.nonces.insert(NonceRecord(b"b" * 16, later + timedelta(seconds=180)), later, 2)
        assert await uow.nonces.purge(exp + timedelta(seconds=1)) == 1
        assert await uow.nonces.count(later) == 1


@pytest.mark.asyncio
async def test_limiter_buckets_follow_gcra(store: Store) -> None:
    """take allows `burst` at once then denies with a wait; keys and tables are separate."""
    bucket = BucketPolicy(burst=2, refill=1, per=timedelta(seconds=10))
    async with store.unit_of_work() as uow:
        lim = uow.limiter
        outcomes = [await lim.take(BucketTable.IP, "1.2.3.4/32", NOW, bucket) for _ in range(3)]
        assert [o.allowed for o in outcomes] == [True, True, False]
        assert outcomes[2].retry_after == timedelta(seconds=10)
        assert (await lim.take(BucketTable.IDENTITY, "1.2.3.4/32", NOW, bucket)).allowed
        assert await lim.load_tat(BucketTable.IP, "1.2.3.4/32") == NOW + timedelta(seconds=20)
        await lim.store_tat(BucketTable.IP, "k", NOW)
        assert await lim.load_tat(BucketTable.IP, "k") == NOW
        assert await lim.load_tat(BucketTable.IP, "never") is None
        assert await lim.prune(NOW + timedelta(seconds=15)) >= 2  # k, identity (and "never")
        assert await lim.load_tat(BucketTable.IP, "1.2.3.4/32") == NOW + timedelta(seconds=20)


@pytest.mark.asyncio
async def test_limiter_peek_reads_a_bucket_and_writes_nothing(store: Store) -> None:
    """peek sees what take stored, in every table (the failure and admin buckets too), and an
    absent key stays absent: the read-only check before an authentication writes no row."""
    bucket = BucketPolicy(burst=2, refill=1, per=timedelta(seconds=10))
    async with store.unit_of_work() as uow:
        lim = uow.limiter
        for table in BucketTable:
            assert await lim.peek(table, "198.51.100.7/32") is None
            assert (await lim.take(table, "198.51.100.7/32", NOW, bucket)).allowed
            assert await lim.peek(table, "198.51.100.7/32") == NOW + timedelta(seconds=10)
        assert await lim.peek(BucketTable.AUTH_FAILURE, "203.0.113.9/32") is None
        # Nothing was left behind by the peeks: only the four taken rows exist to be pruned.
        assert await lim.prune(NOW + timedelta(seconds=11)) == len(BucketTable)


@pytest.mark.asyncio
async def test_limiter_failures_back_off_disable_and_reset(store: Store) -> None:
    """record_failure applies after_failure; success clears the count; reset clears all."""
    policy = LimitPolicy(backoff_after_failures=2, disable_after_failures=3)
    async with store.unit_of_work() as uow:
        lim = uow.limiter
        assert await lim.failures("cred") == FailureRecord()
        first = await lim.record_failure("cred", NOW, policy)
        assert first == FailureRecord(consecutive=1)
        second = await lim.record_failure("cred", NOW, policy)
        assert second.blocked_until == NOW + policy.backoff_initial
        await lim.record_success("cred")
        assert await lim.failures("cred") == FailureRecord()
        for _ in range(3):
            third = await lim.record_failure("cred", NOW, policy)
        assert third.disabled
        await lim.record_success("cred")
        assert (await lim.failures("cred")).disabled  # success does not re-enable
        await lim.reset("cred")
        assert await lim.failures("cred") == FailureRecord()
        await lim.record_success("unknown")  # nothing stored: nothing to do
        assert await lim.failures("unknown") == FailureRecord()


@pytest.mark.asyncio
async def test_serials_strictly_increase_per_node(store: Store) -> None:
    """bump returns 1, 2, 3, ... per node, independently, across units of work."""
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for round_ in range(4):
        async with store.unit_of_work() as uow:
            ids = ["a", "b"] if round_ % 2 == 0 else ["a", "a"]
            for node_id, serial in (await uow.serials.bump(ids)).items():
                seen[node_id].append(serial)
    assert seen == {"a": [1, 2, 3, 4], "b": [1, 2]}
    async with store.unit_of_work() as uow:
        assert await uow.serials.get("a") == 4
        assert await uow.serials.get("never") == 0
        assert await uow.serials.bump([]) == {}


@pytest.mark.asyncio
async def test_serial_bumps_of_many_nodes_each_count_once(store: Store) -> None:
    """A bump of 1,234 nodes (several multi-row statements) returns each node's new serial."""
    ids = [f"n{i:04d}" for i in range(1234)]
    async with store.unit_of_work() as uow:
        assert set((await uow.serials.bump(ids[:700])).values()) == {1}
        bumped = await uow.serials.bump([*ids, *ids[:3]])  # duplicates count once
    assert len(bumped) == len(ids)
    assert [bumped[i] for i in ids[:700]] == [2] * 700
    assert [bumped[i] for i in ids[700:]] == [1] * 534
    async with store.unit_of_work() as uow:
        assert await uow.serials.get("n0001") == 2
        assert await uow.serials.get("n1233") == 1


@pytest.mark.asyncio
async def test_get_active_serials_leave_out_unknown_and_revoked_nodes(store: Store) -> None:
    """get_active answers active nodes only (0 when never bumped); revoked/unknown are absent."""
    nodes = [await enroll(store, n) for n in range(1, 4)]
    a, b, c = (n.id for n in nodes)
    async with store.unit_of_work() as uow:
        await uow.serials.bump([a, a, c])
        await uow.serials.bump([a])
        await uow.nodes.revoke(c, NOW)
    async with store.unit_of_work() as uow:
        assert await uow.serials.get_active([a, b, c, "node-unknown"]) == {a: 2, b: 0}
        assert await uow.serials.get_active([]) == {}
        many = await uow.serials.get_active([b, *(f"x{i}" for i in range(1200)), a])
    assert many == {a: 2, b: 0}
