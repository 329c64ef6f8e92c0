"""The versioned schema: the packaged `migrations/NNNN_name.sql` files, applied in order.

Each applied version is recorded in `schema_migrations`; a database newer than this code is
refused (`MigrationError`), and PostgreSQL instances starting together take an advisory lock so
one of them migrates.
"""

from __future__ import annotations

import re
from datetime import datetime
from importlib import resources
from typing import Final

import attrs
from rustynet.adapters.storage.sql.dialect import Executor, fetch_rows, to_micros

from rustynet.ports.store import MigrationError

_MIGRATION_NAME: Final = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_MIGRATIONS_PACKAGE: Final = "rustynet.adapters.storage"  # holds the `migrations/` folder


@attrs.frozen
class Migration:
    """One versioned schema change."""

    version: int
    name: str
    statements: tuple[str, ...]


def load_migrations() -> list[Migration]:
    """The packaged migrations (`migrations/NNNN_name.sql`), in version order."""
    found = []
    for item in resources.files(_MIGRATIONS_PACKAGE).joinpath("migrations").iterdir():
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
    applied = {r[0] for r in await fetch_rows(ex, "SELECT version FROM schema_migrations")}
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
