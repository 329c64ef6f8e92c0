"""Gate: no WireGuard vocabulary in the domain, the ports, the policy schema or the API schema.

The one rule: WireGuard words stay inside the WireGuard adapter. The core says `TunnelKey`,
`overlay_prefixes`, `underlay_endpoints`; the adapter maps those to its protocol
(the hexagon rules: docs/development.md).

What is scanned:
- Python files (`*.py`, `*.pyi`): every identifier, attribute name, string literal (docstrings
  included) and comment, token by token;
- data and schema files (`*.json`, `*.yaml`, `*.yml`, `*.toml`): every line of text.

Denied words (case-insensitive; camelCase and acronyms are split first, so `WgConfig`,
`wgPeer` and `AllowedIPs` count):
- `wireguard` (also `wire_guard`, `wire-guard`);
- `wg` as a word or identifier part: `wg`, `wg_`, `_wg`, `wg0`, `wg-quick` (not inside a word
  such as `awg`);
- `allowed_ips` / `allowedips` / `allowed-ips`, `preshared` / `pre_shared`, `listen_port` /
  `listenport`, `fwmark`.

`x25519` is the name of our first tunnel key scheme, so the word itself is allowed: the scheme
tag `"x25519"`, the enum member `TunnelKeyScheme.X25519` and the module name `x25519` (from
`cryptography`, which import-linter confines to domain/keys.py and domain/tokens.py). What is
denied is x25519 used as a TYPE:
1. a class whose name contains `x25519` (any case);
2. in an annotation, an `isinstance`/`issubclass` target, an `except` clause or a `case` class
   pattern: any identifier or forward-reference string containing `x25519` other than exactly
   `x25519`/`X25519` (so `Literal[TunnelKeyScheme.X25519]` is fine, `X25519PrivateKey` is not);
3. anywhere else (including `from ... import` names and data files): a CamelCase type name
   `X25519<Capital>...` such as `X25519PrivateKey` - except in `domain/keys.py`, inside a
   function body, as the callee of a call (`x25519.X25519PrivateKey.from_private_bytes(...)`):
   that module maps the scheme tag to the primitive, and the call leaves no type behind.

Escape hatch: a line ending in `# vocab: allow - <reason>` is not reported. The reason is
required (a bare `# vocab: allow` is itself a finding); use it only where the word names
something outside our model, such as a quoted third-party error text.

Scope: `DEFAULT_PATHS` (domain, ports, application; add the policy and control-API schema files
when they exist). The composition root (bootstrap) and the adapters name the WireGuard adapter
and are not scanned.

CLI: `python -m tools.gates.vocabulary [PATH...]` (default `DEFAULT_PATHS`) prints
`file:line: word (where)` for every finding and exits 1, or exits 0 when clean; 2 when a path
does not exist.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tools.gates.common import run_gate, source_files

ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_PATHS: Final = tuple(
    ROOT / "src" / "rustynet" / layer for layer in ("domain", "ports", "application")
)
PYTHON_SUFFIXES: Final = frozenset({".py", ".pyi"})
DATA_SUFFIXES: Final = frozenset({".json", ".yaml", ".yml", ".toml"})

_WORDS: Final = (
    ("wireguard", re.compile(r"wire[_-]?guard", re.IGNORECASE)),
    ("allowed_ips", re.compile(r"allowed[_-]?ips", re.IGNORECASE)),
    ("preshared", re.compile(r"pre[_-]?shared", re.IGNORECASE)),
    ("listen_port", re.compile(r"listen[_-]?port", re.IGNORECASE)),
    ("fwmark", re.compile(r"fw[_-]?mark", re.IGNORECASE)),
)
# Matched after `_split_camel`, so `wgPeer` and `WGConfig` count but `awg` does not.
_WG: Final = re.compile(r"(?<![a-z])wg(?![a-z])", re.IGNORECASE)
_TYPE_NAME: Final = re.compile(r"X25519[A-Z]\w*")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_]\w*")
_ESCAPE: Final = re.compile(r"#\s*vocab:\s*allow\b(.*)$", re.IGNORECASE)
_STRING_TOKENS: Final = frozenset(
    {tokenize.NAME, tokenize.STRING, tokenize.COMMENT}
    | ({tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set())
)


@dataclass(frozen=True, order=True)
class Finding:
    """One denied word at one line."""

    path: Path
    line: int
    word: str
    where: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.word} ({self.where})"


def _split_camel(text: str) -> tuple[str, list[int]]:
    """`text` with `_` at camelCase/acronym boundaries, and each output char's source offset."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        prev, nxt = text[i - 1 : i], text[i + 1 : i + 2]
        lower_to_upper = ch.isupper() and (prev.islower() or prev.isdigit())
        acronym_end = ch.isupper() and prev.isupper() and nxt.islower()
        if lower_to_upper or acronym_end:
            out.append("_")
            origin.append(i)
        out.append(ch)
        origin.append(i)
    return "".join(out), origin


def _words_in(text: str) -> Iterator[tuple[int, str]]:
    """(offset in `text`, denied word) for every denied word in `text`."""
    for word, pattern in _WORDS:
        for match in pattern.finditer(text):
            yield match.start(), word
    split, origin = _split_camel(text)
    for match in _WG.finditer(split):
        yield origin[match.start()], "wg"


