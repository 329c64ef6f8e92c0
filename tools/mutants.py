"""The mutation gate: every security mutation in tests/mutation/mutants.toml must be killed.

    python -m tools.mutants                 every mutant (what `nox -s mutants` runs)
    python -m tools.mutants --only ID ...   just these
    python -m tools.mutants --list          list the mutants and stop
    python -m tools.mutants --jobs N        N pytest runs at once (default 2)

For each mutant: find its target (`path::qualname` + exact `find` text, see
tools/mutation/spec.py), apply it to a temporary copy of the package that is first on the
import path of pytest and of every process the tests start, run only the tests the mutant
names, and classify:

    KILLED    the tests failed (pytest exit code 1)
    SURVIVED  the tests passed: the control is not proven by them
    STALE     the target or pattern does not match exactly once (the code moved on)
    ERROR     anything else: the baseline (unmutated copy) did not pass, a named test was
              not collected or was skipped, pytest exited 2-5, the run timed out, or the tests
              imported `rustynet` from somewhere other than the copy

The baseline runs every named test once, on unmutated copies, before the mutants. The gate
exits 1 unless every selected mutant is KILLED.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.mutation import runner
from tools.mutation.spec import (
    MUTANTS_FILE,
    ROOT,
    Mutant,
    SpecError,
    StaleMutantError,
    load,
    mutate_checkout,
)

BASELINE_TIMEOUT = 900.0
STATUSES = ("KILLED", "SURVIVED", "STALE", "ERROR")


@dataclass
class Result:
    """A mutant's verdict, with the detail a reader needs to act on it."""

    mutant: Mutant
    status: str
    detail: str
    seconds: float = 0.0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.mutants", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutant ids")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=2, metavar="N", help="parallel runs (2)")
    parser.add_argument(
        "--mode",
        choices=("fork", "exec"),
        default="fork",
        help="fork: pytest.main in a fork of a warmed-up process (fast); exec: python -m pytest",
    )
    parser.add_argument("--file", type=Path, default=MUTANTS_FILE, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="show output of failures")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def _select(mutants: list[Mutant], only: Sequence[str] | None) -> list[Mutant]:
    if not only:
        return mutants
    known = {m.id: m for m in mutants}
    unknown = [i for i in only if i not in known]
    if unknown:
        raise SpecError(f"unknown mutant ids: {', '.join(unknown)}")
    return [known[i] for i in dict.fromkeys(only)]


def _baseline_chunks(tests: Sequence[str], jobs: int) -> list[list[str]]:
    """Split the named tests over the workers, keeping each test file in one chunk."""
    by_file: dict[str, list[str]] = {}
    for test in tests:
        by_file.setdefault(test.partition("::")[0], []).append(test)
    chunks: list[list[str]] = [[] for _ in range(jobs)]
    for group in sorted(by_file.values(), key=len, reverse=True):
        min(chunks, key=len).extend(group)
    return [c for c in chunks if c]


def _imported_copy(outcome: runner.Outcome, slot_roots: Sequence[Path]) -> bool:
    return outcome.rustynet is not None and any(
        Path(outcome.rustynet).is_relative_to(r) for r in slot_roots
    )


def _baseline_problem(mutant: Mutant, baseline: runner.Outcome) -> str | None:
    for test in mutant.tests:
        nodes = baseline.nodes_for(test)
        if not nodes:
            return f"baseline: {test} was not collected"
        bad = sorted(n for n, o in nodes.items() if o != "passed")
        if bad:
            return f"baseline: {bad[0]} {nodes[bad[0]]} on the unmutated code"
    return None


def _classify(mutant: Mutant, outcome: runner.Outcome, slot_roots: Sequence[Path]) -> Result:
    seconds = outcome.seconds
    if outcome.timed_out:
        return Result(mutant, "ERROR", f"timed out after {mutant.timeout:.0f} s", seconds)
    if not _imported_copy(outcome, slot_roots):
        return Result(mutant, "ERROR", f"tests imported rustynet from {outcome.rustynet}", seconds)
    if outcome.exit_code == 1:
        failed = outcome.failed_nodes()
        return Result(mutant, "KILLED", f"by {failed[0] if failed else '?'}", seconds)
    if outcome.exit_code == 0:
        skipped = [n for n, o in outcome.outcomes.items() if o == "skipped"]
        if skipped:
            return Result(mutant, "ERROR", f"{skipped[0]} skipped", seconds)
        return Result(mutant, "SURVIVED", mutant.why, seconds)
    return Result(mutant, "ERROR", f"pytest exit code {outcome.exit_code}", seconds)


