"""docs/threat-model/ stays honest: what it cites exists, and every control names a test.

A reference is a backticked span that starts with a repository path this checker knows
(`src/`, `adapters/`, `tests/`, `tools/`, `bench/`, `docs/`, `packaging/`, `.ci/`, `noxfile.py`,
`pyproject.toml`, `README.md`), optionally
followed by `::symbol`:

- `path` - the file or folder must exist (with a trailing `/`, a folder);
- `path.py::name` - `name` must be defined at the top level of the module (function, class or
  assignment, parsed with `ast`, nothing is imported); `path.py::Class.method` or the pytest
  form `path.py::Class::method` walks into classes; a pytest parameter suffix `[...]` is ignored;
- `path.toml::a.b` - the dotted key path must exist in the TOML document.

Paths under `GENERATED` (what a run writes and git ignores, such as the bench reports) are
outputs, not sources: they are not looked up.

Relative markdown links between the pages must point at files that exist.

A markdown table whose header has a `test` (or `tests`) column is a control table: each row
must cite, in that column, at least one test (a reference whose last symbol starts with
`test`/`Test`), or say `planned (...)` with what is missing, for a control that is not built yet.
When the table also has a `code` column, that cell must cite code or say `planned (...)` too.
Which "planned" may stay at all is decided by `tests/arch/test_planned_mentions.py`.
"""

from __future__ import annotations

import ast
import functools
import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "threat-model"

REQUIRED_DOCS = (
    "README.md",
    "threat-model.md",
    "key-model.md",
    "token-model.md",
    "auth-controls.md",
    "key-custody.md",
    "crypto-policy.md",
    "assurance-plan.md",
    "secrets-handling.md",
    "performance-budgets.md",
)

_REF_PREFIXES = (
    "src/",
    "adapters/",
    "tests/",
    "tools/",
    "bench/",
    "docs/",
    "packaging/",
    ".ci/",
    "noxfile.py",
    "pyproject.toml",
    "README.md",
)
# Written by a run, ignored by git (.gitignore): named as outputs, never present in a clone.
GENERATED = ("bench/results/",)
_BACKTICKED = re.compile(r"`([^`\n]+)`")
_PLANNED = re.compile(r"planned \([^()\n]+\)")
_SEPARATOR_CELL = re.compile(r":?-{3,}:?")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")


def _is_reference(span: str) -> bool:
    return span.startswith(_REF_PREFIXES) and not any(c.isspace() for c in span)


def references_in(text: str) -> list[str]:
    """Every backticked repository reference in `text`, in order."""
    return [s for s in _BACKTICKED.findall(text) if _is_reference(s)]


def _split_reference(ref: str) -> tuple[str, list[str]]:
    path, _, symbol = ref.partition("::")
    if not symbol:
        return path, []
    parts: list[str] = []
    for chunk in symbol.split("::"):
        parts.extend(chunk.split("."))
    if parts:
        parts[-1] = parts[-1].split("[", 1)[0]
    return path, parts


def _names_defined(body: Sequence[ast.stmt]) -> dict[str, ast.stmt]:
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


