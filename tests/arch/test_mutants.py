"""tests/mutation/mutants.toml stays in step with the code and the threat model (no mutation run).

- every entry is well formed, ids are unique, and its target (`path::qualname`) holds its `find`
  text exactly once, so a stale mutant fails here as well as in the gate;
- every test a mutant names exists (the file, and the function or `Class::method` in it);
- a control row is a row of a table in docs/threat-model/*.md whose header has a `code` column
  and a `test` (or `tests`) column, and whose code cell cites package code (`src/...` or
  `adapters/...`, the code the gate can mutate). Each control row cites at least one mutant as
  `mutant:<id>` in its test cell; every cited id exists; every mutant is cited by some row.
  Rows that cite only gate tooling (`tools/`, `.ci/`, `pyproject.toml`) or say `planned (...)`
  in the code cell are not control rows for this rule.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from tools.mutants import Result, report
from tools.mutation.spec import (
    ROOT,
    Mutant,
    SpecError,
    StaleMutantError,
    load,
    mutate,
    mutate_checkout,
)

from tests.arch.test_threat_model_refs import (
    _column,
    _is_test_reference,
    _tables,
    reference_problem,
    references_in,
)

DOCS = ROOT / "docs" / "threat-model"
_CITATION = re.compile(r"`mutant:([^`\s]*)`")
_PACKAGE_CODE = ("src/", "adapters/")

# Pages whose control rows may not cite mutants yet (none today: every page's control rows
# do). A page listed here whose rows all cite one fails the check, so the set only shrinks.
PAGES_PENDING: frozenset[str] = frozenset()


def citations(cell: str) -> list[str]:
    """The mutant ids a table cell cites."""
    return _CITATION.findall(cell)


def control_rows(text: str) -> Iterable[tuple[int, str, str]]:
    """(line number, code cell, test cell) of every control row of a page."""
    for _, header, rows in _tables(text):
        code_col = _column(header, "code")
        test_col = _column(header, "test", "tests")
        if code_col is None or test_col is None:
            continue
        for line_no, cells in rows:
            if len(cells) != len(header):
                continue  # test_threat_model_refs reports the broken row
            yield line_no, cells[code_col], cells[test_col]


def _needs_mutant(code_cell: str) -> bool:
    return any(ref.startswith(_PACKAGE_CODE) for ref in references_in(code_cell))


def citation_problems(
    pages: Mapping[str, str], ids: set[str], pending: frozenset[str] = frozenset()
) -> list[str]:
    """Control rows without a mutant, citations of unknown ids, mutants no row cites."""
    problems: list[str] = []
    cited: set[str] = set()
    for name, text in sorted(pages.items()):
        uncited_rows = 0
        for line_no, code_cell, test_cell in control_rows(text):
            found = citations(test_cell)
            cited.update(found)
            problems.extend(
                f"{name}:{line_no}: cites unknown mutant {i!r}" for i in found if i not in ids
            )
            if found or not _needs_mutant(code_cell):
                continue
            uncited_rows += 1
            if name not in pending:
                problems.append(f"{name}:{line_no}: control row cites no `mutant:<id>`")
        if name in pending and uncited_rows == 0:
            problems.append(f"{name}: every control row cites a mutant; remove it from pending")
    problems.extend(f"mutant {i!r} is cited by no control row" for i in sorted(ids - cited))
    return problems


@pytest.fixture(scope="module")
def mutants() -> list[Mutant]:
    """The gate's list, parsed and validated (unique ids, well-formed entries)."""
    return load()


def test_mutant_file_is_well_formed_with_unique_ids(mutants: list[Mutant]) -> None:
    """The file parses, every entry has the required keys, and no id repeats."""
    assert mutants
    assert len({m.id for m in mutants}) == len(mutants)


def test_every_mutant_matches_its_target_exactly_once(mutants: list[Mutant]) -> None:
    """No mutant is stale: its qualname exists and its find text occurs once inside it."""
    problems = []
    for mutant in mutants:
        try:
            mutate_checkout(mutant)
        except (StaleMutantError, SpecError) as exc:
            problems.append(f"{mutant.id}: {exc}")
    assert problems == []


def test_every_mutant_names_tests_that_exist(mutants: list[Mutant]) -> None:
    """Each named test is a function (or Class::method) defined in an existing test file."""
    problems = [
        f"{mutant.id}: {problem}"
        for mutant in mutants
        for test in mutant.tests
        if (problem := reference_problem(test, ROOT)) is not None
        or (problem := None if _is_test_reference(test) else f"{test} is not a test")
    ]
    assert problems == []


def test_every_control_row_cites_a_mutant_and_every_mutant_is_cited(
    mutants: list[Mutant],
) -> None:
    """The threat model links each control to its mutation, and the list has no orphan."""
    pages = {doc.name: doc.read_text(encoding="utf-8") for doc in DOCS.glob("*.md")}
    assert citation_problems(pages, {m.id for m in mutants}, PAGES_PENDING) == []


# --- the checks have teeth: planted stale mutants and uncited rows are caught ------------------