def run(mutants: Sequence[Mutant], jobs: int, mode: str, verbose: bool) -> list[Result]:
    """Baseline, then every runnable mutant; the results in the file's order."""
    results: dict[str, Result] = {}
    mutated: dict[str, str] = {}
    for mutant in mutants:
        try:
            mutated[mutant.id] = mutate_checkout(mutant)
        except StaleMutantError as exc:
            results[mutant.id] = Result(mutant, "STALE", str(exc))
        except SpecError as exc:
            results[mutant.id] = Result(mutant, "ERROR", str(exc))
    runnable = [m for m in mutants if m.id in mutated]
    if mode == "fork":
        runner.warm_up()
    with tempfile.TemporaryDirectory(prefix="rustynet-mutants-") as tmp:
        workdir = Path(tmp)
        runner.use_bytecode_cache(workdir / "pycache")
        slots = [runner.make_slot(workdir, i) for i in range(jobs)]
        slot_roots = [s.root for s in slots]
        tests = list(dict.fromkeys(t for m in runnable for t in m.tests))
        baseline = _run_baseline(tests, slots, workdir, mode, slot_roots)
        todo: list[runner.Job] = []
        for mutant in runnable:
            problem = baseline if isinstance(baseline, str) else _baseline_problem(mutant, baseline)
            if problem is not None:
                results[mutant.id] = Result(mutant, "ERROR", problem)
                continue
            todo.append(_job(mutant, mutated[mutant.id]))
        by_key = {m.id: m for m in runnable}

        def done(job: runner.Job, outcome: runner.Outcome) -> None:
            result = _classify(by_key[job.key], outcome, slot_roots)
            results[job.key] = result
            print(f"  {result.status:<8} {result.seconds:5.1f} s  {job.key}", flush=True)
            if verbose and result.status != "KILLED":
                print(outcome.log_tail(), flush=True)

        if todo:
            print(f"mutants: running {len(todo)} mutants, {len(slots)} at a time", flush=True)
        runner.run_jobs(todo, slots, workdir, mode, done)
        for slot in slots:
            slot.check_pristine()
    return [results[m.id] for m in mutants]


def _job(mutant: Mutant, text: str) -> runner.Job:
    def prepare(slot: runner.Slot) -> None:
        slot.apply(mutant.copy_path, text)

    return runner.Job(mutant.id, mutant.tests, mutant.timeout, ("-x",), prepare)


def _run_baseline(
    tests: Sequence[str],
    slots: list[runner.Slot],
    workdir: Path,
    mode: str,
    slot_roots: Sequence[Path],
) -> runner.Outcome | str:
    """All named tests once on the unmutated copies; merged outcomes, or why it failed."""
    if not tests:
        return runner.Outcome(0, {}, None, workdir, 0.0)
    started = time.monotonic()
    chunks = _baseline_chunks(tests, len(slots))
    print(f"mutants: baseline of {len(tests)} tests in {len(chunks)} runs", flush=True)
    outcomes: list[runner.Outcome] = []
    jobs = [runner.Job(f"baseline-{i}", chunk, BASELINE_TIMEOUT) for i, chunk in enumerate(chunks)]
    runner.run_jobs(jobs, slots, workdir, mode, lambda _job, out: outcomes.append(out))
    merged: dict[str, str] = {}
    for outcome in outcomes:
        if outcome.timed_out:
            return f"baseline timed out after {BASELINE_TIMEOUT:.0f} s"
        if outcome.outcomes and not _imported_copy(outcome, slot_roots):
            return f"baseline imported rustynet from {outcome.rustynet}"
        if outcome.exit_code not in (0, 1):
            return f"baseline: pytest exit code {outcome.exit_code}\n{outcome.log_tail()}"
        merged.update(outcome.outcomes)
    seconds = time.monotonic() - started
    print(f"mutants: baseline done in {seconds:.1f} s", flush=True)
    return runner.Outcome(0, merged, None, workdir, seconds)


def _table(results: Sequence[Result]) -> str:
    width = max([len("mutant"), *(len(r.mutant.id) for r in results)])
    lines = [f"{'mutant':<{width}}  {'status':<8}  {'time':>6}  detail"]
    lines.extend(
        f"{r.mutant.id:<{width}}  {r.status:<8}  {r.seconds:5.1f}s  {r.detail}" for r in results
    )
    return "\n".join(lines)


def report(results: Sequence[Result]) -> str:
    """The results table, then every mutant not killed again: a CI log's tail shows only its
    last lines, and those must name the survivor."""
    text = _table(results)
    missed = [r for r in results if r.status != "KILLED"]
    if missed:
        text += f"\n\nnot killed ({len(missed)}):\n{_table(missed)}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gate; 0 when every selected mutant is killed, 1 otherwise, 2 on a bad file."""
    started = time.monotonic()
    args = _parse(argv)
    try:
        mutants = _select(load(args.file), args.only)
    except SpecError as exc:
        print(f"mutants: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.id}\n    {m.target}\n    {m.why}")
        return 0
    os.chdir(ROOT)
    results = run(mutants, args.jobs, args.mode, args.verbose)
    print()
    print(report(results))
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if s != "KILLED")
    print(
        f"\nmutants: score {counts['KILLED']}/{len(results)} killed ({summary});"
        f" {elapsed:.1f} s with {args.jobs} jobs ({args.mode})"
    )
    return 0 if counts["KILLED"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
