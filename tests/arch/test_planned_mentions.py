"""Nothing built stays marked "planned" in `docs/` or `README.md`.

Whether the subject of a sentence is built cannot be decided from the text alone, so the rule
is an allow-list that forces the question each time: every line of `README.md` and
`docs/**/*.md` that says "planned" (whole word, any case) must match an entry of
`PLANNED_ALLOWED`, which names the page, a fragment of the line and why it may still say so.
A new "planned" line fails until someone checks the code and either cites what is built or adds
an entry with its reason; an entry that matches no line any more fails too, so a fixed gap
leaves no stale excuse behind.

One mechanical check on top, independent of the list: `planned (issue N)` for an issue that is
done (`DONE_ISSUES`; docs/threat-model/README.md says what each built) fails even when listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final, NamedTuple

ROOT: Final = Path(__file__).resolve().parents[2]
# Issues whose work is built: the daemon and data path (4), the relay and path controller (5),
# several control instances (6), and before them the security core (2) and control plane (3).
DONE_ISSUES: Final = frozenset({2, 3, 4, 5, 6})
_PLANNED_WORD: Final = re.compile(r"\bplanned\b", re.IGNORECASE)
_PLANNED_ISSUE: Final = re.compile(r"planned \(issue (\d+)\)", re.IGNORECASE)


class Allowed(NamedTuple):
    """One line that may say "planned": its page, a fragment of it, and why."""

    page: str
    fragment: str
    reason: str


PLANNED_ALLOWED: Final = (
    Allowed(
        "docs/threat-model/README.md",
        "is marked **planned**, with what is missing",
        "states the convention for controls that are designed but not built",
    ),
    Allowed(
        "docs/threat-model/README.md",
        "(a kill switch, NAT traversal, exit nodes) is marked planned",
        "names things that are not built at all and points at this list",
    ),
    Allowed(
        "docs/threat-model/README.md",
        "does not say `planned (…)`",
        "describes the control-table rule of test_threat_model_refs.py",
    ),
    Allowed(
        "docs/threat-model/README.md",
        'that says "planned" but is not in its allow-list',
        "describes this check",
    ),
    Allowed(
        "docs/threat-model/README.md",
        "no longer matches a line, and on a planned",
        "describes this check",
    ),
    Allowed(
        "docs/threat-model/threat-model.md",
        "designed but not built is marked **planned** with",
        "states the convention for controls that are designed but not built",
    ),
    Allowed(
        "docs/threat-model/threat-model.md",
        "so another table (the planned kill switch) survives",
        "no kill switch is built; the crash test keeps a foreign table "
        "(`inet rustynet-killswitch`) only to prove the daemon leaves other tables alone",
    ),
    Allowed(
        "docs/threat-model/assurance-plan.md",
        "| nothing built stays marked planned: every",
        "the invariants table names this check",
    ),
    Allowed(
        "docs/threat-model/assurance-plan.md",
        "byte-flip tests: not planned yet",
        "says fuzzing is NOT planned: it claims nothing is built",
    ),
    Allowed(
        "docs/threat-model/token-model.md",
        "two redemptions planned from one row",
        "'planned' means 'prepared from the same stored row', not a build status",
    ),
)


def doc_pages(root: Path) -> dict[str, str]:
    """`README.md` and every page under `docs/`, by path relative to `root`."""
    paths = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return {p.relative_to(root).as_posix(): p.read_text("utf-8") for p in paths if p.is_file()}


def planned_problems(pages: Mapping[str, str], allowed: Iterable[Allowed]) -> list[str]:
    """Unlisted "planned" lines, "planned (issue N)" for a done issue, and stale entries."""
    entries = list(allowed)
    used: set[Allowed] = set()
    problems = []
    for page, text in pages.items():
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not _PLANNED_WORD.search(line):
                continue
            where = f"{page}:{line_no}"
            done = [n for n in map(int, _PLANNED_ISSUE.findall(line)) if n in DONE_ISSUES]
            if done:
                problems.append(
                    f"{where}: says planned (issue {done[0]}), but issue {done[0]} is done: cite "
                    "the code and test that built it, or name what is still missing"
                )
            matches = [e for e in entries if e.page == page and e.fragment in line]
            used.update(matches)
            if not matches and not done:
                problems.append(
                    f"{where}: says 'planned' but is not in PLANNED_ALLOWED: if it is built, cite "
                    "its code and test; if not, add an entry with the reason"
                )
    problems.extend(
        f"PLANNED_ALLOWED entry for {e.page} ({e.fragment!r}) matches no line: remove it"
        for e in entries
        if e not in used
    )
    return problems


def test_no_built_thing_is_marked_planned_in_the_docs() -> None:
    """Every "planned" in docs/ and README.md is allow-listed with its reason, none names a done
    issue, and no allow-list entry is stale."""
    pages = doc_pages(ROOT)
    assert "docs/threat-model/threat-model.md" in pages
    assert planned_problems(pages, PLANNED_ALLOWED) == []


def test_every_allow_list_entry_gives_a_reason() -> None:
    """An entry without a reason, or with a fragment too short to pin one line, is no check."""
    assert all(len(e.reason) >= 10 and len(e.fragment) >= 15 for e in PLANNED_ALLOWED)
    assert len({(e.page, e.fragment) for e in PLANNED_ALLOWED}) == len(PLANNED_ALLOWED)


# --- the check has teeth: planted stale lines are caught ----------------------------------------

_KEPT = Allowed("docs/a.md", "the kill switch is planned", "not built")


def test_a_planted_unlisted_planned_line_fails() -> None:
    """A new "planned" line nobody has checked against the code fails, naming page and line."""
    pages = {"docs/a.md": "the kill switch is planned\nRelay session end: Planned.\n"}
    assert planned_problems(pages, [_KEPT]) == [
        "docs/a.md:2: says 'planned' but is not in PLANNED_ALLOWED: if it is built, cite its "
        "code and test; if not, add an entry with the reason"
    ]


def test_planned_for_a_done_issue_fails_even_when_listed() -> None:
    """`planned (issue 4)` fails although listed; an open issue's number is left to the list."""
    listed = Allowed("docs/a.md", "the daemon", "stale excuse")
    pages = {"docs/a.md": "the daemon: planned (issue 4)\nthe kill switch is planned (issue 12)\n"}
    problems = planned_problems(pages, [listed])
    assert len(problems) == 2
    assert problems[0].startswith("docs/a.md:1: says planned (issue 4), but issue 4 is done")
    assert problems[1].startswith("docs/a.md:2: says 'planned' but is not in PLANNED_ALLOWED")


def test_a_stale_allow_list_entry_fails() -> None:
    """An entry whose line was fixed (or moved to another page) must be removed."""
    pages = {"docs/a.md": "the kill switch is built\n", "docs/b.md": "the kill switch is planned"}
    assert planned_problems(pages, [_KEPT]) == [
        "docs/b.md:1: says 'planned' but is not in PLANNED_ALLOWED: if it is built, cite its "
        "code and test; if not, add an entry with the reason",
        "PLANNED_ALLOWED entry for docs/a.md ('the kill switch is planned') matches no line: "
        "remove it",
    ]


def test_words_that_merely_contain_planned_are_not_mentions() -> None:
    """Only the whole word counts: 'unplanned' or 'plannedness' is not a status."""
    assert planned_problems({"docs/a.md": "an unplanned restart\n"}, []) == []
