"""A real, throwaway PostgreSQL 15 cluster for the store tests (a pytest plugin).

`postgres_cluster` (session): `initdb` + `pg_ctl start` from Debian's
/usr/lib/postgresql/15/bin, run as the `postgres` OS user when we are root (root may not run
initdb), data directory in a private temp dir, listening on a unix socket in that dir only
(no TCP). At session end it stops exactly the postmaster it started (`pg_ctl stop` on its own
data directory, then SIGKILL of that PID if it lingers) and removes the directory. Without the
binaries every PostgreSQL test is skipped with the reason — except in CI (`CI=true`, exported
by `.ci/run`), where a PostgreSQL that cannot be started is an error: the store contract and
the redemption race must not pass there by not running. `tools/setup.sh` installs them; a
cluster that fails to start is an error everywhere.

`postgres_dsn` (function): a fresh database per test (CREATE DATABASE ... / DROP ... FORCE).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NoReturn

import attrs
import psycopg
import pytest

PG_BIN: Final = Path(os.environ.get("RUSTYNET_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER: Final = "postgres"


@attrs.frozen
class PostgresCluster:
    """A running cluster: where its socket is and which postmaster PID we own."""

    root: Path
    socket_dir: Path
    pid: int

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq connection string for `dbname` over the unix socket."""
        return f"host={self.socket_dir} port=5432 user={PG_USER} dbname={dbname}"


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *args]
    return args


def _run(args: list[str]) -> None:
    done = subprocess.run(_as_postgres(args), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr or done.stdout}")


def start_cluster() -> PostgresCluster:
    """initdb + pg_ctl start in a fresh temp dir; raise RuntimeError on failure."""
    root = Path(tempfile.mkdtemp(prefix="rustynet-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    data = root / "data"
    _run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "-A",
            "trust",  # only reachable through the socket in a 0700 directory
            "-E",
            "UTF8",
            "--no-sync",
        ]
    )
    options = f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=200"
    _run(
        [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ]
    )
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    return PostgresCluster(root, root, pid)


def stop_cluster(cluster: PostgresCluster) -> None:
    """Stop the postmaster we started (and only it), then remove its directory."""
    with contextlib.suppress(RuntimeError):
        _run([str(PG_BIN / "pg_ctl"), "-D", str(cluster.root / "data"), "-m", "fast", "-w", "stop"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(cluster.pid, signal.SIGKILL)  # only if `pg_ctl stop` left our postmaster
    shutil.rmtree(cluster.root, ignore_errors=True)


def required() -> bool:
    """True in CI (`CI` is `true`/`1`/`yes`): PostgreSQL must run, never be skipped."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the PostgreSQL tests with `reason`; in CI fail them instead."""
    if required():
        pytest.fail(f"{reason}; CI requires PostgreSQL (CI={os.environ['CI']})", pytrace=False)
    pytest.skip(reason)


def check_prerequisites() -> None:
    """Skip (in CI: fail) unless this machine can run a cluster."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        unavailable(f"PostgreSQL 15 binaries not found in {PG_BIN} (tools/setup.sh installs them)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        unavailable("running as root but runuser is missing (initdb refuses to run as root)")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL 15 cluster for the whole test session."""
    check_prerequisites()
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


_counter = iter(range(1_000_000))


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"rustynet_test_{os.getpid()}_{next(_counter)}"
    admin = postgres_cluster.conninfo()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # generated name, not input
    try:
        yield postgres_cluster.conninfo(name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            )  # generated name, not input
