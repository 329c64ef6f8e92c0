"""tests/mutation/mutants.toml: load the entries, find each target, apply each mutation.

A mutant is addressed by `path::qualname` plus an exact piece of source text (`find`), never by
line number: the qualname is looked up with `ast` (a def, class or simple assignment; dotted for
nesting), and `find` must occur exactly once inside that node's source. Anything else is a stale
mutant, which the gate reports as a failure, never as a skip.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTANTS_FILE = ROOT / "tests" / "mutation" / "mutants.toml"

# Checkout folder -> the same code's place in the package copy the gate imports.
PACKAGE_ROOTS = {"src/rustynet/": "rustynet/", "adapters/": "rustynet/adapters/"}

_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_TEST_ID = re.compile(r"tests/[\w/]+\.py(?:::\w+)+")
_REQUIRED = {"id": str, "target": str, "find": str, "replace": str, "tests": list, "why": str}
_OPTIONAL = {"timeout": (int, float)}
DEFAULT_TIMEOUT = 120.0


class SpecError(Exception):
    """The mutant file itself is malformed (bad key, type, id or duplicate)."""


class StaleMutantError(Exception):
    """The mutant's target or pattern no longer matches the code exactly once."""


@dataclass(frozen=True)
class Mutant:
    """One curated security mutation and the tests that must notice it."""

    id: str
    target: str
    find: str
    replace: str
    tests: tuple[str, ...]
    why: str
    timeout: float = DEFAULT_TIMEOUT

    @property
    def path(self) -> str:
        """The target file, relative to the checkout (`src/rustynet/...` or `adapters/...`)."""
        return self.target.partition("::")[0]

    @property
    def qualname(self) -> str:
        """The dotted name of the def, class or assignment the pattern lives in."""
        return self.target.partition("::")[2]

    @property
    def copy_path(self) -> str:
        """Where the target file lives in the package copy (`rustynet/...`)."""
        for prefix, copied in PACKAGE_ROOTS.items():
            if self.path.startswith(prefix):
                return copied + self.path.removeprefix(prefix)
        raise SpecError(f"{self.id}: target {self.path} is outside {sorted(PACKAGE_ROOTS)}")


def _entry(index: int, raw: object) -> Mutant:
    where = f"mutant #{index + 1}"
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: not a table")
    where = f"mutant {raw.get('id', f'#{index + 1}')!r}"
    unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
    for key, kind in _REQUIRED.items():
        if not isinstance(raw.get(key), kind):
            raise SpecError(f"{where}: {key!r} must be a {kind.__name__}")
    if "timeout" in raw and not (
        isinstance(raw["timeout"], int | float) and not isinstance(raw["timeout"], bool)
    ):
        raise SpecError(f"{where}: 'timeout' must be a number of seconds")
    mutant = Mutant(
        id=raw["id"],
        target=raw["target"],
        find=raw["find"],
        replace=raw["replace"],
        tests=tuple(raw["tests"]),
        why=raw["why"],
        timeout=float(raw.get("timeout", DEFAULT_TIMEOUT)),
    )
    if not _ID.fullmatch(mutant.id):
        raise SpecError(f"{where}: id must be kebab-case ([a-z0-9-])")
    if "::" not in mutant.target or not mutant.qualname:
        raise SpecError(f"{where}: target must be 'path.py::qualname'")
    mutant.copy_path  # noqa: B018 - raises SpecError for a target outside the package
    if not mutant.find or mutant.find == mutant.replace:
        raise SpecError(f"{where}: find must be non-empty and differ from replace")
    if not mutant.tests or not all(
        isinstance(t, str) and _TEST_ID.fullmatch(t) for t in mutant.tests
    ):
        raise SpecError(f"{where}: tests must be pytest node ids 'tests/...py::test_name'")
    if not mutant.why.strip():
        raise SpecError(f"{where}: why must say what the mutation breaks")
    return mutant


def load(path: Path = MUTANTS_FILE) -> list[Mutant]:
    """Every mutant in the file, validated; ids are unique."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: {exc}") from exc
    if set(data) - {"mutant"}:
        raise SpecError(f"{path}: only [[mutant]] tables are allowed, found {sorted(data)}")
    raw = data.get("mutant", [])
    if not isinstance(raw, list):
        raise SpecError(f"{path}: 'mutant' must be an array of tables ([[mutant]])")
    mutants = [_entry(i, entry) for i, entry in enumerate(raw)]
    seen: set[str] = set()
    for mutant in mutants:
        if mutant.id in seen:
            raise SpecError(f"duplicate mutant id {mutant.id!r}")
        seen.add(mutant.id)
    return mutants


def _named(node: ast.AST) -> list[tuple[str, ast.AST]]:
    names: list[tuple[str, ast.AST]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append((child.name, child))
        elif isinstance(child, ast.Assign):
            names.extend((t.id, child) for t in child.targets if isinstance(t, ast.Name))
        elif isinstance(child, ast.AnnAssign) and isinstance(child.target, ast.Name):
            names.append((child.target.id, child))
    return names


def _offset(lines: list[str], lineno: int, col_bytes: int) -> int:
    """Character offset in the joined text of (1-based line, UTF-8 byte column)."""
    line = lines[lineno - 1]
    col = len(line.encode("utf-8")[:col_bytes].decode("utf-8"))
    return sum(len(x) for x in lines[: lineno - 1]) + col


def locate(source: str, qualname: str, filename: str = "<mutant target>") -> tuple[int, int]:
    """The character span of the def/class/assignment `qualname` (decorators included)."""
    node: ast.AST = ast.parse(source, filename=filename)
    for part in qualname.split("."):
        matches = [child for name, child in _named(node) if name == part]
        if len(matches) != 1:
            found = "not defined" if not matches else f"defined {len(matches)} times"
            raise StaleMutantError(f"{qualname}: {part!r} is {found} in {filename}")
        node = matches[0]
    assert isinstance(node, ast.stmt)  # _named only yields statements
    assert node.end_lineno is not None
    assert node.end_col_offset is not None
    first = node
    decorators = getattr(node, "decorator_list", [])
    if decorators:
        first = min(decorators, key=lambda d: (d.lineno, d.col_offset))
    lines = source.splitlines(keepends=True)
    return (
        _offset(lines, first.lineno, first.col_offset),
        _offset(lines, node.end_lineno, node.end_col_offset),
    )


def mutate(mutant: Mutant, source: str) -> str:
    """`source` mutated; StaleMutantError unless `find` occurs once in the target."""
    start, end = locate(source, mutant.qualname, mutant.path)
    segment = source[start:end]
    count = segment.count(mutant.find)
    if count != 1:
        raise StaleMutantError(
            f"{mutant.target}: find text occurs {count} times in it (must be exactly once)"
        )
    at = start + segment.index(mutant.find)
    mutated = source[:at] + mutant.replace + source[at + len(mutant.find) :]
    try:
        ast.parse(mutated, filename=mutant.path)
    except SyntaxError as exc:
        raise SpecError(f"{mutant.id}: the mutated file does not parse: {exc}") from exc
    return mutated


def mutate_checkout(mutant: Mutant, root: Path = ROOT) -> str:
    """The mutated text of the target file as it is in the checkout at `root`."""
    path = root / mutant.path
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StaleMutantError(f"{mutant.target}: {exc.strerror}: {mutant.path}") from exc
    return mutate(mutant, source)
