"""The domain depends on nothing outside itself, not even for type checking.

import-linter ignores imports under `if TYPE_CHECKING:` (they run nothing), so this walks every
import statement of the domain, wherever it sits: a Protocol the domain consumes (`Entropy`) is
defined in the domain and named by the port, never the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = ROOT / "src" / "rustynet" / "domain"
OUTER = ("rustynet.ports", "rustynet.application", "rustynet.adapters", "rustynet.bootstrap")


def _imported(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _outward(name: str) -> bool:
    return any(name == outer or name.startswith(f"{outer}.") for outer in OUTER)


def test_no_domain_module_imports_an_outer_layer_even_for_type_checking() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted(DOMAIN.rglob("*.py"))
        for name in _imported(ast.parse(path.read_text(encoding="utf-8")))
        if _outward(name)
    ]
    assert found == []


def test_the_check_sees_an_import_under_type_checking() -> None:
    planted = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rustynet.ports.x import Y\n"
    )
    assert any(_outward(name) for name in _imported(ast.parse(planted)))
