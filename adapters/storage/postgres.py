"""PostgreSQL store: psycopg 3 (async) with a psycopg_pool connection pool.

The one rule: a unit of work is one READ COMMITTED transaction on one pooled connection, and
every race is decided by PostgreSQL itself — conditional UPDATEs re-check their WHERE on the
newest row version after waiting for a concurrent writer, INSERT ... ON CONFLICT waits for
a concurrent inserter's outcome, read-modify-writes lock their row (`SELECT ... FOR UPDATE`)
and nonce inserts take a transaction-scoped advisory lock so the capacity check is exact.
Several control instances may therefore share one database.

Operational notes: connections run in autocommit mode and the unit of work issues
BEGIN/COMMIT/ROLLBACK itself (psycopg would otherwise open implicit transactions). A failed
statement aborts the PostgreSQL transaction, so a `StoreError` raised inside a unit of work
means the whole unit of work is lost (the same contract every adapter keeps). Serialization
failures and deadlocks become `StoreConflict`; connection problems `StoreUnavailable`.

Cross-instance wake-ups: `announce` collects node ids and the unit of work sends ONE
`pg_notify` on channel `rustynet_peermaps` just before its COMMIT, inside the transaction, so
PostgreSQL delivers it only if the commit succeeds. The payload is compact JSON
`{"o": origin, "n": [ids]}`; above `MAX_NOTIFY_PAYLOAD` bytes (PostgreSQL refuses 8000) it is
`{"o": origin, "all": true}`. `PostgresChangeFeed` LISTENs on a dedicated connection (not from
the pool: a pooled connection would be handed to units of work), skips its own store's origin
(that instance woke its waiters itself), checks the connection every `check_every` seconds,
and after losing it reconnects with backoff and reports "everything may have changed".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

import psycopg
import psycopg_pool
import structlog
from psycopg import errors as pg_errors
from rustynet.adapters.storage.sql.dialect import POSTGRES, Dialect, Params, Row
from rustynet.adapters.storage.sql.migrations import migrate
from rustynet.adapters.storage.sql.repositories import RepositoryAccess, SqlRepositories

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.ipam import AddressPlan
from rustynet.ports.change_feed import ChangeListener
from rustynet.ports.store import (
    AlreadyExists,
    NotFound,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    UnitOfWorkAborted,
)

CHANNEL: Final = "rustynet_peermaps"
MAX_NOTIFY_PAYLOAD: Final = 7900  # bytes; PostgreSQL's limit is 8000
LISTENER_APPLICATION: Final = "rustynet-control-listen"
_log = structlog.get_logger("rustynet.control.feed")


def notify_payload(origin: str, node_ids: Iterable[str]) -> str:
    """The NOTIFY payload for these node ids ("all" when the list would not fit)."""
    text = json.dumps({"o": origin, "n": sorted(set(node_ids))}, separators=(",", ":"))
    if len(text.encode("utf-8")) > MAX_NOTIFY_PAYLOAD:
        return json.dumps({"o": origin, "all": True}, separators=(",", ":"))
    return text


def parse_payload(payload: str) -> tuple[str | None, frozenset[str] | None]:
    """(origin, node ids) of a payload; ids None means "all" (also for anything malformed)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    origin = data.get("o") if isinstance(data.get("o"), str) else None
    ids = data.get("n")
    if data.get("all") is True or not isinstance(ids, list):
        return origin, None
    if not all(isinstance(i, str) for i in ids):
        return origin, None
    return origin, frozenset(ids)


def _translate(exc: psycopg.Error) -> StoreError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, pg_errors.UniqueViolation):
        return AlreadyExists(f"already exists ({text})")
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return NotFound(f"referenced record missing ({text})")
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return StoreConflict(f"concurrent transaction won ({text})")
    if isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout):
        return StoreUnavailable(f"postgres: {text}")
    return StoreError(f"postgres: {text}")


class _Executor:
    """Statements on one pooled connection, errors translated."""

    dialect: Dialect = POSTGRES

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self.failed = False

    async def execute(self, sql: str, params: Params | None = None) -> tuple[list[Row], int]:
        try:
            async with self._conn.cursor() as cursor:
                await cursor.execute(sql, dict(params) if params else None)
                rows = await cursor.fetchall() if cursor.description is not None else []
                return rows, cursor.rowcount
        except psycopg.Error as exc:
            self.failed = True
            raise _translate(exc) from exc


