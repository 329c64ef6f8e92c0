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
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from rustynet.adapters.storage.sql import (
    POSTGRES,
    Dialect,
    Params,
    RepositoryAccess,
    Row,
    SqlRepositories,
    migrate,
)

from rustynet.domain.ipam import AddressPlan
from rustynet.ports.store import (
    AlreadyExists,
    NotFound,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    UnitOfWorkAborted,
)


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