_SOURCE = """
LIMIT = 3


class Gate:
    def admit(self, n: int) -> bool:
        if n > LIMIT:
            return False
        return True

    def other(self, n: int) -> bool:
        return n > LIMIT
"""


def _mutant(
    target: str = "src/rustynet/gate.py::Gate.admit",
    find: str = "if n > LIMIT:",
    replace: str = "if False:",
) -> Mutant:
    return Mutant(
        id="gate-limit",
        target=target,
        find=find,
        replace=replace,
        tests=("tests/unit/test_gate.py::test_limit",),
        why="no limit",
    )


def test_a_matching_mutant_rewrites_exactly_its_target() -> None:
    """The pattern is replaced inside the named method and nowhere else."""
    mutated = mutate(_mutant(), _SOURCE)
    assert "if False:" in mutated
    assert mutated.count("n > LIMIT") == 1  # other() is untouched


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"target": "src/rustynet/gate.py::Gate.close"}, "'close' is not defined"),
        ({"target": "src/rustynet/gate.py::Door.admit"}, "'Door' is not defined"),
        ({"find": "if n >= LIMIT:"}, "occurs 0 times"),
        ({"target": "src/rustynet/gate.py::Gate", "find": "n > LIMIT"}, "occurs 2 times"),
    ],
)
def test_a_stale_mutant_is_an_error_not_a_skip(changes: dict[str, str], reason: str) -> None:
    """A missing qualname, a vanished pattern or an ambiguous one fails loudly."""
    with pytest.raises(StaleMutantError, match=reason):
        mutate(_mutant(**changes), _SOURCE)


def test_a_mutation_that_does_not_parse_is_refused() -> None:
    """A syntax error would 'kill' any test: the gate refuses such a mutant."""
    with pytest.raises(SpecError, match="does not parse"):
        mutate(_mutant(replace="if n >"), _SOURCE)


def test_duplicate_ids_and_bad_entries_are_refused(tmp_path: Path) -> None:
    """Two entries with one id, or an unknown key, make the file invalid."""
    entry = (
        '[[mutant]]\nid = "a"\ntarget = "src/rustynet/x.py::f"\nfind = "x"\nreplace = "y"\n'
        'tests = ["tests/unit/test_x.py::test_x"]\nwhy = "w"\n'
    )
    path = tmp_path / "mutants.toml"
    path.write_text(entry + entry)
    with pytest.raises(SpecError, match="duplicate mutant id 'a'"):
        load(path)
    path.write_text(entry + "line = 3\n")
    with pytest.raises(SpecError, match="unknown keys"):
        load(path)
    path.write_text(entry.replace("src/rustynet/x.py", "tools/x.py"))
    with pytest.raises(SpecError, match="outside"):
        load(path)


_PAGE = """
| control | code | test |
|---|---|---|
| a | `src/rustynet/domain/limits.py::Limiter` | `tests/unit/test_l.py::test_a` `mutant:limit-a` |
| b | `adapters/storage/sql/guards.py::SqlLimiter` | `tests/unit/test_limits.py::test_b` |
| c | `tools/gates/crypto_scan.py` | `tests/arch/test_gates.py::test_c` |
| d | planned (issue 99) | planned (issue 99) |
| e | `src/rustynet/domain/limits.py::Limiter` | `tests/unit/test_limits.py::test_e` `mutant:nope` |

| limit | parameter |
|---|---|
| `src/rustynet/domain/limits.py::LimitPolicy` | no test column: not a control table |
"""


def test_citation_check_catches_uncited_rows_unknown_ids_and_orphans() -> None:
    """Row b (package code, no mutant) and row e (unknown id) fail, and so does an uncited
    mutant; row c (gate tooling) and row d (planned) need none."""
    problems = citation_problems({"page.md": _PAGE}, {"limit-a", "orphan"})
    assert problems == [
        "page.md:5: control row cites no `mutant:<id>`",
        "page.md:8: cites unknown mutant 'nope'",
        "mutant 'orphan' is cited by no control row",
    ]


def test_a_pending_page_is_excused_only_while_it_has_uncited_rows() -> None:
    """A pending page's uncited rows are tolerated; once all cite, it must leave the set."""
    assert citation_problems({"page.md": _PAGE}, {"limit-a"}, frozenset({"page.md"})) == [
        "page.md:8: cites unknown mutant 'nope'"
    ]
    done = "| control | code | test |\n|---|---|---|\n| a | `src/x.py` | `mutant:limit-a` |\n"
    assert citation_problems({"done.md": done}, {"limit-a"}, frozenset({"done.md"})) == [
        "done.md: every control row cites a mutant; remove it from pending"
    ]


def test_the_report_names_every_survivor_in_its_last_lines() -> None:
    """CI shows a log's tail only: a survivor listed only mid-table would go unnamed."""

    killed = [Result(_mutant(), "KILLED", "by t", 0.1) for _ in range(40)]
    survivor = Result(dataclasses.replace(_mutant(), id="the-survivor"), "SURVIVED", "why", 0.2)
    text = report([survivor, *killed])
    assert "the-survivor" in "\n".join(text.splitlines()[-3:])
    assert "not killed" not in report(killed)