@functools.lru_cache(maxsize=256)
def _module_body(path: Path) -> Sequence[ast.stmt]:
    """The parsed top level of a module (cached: the pages cite the same files many times)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body


def _python_symbol_exists(path: Path, parts: list[str]) -> bool:
    body = _module_body(path)
    for i, part in enumerate(parts):
        node = _names_defined(body).get(part)
        if node is None:
            return False
        if i < len(parts) - 1:
            if not isinstance(node, ast.ClassDef):
                return False
            body = node.body
    return True


def _toml_key_exists(source: str, parts: list[str]) -> bool:
    data: object = tomllib.loads(source)
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


_BRACES = re.compile(r"\{([^{}]*,[^{}]*)\}")


def reference_problem(ref: str, root: Path) -> str | None:
    """Why `ref` does not resolve under `root`, or None when it does.

    A brace list, `src/rustynet/{domain,ports}/`, stands for each of its paths.
    """
    braces = _BRACES.search(ref)
    if braces is not None:
        for choice in braces.group(1).split(","):
            expanded = ref[: braces.start()] + choice + ref[braces.end() :]
            problem = reference_problem(expanded, root)
            if problem is not None:
                return problem
        return None
    path_text, parts = _split_reference(ref)
    if path_text.startswith(GENERATED):
        return None
    target = root / path_text
    if path_text.endswith("/"):
        return None if target.is_dir() else f"{ref}: no such folder"
    if not parts and target.is_dir():
        return None
    if not target.is_file():
        return f"{ref}: no such file"
    if not parts:
        return None
    if not all(parts):
        return f"{ref}: empty symbol"
    if target.suffix == ".py":
        found = _python_symbol_exists(target, parts)
    elif target.suffix == ".toml":
        found = _toml_key_exists(target.read_text(encoding="utf-8"), parts)
    else:
        return f"{ref}: symbols are only checked in .py and .toml files"
    return None if found else f"{ref}: {'.'.join(parts)} is not defined in {path_text}"


def _is_test_reference(ref: str) -> bool:
    path_text, parts = _split_reference(ref)
    return path_text.startswith("tests/") and bool(parts) and parts[-1].lower().startswith("test")


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner.removeprefix("|").removesuffix("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", inner)]


def _tables(text: str) -> Iterable[tuple[int, list[str], list[tuple[int, list[str]]]]]:
    """(header line number, header cells, [(line number, cells)]) for each markdown table."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        header, separator = lines[i], lines[i + 1]
        if header.lstrip().startswith("|") and all(
            _SEPARATOR_CELL.fullmatch(c) for c in _cells(separator)
        ):
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                rows.append((j + 1, _cells(lines[j])))
                j += 1
            yield i + 1, [c.lower() for c in _cells(header)], rows
            i = j
        else:
            i += 1


def _column(header: list[str], *names: str) -> int | None:
    for index, cell in enumerate(header):
        if cell in names:
            return index
    return None


def table_problems(name: str, text: str) -> list[str]:
    """Control-table rows that cite no test (or no code) and do not say they are planned."""
    problems = []
    for _, header, rows in _tables(text):
        test_col = _column(header, "test", "tests")
        if test_col is None:
            continue
        code_col = _column(header, "code")
        for line_no, cells in rows:
            where = f"{name}:{line_no}"
            if len(cells) != len(header):
                problems.append(f"{where}: row has {len(cells)} cells, header has {len(header)}")
                continue
            test_cell = cells[test_col]
            if not _PLANNED.search(test_cell) and not any(
                _is_test_reference(r) for r in references_in(test_cell)
            ):
                problems.append(f"{where}: control row names no test (or 'planned (...)')")
            if code_col is not None:
                code_cell = cells[code_col]
                if not _PLANNED.search(code_cell) and not references_in(code_cell):
                    problems.append(f"{where}: control row names no code (or 'planned (...)')")
    return problems


def reference_and_link_problems(doc: Path, text: str, root: Path, name: str) -> list[str]:
    """Dangling backticked references and broken relative links in one markdown text."""
    problems = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        for ref in references_in(line):
            problem = reference_problem(ref, root)
            if problem is not None:
                problems.append(f"{name}:{line_no}: {problem}")
        problems.extend(
            f"{name}:{line_no}: link to {target}: no such file"
            for target in _LINK.findall(line)
            if "://" not in target
            and not target.startswith("mailto:")
            and not (doc.parent / target).exists()
        )
    return problems


def check_docs(docs: Iterable[Path], root: Path) -> list[str]:
    """Every problem in the given markdown files: dangling references and untested controls."""
    problems = []
    for doc in sorted(docs):
        text = doc.read_text(encoding="utf-8")
        problems.extend(reference_and_link_problems(doc, text, root, doc.name))
        problems.extend(table_problems(doc.name, text))
    return problems


def test_threat_model_has_every_required_document() -> None:
    """Each page the issue asks for exists in docs/threat-model/."""
    missing = [name for name in REQUIRED_DOCS if not (DOCS / name).is_file()]
    assert missing == []


def test_every_threat_model_reference_resolves_and_every_control_names_a_test() -> None:
    """No page cites a missing file or symbol, and no control row lacks a test."""
    docs = list(DOCS.glob("*.md"))
    assert docs, "docs/threat-model/ has no pages"
    assert check_docs(docs, ROOT) == []


def test_threat_model_cites_tests_at_all() -> None:
    """The pages are backed by tests: a page set that cited none would pass vacuously."""
    refs = [r for doc in DOCS.glob("*.md") for r in references_in(doc.read_text("utf-8"))]
    assert sum(_is_test_reference(r) for r in refs) >= 20


