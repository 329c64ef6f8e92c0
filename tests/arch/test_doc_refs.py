"""Every document in the repository cites only what the repository holds.

A fresh clone is all a reader has, so nothing may point outside it. Two rules, beside the
threat-model rules of `tests/arch/test_threat_model_refs.py` (whose reference syntax they share):

1. Every markdown file in the repository (`README.md`, `docs/**`, any other `*.md`; not
   `.venv/`, `.git/` or build output): each backticked repository reference (`path`,
   `path.py::symbol`, `path.toml::key`) resolves, each relative link points at a file that
   exists, and each document its text names (a word ending in `.md`) exists.
2. Every comment and docstring of the Python files in `src/`, `adapters/`, `tools/`, `tests/`,
   `bench/` and `noxfile.py`; every comment of the repository's TOML files (configuration,
   budgets, the mutant list), shell scripts and systemd units; every line of its JSON files
   (the OpenAPI document's descriptions): each document it names (a word ending in `.md`)
   exists.
3. In all of the above, no text sends the reader to the design notes kept outside the
   repository by section: one of their upper-case names (architecture, style, anchors,
   developers, lab) followed by a section sign or the word habit, section or rule. (Named as
   documents, with `.md`, rule 1 or 2 already fails them.)

A named document resolves when it is a path from the repository root (`docs/lab.md`), or,
written bare or as a path tail (`lab.md`, `threat-model/README.md`), when some markdown file of
the repository ends with it. Names under `GENERATED` (reports a run writes, ignored by git)
are outputs and are not looked up. The control-table rule stays with the threat-model pages.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.arch.test_threat_model_refs import GENERATED, ROOT, reference_and_link_problems

# Folders that are not the repository's own text: environments, caches, build output.
_SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        ".nox",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        ".benchmarks",
        "__pycache__",
        "build",
        "dist",
        "node_modules",
    }
)
CODE_ROOTS = ("src", "adapters", "tools", "tests", "bench", "noxfile.py")
_HASH_COMMENTED = (".toml", ".sh", ".service")

# In markdown, backticked spans and link targets have their own rules (checked above them).
_BACKTICKED = re.compile(r"`[^`\n]+`")
_CITED = re.compile(r"`[^`\n]+`|\]\([^)\s]*\)")
# An upper-case note name followed by a section sign, or by the word "habit" and a number: the
# way documents kept outside the repository get cited. Pages of the repository are cited by path.
_OUTSIDE_NOTE = re.compile(r"\b[A-Z][A-Z_]{3,}\b\s*(?:§|habit\s+\d)")
_DOC_NAME = re.compile(r"(?<![\w./*-])((?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w])")


def _walk(top: Path, suffix: str) -> Iterator[Path]:
    if top.is_file():
        if top.suffix == suffix:
            yield top
        return
    for path in sorted(top.iterdir()):
        if path.is_dir():
            if path.name not in _SKIPPED_DIRS and not path.name.endswith(".egg-info"):
                yield from _walk(path, suffix)
        elif path.suffix == suffix:
            yield path


def markdown_files(root: Path) -> list[Path]:
    """Every `*.md` of the repository under `root`, outside environments and caches."""
    return list(_walk(root, ".md"))


def code_files(root: Path) -> list[Path]:
    """Every Python file under the code roots; every TOML, JSON, shell and unit file."""
    python = [p for top in CODE_ROOTS if (root / top).exists() for p in _walk(root / top, ".py")]
    return python + [p for suffix in (*_HASH_COMMENTED, ".json") for p in _walk(root, suffix)]


def document_names(text: str) -> list[str]:
    """Every document (a word ending in `.md`) named in `text`, in order."""
    return _DOC_NAME.findall(text)


def document_problem(
    name: str, root: Path, documents: Iterable[str], here: Path | None = None
) -> str | None:
    """Why the document `name` (named in a file in folder `here`) is not in the repository."""
    if name.startswith(GENERATED) or (root / name).is_file():
        return None
    if (
        here is not None
        and (here / name).resolve().is_relative_to(root.resolve())
        and (here / name).is_file()
    ):
        return None
    tail = "/" + name
    if any(doc == name or doc.endswith(tail) for doc in documents):
        return None
    return f"names {name}: no such document in the repository"


def text_problems(
    text: str, root: Path, documents: Iterable[str], here: Path | None = None
) -> list[str]:
    """Outside design notes and missing documents named in one line of prose or comment."""
    problems = [
        f"cites {m.group(0).strip()!r}: a note outside the repository"
        for m in _OUTSIDE_NOTE.finditer(text)
    ]
    for named in document_names(text):
        problem = document_problem(named, root, documents, here)
        if problem is not None:
            problems.append(problem)
    return problems


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _comments_and_docstrings(source: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every comment and every docstring line of a module."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            first = body[0].value.lineno
            for offset, line in enumerate(body[0].value.value.splitlines()):
                yield first + offset, line


def _hash_comments(source: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every whole-line or trailing `#` comment (TOML, shell, units)."""
    for line_no, line in enumerate(source.splitlines(), start=1):
        stripped = line.lstrip()
        if stripped.startswith("#"):
            yield line_no, stripped
        elif " # " in line:
            yield line_no, line.split(" # ", 1)[1]