class PostgresUnitOfWork(RepositoryAccess):
    """One transaction on one pooled connection."""

    def __init__(self, store: PostgresStore) -> None:
        super().__init__()
        self._store = store
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._ex: _Executor | None = None
        self._announced: set[str] = set()

    async def announce(self, node_ids: Iterable[str]) -> None:
        """See `UnitOfWork.announce`: sent with `pg_notify` right before COMMIT."""
        self.executor()
        self._announced.update(node_ids)

    def executor(self) -> _Executor:
        """The transaction's executor (for migrations)."""
        if self._ex is None:
            raise StoreError("use the unit of work inside `async with`")
        return self._ex

    async def __aenter__(self) -> Self:
        pool = self._store.pool()
        try:
            conn = await pool.getconn()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc) from exc
        ex = _Executor(conn)
        try:
            await ex.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        except BaseException:
            await pool.putconn(conn)
            raise
        self._conn, self._ex = conn, ex
        self._repos = SqlRepositories(ex, self._store.plan)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, ex = self._conn, self._ex
        self._conn, self._ex, self._repos = None, None, None
        if conn is None or ex is None:  # pragma: no cover - __aenter__ failed, nothing to end
            return
        announced, self._announced = self._announced, set()
        try:
            if exc_type is None and not ex.failed and announced:
                # Inside the transaction: delivered to listeners only if the COMMIT succeeds.
                await ex.execute(
                    "SELECT pg_notify(%(c)s, %(p)s)",
                    {"c": CHANNEL, "p": notify_payload(self._store.origin, announced)},
                )
        except StoreError:
            await self._store.pool().putconn(conn)
            raise
        aborted = exc_type is None and ex.failed
        try:
            # COMMIT of a transaction PostgreSQL aborted would silently roll back: refuse it.
            await ex.execute("COMMIT" if exc_type is None and not aborted else "ROLLBACK")
            if aborted:
                raise UnitOfWorkAborted("a statement in this unit of work failed; rolled back")
        finally:
            # A connection left inside a transaction is discarded by the pool (never reused).
            await self._store.pool().putconn(conn)


class PostgresStore:
    """`Store` on a PostgreSQL database (conninfo string or URL)."""

    def __init__(
        self,
        conninfo: str,
        *,
        plan: AddressPlan | None = None,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
    ) -> None:
        self.plan = plan if plan is not None else AddressPlan()
        self.origin = os.urandom(8).hex()  # names this store in its NOTIFY payloads
        self._conninfo = conninfo
        self._min_size, self._max_size, self._timeout = min_size, max_size, timeout
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None

    def pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        """The open pool (only for this module's unit of work)."""
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    async def open(self) -> None:
        """See `Store.open`: open the pool, apply migrations under an advisory lock."""
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True},
            open=False,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout,
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await pool.close()
            raise _translate(exc) from exc
        self._pool = pool
        async with self.unit_of_work() as uow:
            await migrate(uow.executor(), datetime.now(UTC))

    async def close(self) -> None:
        """See `Store.close`."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def unit_of_work(self) -> PostgresUnitOfWork:
        """See `Store.unit_of_work`."""
        return PostgresUnitOfWork(self)

    def change_feed(self, *, check_every: float = 10.0) -> PostgresChangeFeed:
        """A `ChangeFeed` on this store's database that ignores this store's own changes."""
        return PostgresChangeFeed(self._conninfo, origin=self.origin, check_every=check_every)


class PostgresChangeFeed:
    """`ChangeFeed` over LISTEN/NOTIFY on one dedicated autocommit connection."""

    def __init__(
        self,
        conninfo: str,
        *,
        origin: str | None = None,
        check_every: float = 10.0,
        retry_max: float = 5.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._conninfo = conninfo
        self._origin = origin
        self._check_every = check_every
        self._retry_max = retry_max
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._listener: ChangeListener | None = None
        self.reconnects = 0  # for metrics and tests

    @property
    def backend_pid(self) -> int | None:
        """The listening connection's server process id (None while disconnected)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                application_name=LISTENER_APPLICATION,
                connect_timeout=max(1, int(self._connect_timeout)),
            )
        except psycopg.Error as exc:
            raise _translate(exc) from exc
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            await conn.close()
            raise _translate(exc) from exc
        return conn

    async def subscribe(self, on_change: ChangeListener) -> None:
        """See `ChangeFeed.subscribe`."""
        if self._listener is not None:
            raise LocalProtocolError("this change feed already has a subscriber")
        self._conn = await self._connect()
        self._listener = on_change
        self._task = asyncio.create_task(self._run(), name="rustynet-change-feed")

    async def close(self) -> None:
        """See `ChangeFeed.close`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    def _deliver(self, payload: str) -> None:
        origin, ids = parse_payload(payload)
        if origin is not None and origin == self._origin:
            return  # our own store's change: that instance already woke its waiters
        if self._listener is not None and (ids is None or ids):
            self._listener(ids)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Deliver notifications until the connection fails (raises psycopg.Error)."""
        while True:
            async for notify in conn.notifies(timeout=self._check_every):
                self._deliver(notify.payload)
            # Quiet for `check_every`: prove the connection is alive (a half-open TCP
            # connection would otherwise wait forever without an error).
            await conn.execute("SELECT 1")

    async def _run(self) -> None:
        delay = 0.05
        while True:
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = await self._connect()
                    self.reconnects += 1
                    _log.info("control.feed_reconnected", reconnects=self.reconnects)
                    # Whatever was committed while we were away was not heard: re-check all.
                    if self._listener is not None:
                        self._listener(None)
                    delay = 0.05
                await self._listen(conn)
            except (psycopg.Error, StoreError, OSError) as exc:
                _log.warning("control.feed_lost", error_type=type(exc).__name__)
                self._conn = None
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
                await asyncio.sleep(delay)
                delay = min(self._retry_max, delay * 2)
