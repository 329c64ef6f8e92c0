"""What differs between SQLite and PostgreSQL, and the statement runner both stores implement.

A `Dialect` holds the SQL fragments only one database needs and rewrites `:name` placeholders
for psycopg; an `Executor` runs one statement inside the unit of work's transaction (driver
errors already translated to `StoreError`s), and `spoil` marks it failed so the transaction
never commits. Times are stored as integer microseconds since the epoch (exact, and ordered).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import attrs

from rustynet.ports.store import StoreError

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_PLACEHOLDER: Final = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
BATCH: Final = 500  # ids per multi-row statement (well under both databases' limits)

Row = tuple[Any, ...]
Params = Mapping[str, object]


def to_micros(when: datetime) -> int:
    """A UTC datetime as integer microseconds since the epoch."""
    return (when - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """Inverse of `to_micros` (a UTC datetime)."""
    return EPOCH + value * _MICROSECOND


def opt_micros(when: datetime | None) -> int | None:
    """`to_micros`, keeping None."""
    return None if when is None else to_micros(when)


def opt_time(value: int | None) -> datetime | None:
    """`from_micros`, keeping None."""
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


async def fetch_rows(ex: Executor, sql: str, params: Params | None = None) -> list[Row]:
    return (await ex.execute(sql, params or {}))[0]


async def fetch_one(ex: Executor, sql: str, params: Params | None = None) -> Row | None:
    rows = await fetch_rows(ex, sql, params)
    return rows[0] if rows else None


async def row_count(ex: Executor, sql: str, params: Params | None = None) -> int:
    return (await ex.execute(sql, params or {}))[1]
