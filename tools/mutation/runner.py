"""Run pytest against package copies, several at once, one mutation per copy.

Each worker slot owns a copy of the package (src/rustynet as `rustynet/`, adapters/ as
`rustynet/adapters/`) in a temporary folder. That folder goes first on PYTHONPATH and on the
child's sys.path, so pytest, `python -m ...` and the console scripts in .venv/bin that the tests
start all import the copy: PYTHONPATH entries come before site-packages, where the editable
install's .pth entry (build/__editable__...) is only appended. The plugin records which
`rustynet` the tests imported; the runner refuses a run that imported anything else.

A run is a forked child of this process: by default it calls `pytest.main` in the fork, after
the parent has imported pytest's plugins and the heavy third-party libraries once (never
`rustynet` or `tests`), which takes pytest's ~2 s start-up off every mutant. `exec` mode runs
`python -m pytest` in the child instead, for comparison.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools.mutation.plugin import REPORT_ENV
from tools.mutation.spec import PACKAGE_ROOTS, ROOT

PYTEST_ARGS = ("-p", "no:cacheprovider", "-p", "tools.mutation.plugin", "-q", "--no-header")
# In a fork, pytest's plugins are already imported and cannot be assertion-rewritten; pytest
# says so with a warning, which the project's `filterwarnings = error` would make fatal. Only
# the plugins' own asserts are affected (the tests are rewritten as always).
FORK_ARGS = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
# Imported once in the parent before forking (the tests import them anyway).
WARM_MODULES = (
    "pytest",
    "hypothesis",
    "hypothesis.stateful",
    "aiohttp",
    "aiohttp.web",
    "aiohttp.test_utils",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.asymmetric.x25519",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.kdf.argon2",
    "cryptography.x509",
    "pyseto",
    "structlog",
    "attrs",
    "cattrs",
    "orjson",
    "psycopg",
    "psycopg_pool",
    "uvloop",
    "sqlite3",
    "asyncio",
    "ssl",
)


@dataclass
class Outcome:
    """What one pytest run did."""

    exit_code: int
    outcomes: dict[str, str]
    rustynet: str | None
    log: Path
    seconds: float
    timed_out: bool = False

    def nodes_for(self, test_id: str) -> dict[str, str]:
        """Outcomes of the nodes a named test id stands for (parameters, class members)."""
        return {
            node: outcome
            for node, outcome in self.outcomes.items()
            if node == test_id or node.startswith((f"{test_id}[", f"{test_id}::"))
        }

    def failed_nodes(self) -> list[str]:
        """The nodes that failed, in the order they ran."""
        return [node for node, outcome in self.outcomes.items() if outcome == "failed"]

    def log_tail(self, lines: int = 30) -> str:
        """The end of the run's output, for a report."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Slot:
    """One worker's package copy; a mutation is applied to it and undone after the run."""

    root: Path
    restore: dict[Path, str] = field(default_factory=dict)

    def apply(self, relative: str, text: str) -> None:
        """Replace one file of the copy (remembering the original)."""
        path = self.root / relative
        self.restore.setdefault(path, path.read_text(encoding="utf-8"))
        _write_source(path, text)

    def reset(self) -> None:
        """Put every replaced file back."""
        for path, text in self.restore.items():
            _write_source(path, text)
        self.restore.clear()

    def check_pristine(self) -> None:
        """Fail loudly if the copy drifted from the checkout (a bug of the runner)."""
        for prefix, copied in PACKAGE_ROOTS.items():
            for source in (ROOT / prefix).rglob("*.py"):
                rel = source.relative_to(ROOT / prefix)
                if (self.root / copied / rel).read_bytes() != source.read_bytes():
                    raise RuntimeError(f"{self.root / copied / rel} differs from {source}")


def use_bytecode_cache(prefix: Path) -> None:
    """Cache compiled modules (the copies, the tests, pytest's rewritten tests) under `prefix`
    for this process and every child, even when the environment says PYTHONDONTWRITEBYTECODE:
    without it every run compiles every module it imports. The checkout gets no __pycache__."""
    prefix.mkdir(parents=True, exist_ok=True)
    sys.pycache_prefix = str(prefix)
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False


