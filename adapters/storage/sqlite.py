"""SQLite store (the default): stdlib sqlite3 in WAL mode, driven from asyncio via threads.

The one rule: every unit of work is one `BEGIN IMMEDIATE` transaction on this store's single
writer connection, so the database's write lock (not Python) decides every race — also
between several processes or several `SqliteStore`s on one file.

Operational notes: WAL lets readers of other connections proceed during a write;
`busy_timeout` makes a second writer wait for the lock instead of failing at once;
`synchronous=FULL` makes a returned commit durable across power loss (a join-token redemption
is reported only after it is on disk). BEGIN, COMMIT and ROLLBACK (which may wait for another
process's lock, for fsync or for a WAL checkpoint) run in a worker thread; the statements in
between run on the event loop (see `_MAY_BLOCK`). The connection is created with
`check_same_thread=False` because `asyncio.to_thread` may use any worker thread; the asyncio
lock guarantees one statement at a time. `isolation_level=None` turns off the sqlite3 module's
implicit transactions, so BEGIN/COMMIT/ROLLBACK are exactly ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from rustynet.adapters.storage.sql.dialect import SQLITE, Dialect, Params, Row
from rustynet.adapters.storage.sql.migrations import migrate
from rustynet.adapters.storage.sql.repositories import RepositoryAccess, SqlRepositories

from rustynet.domain.ipam import AddressPlan
from rustynet.ports.store import (
    AlreadyExists,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    UnitOfWorkAborted,
)

DEFAULT_BUSY_TIMEOUT_MS: Final = 30_000
# Statements that may wait: BEGIN IMMEDIATE for another process's write lock (busy_timeout),
# COMMIT for fsync and an automatic WAL checkpoint. They run in a worker thread; every other
# statement runs inside a transaction we already hold, on indexed tables, and takes tens of
# microseconds: cheaper inline than the thread hop (measured: an enrollment is ~45 statements,
# and the hops, serialized on the one connection, capped enrollment at ~50/s).
_MAY_BLOCK: Final = ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA", "VACUUM")


def _translate(exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in text:
        return AlreadyExists(f"already exists ({text})")
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreError(f"constraint failed ({text})")
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return StoreConflict(f"database is busy ({text})")
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"sqlite: {text}")
    return StoreError(f"sqlite: {text}")


class _Connection:
    """One sqlite3 connection; every call runs in a worker thread, errors translated."""

    dialect: Dialect = SQLITE

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._changes = 0  # total_changes at BEGIN: unchanged at COMMIT means read-only
        self.failed = False

    def _open_sync(self) -> None:
        conn = sqlite3.connect(
            self._path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_timeout_ms / 1000,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        if mode is None or str(mode[0]).lower() != "wal":
            conn.close()
            raise StoreUnavailable(f"{self._path}: cannot switch to WAL mode")
        self._conn = conn

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._open_sync)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def _run(self, sql: str, params: Params) -> tuple[list[Row], int]:
        if self._conn is None:
            raise StoreUnavailable("the store is closed")
        cursor = self._conn.execute(sql, dict(params))
        rows = cursor.fetchall()  # rowcount of INSERT ... RETURNING is final only after this
        return rows, cursor.rowcount

    async def execute(self, sql: str, params: Params | None = None) -> tuple[list[Row], int]:
        try:
            if sql.startswith(_MAY_BLOCK):
                return await asyncio.to_thread(self._run, sql, params or {})
            return self._run(sql, params or {})
        except sqlite3.Error as exc:
            self.failed = True
            raise _translate(exc) from exc

    def _begin_now(self) -> bool:
        """BEGIN IMMEDIATE without waiting: False when another connection holds the lock."""
        if self._conn is None:
            raise StoreUnavailable("the store is closed")
        self._conn.execute("PRAGMA busy_timeout = 0")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        self._changes = self._conn.total_changes
        return True

    async def begin(self) -> None:
        """BEGIN IMMEDIATE: inline when the write lock is free (no thread hop), else in a
        worker thread that waits up to busy_timeout for it."""
        try:
            if self._begin_now():
                return
        except sqlite3.Error as exc:
            self.failed = True
            raise _translate(exc) from exc
        await self.execute("BEGIN IMMEDIATE")
        self._changes = self._conn.total_changes if self._conn is not None else 0

    async def commit(self) -> None:
        """COMMIT: inline when the transaction changed no row (nothing to write or fsync),
        else in a worker thread (fsync, perhaps a WAL checkpoint)."""
        if self._conn is not None and self._conn.total_changes == self._changes:
            try:
                self._run("COMMIT", {})
            except sqlite3.Error as exc:
                self.failed = True
                raise _translate(exc) from exc
            return
        await self.execute("COMMIT")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)


class SqliteUnitOfWork(RepositoryAccess):
    """One `BEGIN IMMEDIATE` transaction holding the store's writer lock."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__()
        self._store = store

    async def __aenter__(self) -> Self:
        conn = self._store.writer()
        await self._store.lock.acquire()
        try:
            await conn.begin()
        except BaseException:
            self._store.lock.release()
            raise
        conn.failed = False
        self._repos = SqlRepositories(conn, self._store.plan)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._store.writer()
        self._repos = None
        try:
            if exc_type is None and conn.failed:
                await conn.execute("ROLLBACK")
                raise UnitOfWorkAborted("a statement in this unit of work failed; rolled back")  # noqa: TRY301 - must skip the COMMIT below
            if exc_type is None:
                await conn.commit()
            else:
                await conn.execute("ROLLBACK")
        except UnitOfWorkAborted:
            raise
        except BaseException:
            if exc_type is None:
                await _quiet_rollback(conn)
            raise
        finally:
            self._store.lock.release()


async def _quiet_rollback(conn: _Connection) -> None:
    # No transaction may be left to roll back: a failed COMMIT can already have ended it.
    with contextlib.suppress(StoreError):
        await conn.execute("ROLLBACK")


class SqliteStore:
    """`Store` on one SQLite file; open several on one file to get several writers."""

    def __init__(
        self,
        path: Path,
        *,
        plan: AddressPlan | None = None,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = Path(path)
        self.plan = plan if plan is not None else AddressPlan()
        self.lock = asyncio.Lock()
        self._conn = _Connection(self.path, busy_timeout_ms)
        self._open = False

    def writer(self) -> _Connection:
        """The writer connection (only for this module's unit of work)."""
        if not self._open:
            raise StoreUnavailable("the store is not open")
        return self._conn

    async def open(self) -> None:
        """See `Store.open`: connect, WAL, apply migrations."""
        await self._conn.open()
        self._open = True
        async with self.lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                await migrate(self._conn, datetime.now(UTC))
            except BaseException:
                await _quiet_rollback(self._conn)
                raise
            await self._conn.execute("COMMIT")

    async def close(self) -> None:
        """See `Store.close`."""
        self._open = False
        async with self.lock:
            await self._conn.close()

    def unit_of_work(self) -> SqliteUnitOfWork:
        """See `Store.unit_of_work`."""
        return SqliteUnitOfWork(self)