def _is_type_like(identifier: str) -> bool:
    return "x25519" in identifier.lower() and identifier not in {"x25519", "X25519"}


def _escape_lines(lines: Sequence[str], path: Path) -> tuple[set[int], list[Finding]]:
    allowed: set[int] = set()
    bad: list[Finding] = []
    for number, line in enumerate(lines, start=1):
        match = _ESCAPE.search(line)
        if match is None:
            continue
        reason = match.group(1).strip().lstrip("-:—").strip()
        if len(reason) < 3:
            bad.append(Finding(path, number, "vocab: allow", "escape without a reason"))
        else:
            allowed.add(number)
    return allowed, bad


def _token_findings(source: str, path: Path) -> Iterator[Finding]:
    kinds = {tokenize.NAME: "identifier", tokenize.STRING: "string", tokenize.COMMENT: "comment"}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _STRING_TOKENS:
            continue
        where = kinds.get(token.type, "string")
        for offset, word in _words_in(token.string):
            line = token.start[0] + token.string.count("\n", 0, offset)
            yield Finding(path, line, word, where)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _type_positions(tree: ast.AST) -> Iterator[ast.AST]:
    """Expressions in type position: annotations, isinstance targets, except types, patterns."""
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            yield node.annotation
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            yield node.returns
        elif isinstance(node, ast.ExceptHandler) and node.type is not None:
            yield node.type
        elif isinstance(node, ast.MatchClass):
            yield node.cls
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"isinstance", "issubclass"}
            and len(node.args) == 2
        ):
            yield node.args[1]


def _identifiers(expr: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(expr):
        if isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for name in _IDENTIFIER.findall(node.value):
                yield node.lineno, name


def _exempt_call(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True when `node` is the callee chain of a call inside a function body."""
    chain = node
    parent = parents.get(chain)
    while isinstance(parent, ast.Attribute) and parent.value is chain:
        chain, parent = parent, parents.get(parent)
    if not (isinstance(parent, ast.Call) and parent.func is chain):
        return False
    ancestor = parents.get(parent)
    while ancestor is not None:
        if isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
        ancestor = parents.get(ancestor)
    return False


def _type_findings(tree: ast.AST, path: Path) -> Iterator[Finding]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and "x25519" in node.name.lower():
            yield Finding(path, node.lineno, node.name, "x25519 as a type: class name")
    for expr in _type_positions(tree):
        for line, name in _identifiers(expr):
            if _is_type_like(name):
                yield Finding(path, line, name, "x25519 as a type: type position")
    yield from _type_name_findings(tree, path)


def _type_name_findings(tree: ast.AST, path: Path) -> Iterator[Finding]:
    parents = _parents(tree)
    maps_scheme = path.parts[-2:] == ("domain", "keys.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            line, names = node.lineno, [node.id]
        elif isinstance(node, ast.Attribute):
            line, names = node.lineno, [node.attr]
        elif isinstance(node, ast.ImportFrom):
            line, names = node.lineno, [a.asname or a.name for a in node.names]
            names += [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if not _TYPE_NAME.fullmatch(name):
                continue
            if maps_scheme and _exempt_call(node, parents):
                continue
            yield Finding(path, line, name, "x25519 as a type: type name")


def scan_python(source: str, path: Path) -> list[Finding]:
    """Findings in one Python source text (`path` is used for reporting and the keys.py rule)."""
    lines = source.splitlines()
    allowed, found = _escape_lines(lines, path)
    try:
        tree = ast.parse(source, filename=str(path))
        found += [*_token_findings(source, path), *_type_findings(tree, path)]
    except (SyntaxError, tokenize.TokenError) as exc:
        return [Finding(path, getattr(exc, "lineno", None) or 1, "?", f"cannot parse: {exc}")]
    return sorted({f for f in found if f.line not in allowed or f.where.startswith("escape")})


def scan_text(text: str, path: Path) -> list[Finding]:
    """Findings in a data or schema file, line by line."""
    lines = text.splitlines()
    allowed, found = _escape_lines(lines, path)
    for number, line in enumerate(lines, start=1):
        if number in allowed:
            continue
        found += [Finding(path, number, word, "text") for _, word in _words_in(line)]
        found += [
            Finding(path, number, name, "x25519 as a type: type name")
            for name in _TYPE_NAME.findall(line)
        ]
    return sorted(set(found))


def scan_paths(paths: Iterable[Path]) -> list[Finding]:
    """Findings in every Python and data file under `paths` (files or directories)."""
    found: list[Finding] = []
    for root in paths:
        for path in source_files(root, PYTHON_SUFFIXES | DATA_SUFFIXES):
            text = path.read_text(encoding="utf-8")
            if path.suffix in PYTHON_SUFFIXES:
                found += scan_python(text, path)
            else:
                found += scan_text(text, path)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.gates.vocabulary",
        description="Fail on WireGuard vocabulary in the core and its schemas.",
    )
    parser.add_argument(
        "paths", nargs="*", type=Path, help="files or directories (default: the core layers)"
    )
    args = parser.parse_args(argv)
    cwd = Path.cwd()
    paths: list[Path] = args.paths or [
        p.relative_to(cwd) if p.is_relative_to(cwd) else p for p in DEFAULT_PATHS
    ]
    return run_gate("vocabulary", paths, scan_paths, "WireGuard word(s) outside the adapter")


if __name__ == "__main__":
    sys.exit(main())