def _cited_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a code or configuration file that may cite a document."""
    source = path.read_text(encoding="utf-8")
    if ".md" not in source and _OUTSIDE_NOTE.search(source) is None:
        return iter(())  # nothing to cite: spare the (slow) tokenizer
    if path.suffix == ".py":
        return _comments_and_docstrings(source)
    if path.suffix == ".json":
        return enumerate(source.splitlines(), start=1)
    return _hash_comments(source)


def check_markdown(docs: Iterable[Path], root: Path) -> list[str]:
    """Dangling references, broken links and missing named documents in markdown files."""
    known = [_relative(d, root) for d in markdown_files(root)]
    problems: list[str] = []
    for doc in sorted(docs):
        name = _relative(doc, root)
        text = doc.read_text(encoding="utf-8")
        problems.extend(reference_and_link_problems(doc, text, root, name))
        for line_no, line in enumerate(text.splitlines(), start=1):
            problems.extend(
                f"{name}:{line_no}: {problem}"
                for problem in text_problems(_CITED.sub(" ", line), root, known, doc.parent)
            )
            problems.extend(
                f"{name}:{line_no}: cites {m.group(0).strip()!r}: a note outside the repository"
                for span in _BACKTICKED.findall(line)
                for m in _OUTSIDE_NOTE.finditer(span)
            )
    return problems


def check_code(files: Iterable[Path], root: Path) -> list[str]:
    """Comments, docstrings and JSON text that cite what the repository does not hold."""
    known = [_relative(d, root) for d in markdown_files(root)]
    problems: list[str] = []
    for path in sorted(files):
        name = _relative(path, root)
        for line_no, text in _cited_lines(path):
            problems.extend(
                f"{name}:{line_no}: {problem}"
                for problem in text_problems(text, root, known, path.parent)
            )
    return sorted(set(problems))


def test_every_markdown_file_cites_only_what_exists() -> None:
    """README, docs/** and every other page: references, links and named documents resolve."""
    docs = markdown_files(ROOT)
    assert len(docs) >= 10, "the walk found too few pages to be looking at the repository"
    assert ROOT / "README.md" in docs
    assert ROOT / "docs" / "architecture.md" in docs
    assert check_markdown(docs, ROOT) == []


def test_every_comment_and_docstring_names_only_documents_that_exist() -> None:
    """No code comment or docstring sends the reader to a document outside the repository."""
    files = code_files(ROOT)
    assert len(files) >= 100, "the walk found too few modules to be looking at the repository"
    assert check_code(files, ROOT) == []


def test_code_names_documents_at_all() -> None:
    """The rule is not vacuous: the code does point readers at the docs."""
    named = [
        n
        for path in code_files(ROOT)
        for _, text in _cited_lines(path)
        for n in document_names(text)
    ]
    assert len(named) >= 20


# --- the checker has teeth: planted bad references are caught --------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny repository: a README, one page in docs/, one module in src/ and one in tests/."""
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "docs" / "guide" / "lab.md").write_text("# lab\n")
    (tmp_path / "README.md").write_text("# readme\n")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "vendored.md").write_text("`src/nowhere.py`\n")
    return tmp_path


def test_walk_skips_environments_and_finds_nested_pages(tree: Path) -> None:
    """Pages in sub-folders count; a virtual environment's files do not."""
    assert [_relative(p, tree) for p in markdown_files(tree)] == [
        "README.md",
        "docs/guide/lab.md",
    ]


def test_markdown_checker_accepts_what_resolves(tree: Path) -> None:
    """Root paths, bare and tail names, links, generated outputs and commands all pass."""
    doc = tree / "docs" / "page.md"
    doc.write_text(
        "See `src/pkg/mod.py::X`, `docs/guide/`, [lab](guide/lab.md), [up](../README.md),"
        " lab.md, guide/lab.md, ../README.md, docs/guide/lab.md, `bench/results/x.md`"
        " and `nox -s ci`.\n"
    )
    assert check_markdown([doc], tree) == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("Proven by `src/pkg/gone.py`.", "src/pkg/gone.py: no such file"),
        ("Proven by `src/pkg/mod.py::Y`.", "Y is not defined in src/pkg/mod.py"),
        ("See `docs/missing.md`.", "docs/missing.md: no such file"),
        ("See [design](../notes/DESIGN.md).", "link to ../notes/DESIGN.md"),
        ("The design notes (DESIGN.md) say so.", "names DESIGN.md: no such"),
        ("See other/lab.md.", "names other/lab.md: no such document"),
        ("The defaults are DESIGN §7.", "cites 'DESIGN §': a note outside"),
        ("Race-free (`GUIDE habit 5`).", "cites 'GUIDE habit 5': a note outside"),
    ],
)
def test_markdown_checker_rejects_a_planted_dangling_citation(
    tree: Path, line: str, reason: str
) -> None:
    """A page anywhere in the repository that cites a missing path or document fails."""
    doc = tree / "docs" / "page.md"
    doc.write_text(f"# page\n{line}\n")
    problems = check_markdown([doc], tree)
    assert len(problems) == 1, problems
    assert problems[0].startswith("docs/page.md:2: ")
    assert reason in problems[0]


@pytest.mark.parametrize(
    "source",
    [
        '"""Module.\n\nThe rules are in GUIDE.md."""\n',
        "def f() -> None:\n    pass  # see ../notes/PITFALLS.md, pitfall 2\n",
        'class C:\n    """Owns the cache.\n\n    See docs/nowhere.md.\n    """\n',
        "X = 1  # the defaults are DESIGN §7\n",
        '"""Race-free by construction (GUIDE habit 5)."""\n',
    ],
)
def test_code_checker_rejects_a_comment_naming_a_missing_document(tree: Path, source: str) -> None:
    """A comment or docstring that names a document the repository lacks fails."""
    module = tree / "src" / "pkg" / "bad.py"
    module.write_text(source)
    problems = check_code([module], tree)
    assert len(problems) == 1, problems
    assert problems[0].startswith("src/pkg/bad.py:")
    assert "no such document" in problems[0] or "a note outside the repository" in problems[0]


def test_code_checker_reads_toml_comments(tree: Path) -> None:
    """A configuration file's comment is held to the same rules; its values are data."""
    config = tree / "budgets.toml"
    config.write_text(
        '# targets: docs/guide/lab.md\n[a]\nx = 1  # DESIGN §8\npage = "gone.md"\n'
        "# see missing.md\n"
    )
    assert check_code([config], tree) == [
        "budgets.toml:3: cites 'DESIGN §': a note outside the repository",
        "budgets.toml:5: names missing.md: no such document in the repository",
    ]


def test_code_checker_reads_json_and_unit_files(tree: Path) -> None:
    """An API description or a unit file's comment that names a missing page fails."""
    (tree / "api.json").write_text('{\n  "description": "the language: see docs/policy.md"\n}\n')
    (tree / "x.service").write_text("[Unit]\n# see docs/guide/lab.md\n# and docs/gone.md\n")
    assert check_code(code_files(tree), tree) == [
        "api.json:2: names docs/policy.md: no such document in the repository",
        "x.service:3: names docs/gone.md: no such document in the repository",
    ]


def test_code_checker_accepts_existing_documents_and_ignores_plain_strings(tree: Path) -> None:
    """Named documents that exist pass; a string that is not a docstring is data, not a citation."""
    module = tree / "tests" / "test_x.py"
    module.write_text(
        '"""Checks docs/guide/lab.md and lab.md."""\n'
        "# README.md is the front page\n"
        'PAGE = "missing.md"\n'
    )
    assert check_code([module], tree) == []
    assert check_code(code_files(tree), tree) == []