def _write_source(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    # A .pyc is reused when the source's size and mtime (whole seconds) match: a mutation of
    # the same size written within the same second would be ignored. Remove the cache entry.
    cached = Path(importlib.util.cache_from_source(str(path)))
    cached.unlink(missing_ok=True)


def make_slot(workdir: Path, index: int) -> Slot:
    """A fresh copy of the package under `workdir/slot<index>`."""
    root = workdir / f"slot{index}"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for prefix, copied in PACKAGE_ROOTS.items():
        shutil.copytree(ROOT / prefix, root / copied, ignore=ignore, dirs_exist_ok=True)
    return Slot(root)


def warm_up() -> None:
    """Import pytest's plugins and the heavy libraries once, before any fork."""
    for entry in importlib.metadata.entry_points(group="pytest11"):
        with contextlib.suppress(Exception):
            entry.load()
    for name in WARM_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in {"rustynet", "tests"})
    if leaked:
        raise RuntimeError(f"warm-up imported project modules: {leaked[:5]}")
    # What is imported now is never collected: the forks' garbage collections (pytest runs
    # several at the end of a session) skip it, and its pages stay shared with the parent.
    gc.collect()
    gc.freeze()


@dataclass
class Job:
    """One pytest run to do in a slot: `prepare` applies the mutation (or nothing)."""

    key: str
    tests: Sequence[str]
    timeout: float
    extra_args: Sequence[str] = ()
    prepare: Callable[[Slot], None] = lambda _slot: None


def _child(slot: Slot, job: Job, log: Path, report: Path, mode: str) -> None:
    """In the forked child: redirect output, point imports at the slot, run pytest. Never
    returns."""
    code = 3
    try:
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(ROOT)
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(slot.root), old]))
        os.environ[REPORT_ENV] = str(report)
        os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
        args = [*PYTEST_ARGS, *job.extra_args, *job.tests]
        if mode == "exec":
            os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])  # noqa: S606
        args = [*FORK_ARGS, *args]
        sys.path.insert(0, str(slot.root))
        importlib.invalidate_caches()
        import pytest  # noqa: PLC0415 - already imported by warm_up; the fork uses it

        code = int(pytest.main(args))
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return
        import traceback  # noqa: PLC0415

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


@dataclass
class _Running:
    job: Job
    slot: Slot
    pid: int
    started: float
    log: Path
    report: Path


def run_jobs(
    jobs: Sequence[Job],
    slots: list[Slot],
    workdir: Path,
    mode: str,
    done: Callable[[Job, Outcome], None],
) -> None:
    """Run every job, at most len(slots) at once; `done` is called as each one ends."""
    pending = list(jobs)
    free = list(slots)
    running: dict[int, _Running] = {}
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.pop(0), free.pop(0)
                job.prepare(slot)
                log = workdir / f"{job.key}.log"
                report = workdir / f"{job.key}.json"
                report.unlink(missing_ok=True)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(slot, job, log, report, mode)
                running[pid] = _Running(job, slot, pid, time.monotonic(), log, report)
            time.sleep(0.02)
            for pid, run in list(running.items()):
                seconds = time.monotonic() - run.started
                timed_out = False
                waited, status = os.waitpid(pid, os.WNOHANG)
                if waited == 0:
                    if seconds < run.job.timeout:
                        continue
                    _kill_group(pid)
                    _, status = os.waitpid(pid, 0)
                    timed_out = True
                del running[pid]
                _kill_group(pid)  # anything the tests left behind in the child's group
                run.slot.reset()
                free.append(run.slot)
                done(run.job, _outcome(run, os.waitstatus_to_exitcode(status), seconds, timed_out))
    finally:
        for pid, run in running.items():
            _kill_group(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            run.slot.reset()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _outcome(run: _Running, code: int, seconds: float, timed_out: bool) -> Outcome:
    try:
        data = json.loads(run.report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    outcomes = data.get("outcomes", {})
    rustynet = data.get("rustynet")
    return Outcome(
        exit_code=code,
        outcomes=outcomes if isinstance(outcomes, dict) else {},
        rustynet=rustynet if isinstance(rustynet, str) else None,
        log=run.log,
        seconds=seconds,
        timed_out=timed_out,
    )