# --- the checker has teeth: planted bad references are caught --------------------------------

_GOOD_MODULE = """
class Box:
    LIMIT = 3

    def open(self) -> None: ...

def test_box_opens() -> None: ...

TestBoxMachine = object()
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny repository with one test module and one TOML file."""
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "unit" / "test_box.py").write_text(_GOOD_MODULE)
    (tmp_path / "pyproject.toml").write_text("[tool.thing]\nkey = 1\n")
    return tmp_path


def _check(tree: Path, doc_text: str) -> list[str]:
    doc = tree / "doc.md"
    doc.write_text(doc_text)
    return check_docs([doc], tree)


def test_checker_accepts_references_that_resolve(tree: Path) -> None:
    """Files, folders, top-level names, nested names, pytest ids and TOML keys all resolve."""
    text = (
        "See `tests/unit/test_box.py`, `tests/unit/`, `tests/unit/test_box.py::test_box_opens`,"
        " `tests/unit/test_box.py::Box.open`, `tests/unit/test_box.py::Box::open`,"
        " `tests/unit/test_box.py::Box.LIMIT`, `tests/unit/test_box.py::TestBoxMachine`,"
        " `tests/unit/test_box.py::test_box_opens[case-1]` and `pyproject.toml::tool.thing.key`."
        " Commands such as `nox -s ci` are not references.\n"
    )
    assert _check(tree, text) == []


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("src/rustynet/domain/nothing.py", "no such file"),
        ("tests/unit/", None),
        ("tests/unit", None),
        ("tests/{unit/test_box.py,unit/}", None),
        ("tests/{unit,nowhere}/", "tests/nowhere/: no such folder"),
        ("tests/{unit}/", "no such folder"),
        ("tests/nowhere/", "no such folder"),
        ("tests/unit/test_box.py::test_box_closes", "is not defined"),
        ("tests/unit/test_box.py::Box.close", "is not defined"),
        ("tests/unit/test_box.py::test_box_opens.inner", "is not defined"),
        ("pyproject.toml::tool.other", "is not defined"),
    ],
)
def test_checker_rejects_a_planted_dangling_reference(
    tree: Path, ref: str, reason: str | None
) -> None:
    """A cited file or symbol that does not exist fails the check."""
    problems = _check(tree, f"Proven by `{ref}`.\n")
    if reason is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert reason in problems[0]
        assert problems[0].startswith("doc.md:1:")


def test_checker_rejects_a_broken_relative_link(tree: Path) -> None:
    """A markdown link to a page that does not exist fails; existing pages and URLs pass."""
    (tree / "other.md").write_text("# other\n")
    text = "See [a](other.md#top), [b](https://example.org/x) and [c](missing.md).\n"
    assert _check(tree, text) == ["doc.md:1: link to missing.md: no such file"]


def test_checker_rejects_a_control_row_without_a_test(tree: Path) -> None:
    """A control-table row whose test cell cites no test (only a file, or a helper) fails."""
    text = (
        "| threat | control | code | test |\n"
        "|---|---|---|---|\n"
        "| a | b | `tests/unit/test_box.py::Box` | `tests/unit/test_box.py::test_box_opens` |\n"
        "| c | d | `tests/unit/test_box.py::Box` | `tests/unit/test_box.py` |\n"
        "| e | f | `tests/unit/test_box.py::Box` | `tests/unit/test_box.py::Box.open` |\n"
        "| g | h | `tests/unit/test_box.py::Box` | planned (issue 3) |\n"
        "| i | j | nothing cited | `tests/unit/test_box.py::test_box_opens` |\n"
        "| k | l | planned (issue 4) | to do |\n"
    )
    problems = _check(tree, text)
    assert problems == [
        "doc.md:4: control row names no test (or 'planned (...)')",
        "doc.md:5: control row names no test (or 'planned (...)')",
        "doc.md:7: control row names no code (or 'planned (...)')",
        "doc.md:8: control row names no test (or 'planned (...)')",
    ]


def test_checker_rejects_a_control_row_with_missing_cells(tree: Path) -> None:
    """A row that lost a cell cannot hide its missing test behind a column shift."""
    text = "| control | test |\n|---|---|\n| only one cell |\n"
    assert _check(tree, text) == ["doc.md:3: row has 1 cells, header has 2"]
