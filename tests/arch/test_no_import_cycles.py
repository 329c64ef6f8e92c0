"""No import cycle between the modules of the installed `rustynet` package (adapters included).

The graph is grimp's (the library import-linter runs on), built from source without importing
anything. A cycle is a strongly connected component of more than one module: each of its
modules reaches every other one through direct imports.

Two choices, so the check means what a reader of the layout expects:

* Imports under `if TYPE_CHECKING:` count. A cycle that only the type checker sees still ties
  two modules into one unit a reader has to understand together, and it is the usual first
  step to a runtime cycle (the next edit moves the name out of the guard).
* Package faces get no exemption. grimp records an import of `pkg.child` as an edge to
  `pkg.child` alone, not to `pkg` (whose `__init__` Python runs first): a face that re-exports
  its children only adds edges face -> child, which cannot close a cycle. A child that imports
  its own package's face (`from rustynet.domain.path import ...` inside `domain/path/`) does
  close one, and at runtime it reads a half-initialised module, so it is reported.

The negative tests plant each kind of cycle in a tiny package in tmp_path and check it is
reported, and that a face re-exporting its children is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from pathlib import Path

import grimp
import pytest


def import_cycles(package: str) -> list[list[str]]:
    """Every strongly connected component of more than one module in `package`, sorted."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=False, cache_dir=None)
    modules = frozenset(graph.modules)
    edges = {m: frozenset(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    return sorted(sorted(c) for c in _components(edges) if len(c) > 1)


def _components(edges: Mapping[str, Set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative (no recursion limit on deep chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(root: str) -> None:
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(component)

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_rustynet_has_no_import_cycle() -> None:
    assert import_cycles("rustynet") == []


def _plant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, files: dict[str, str]
) -> str:
    for relative, text in files.items():
        path = tmp_path / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_planted_cycle_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _plant(
        tmp_path,
        monkeypatch,
        "cycletoy_runtime",
        {
            "__init__.py": "",
            "a.py": "from cycletoy_runtime import b\n",
            "b.py": "from cycletoy_runtime.c import X\n",
            "c.py": "from cycletoy_runtime import a\nX = 1\n",
            "d.py": "from cycletoy_runtime import a\n",
        },
    )
    assert import_cycles(package) == [
        ["cycletoy_runtime.a", "cycletoy_runtime.b", "cycletoy_runtime.c"]
    ]


def test_a_type_checking_only_cycle_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _plant(
        tmp_path,
        monkeypatch,
        "cycletoy_typing",
        {
            "__init__.py": "",
            "a.py": "from cycletoy_typing.b import B\nclass A: ...\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from cycletoy_typing.a import A\n"
                "class B: ...\n"
            ),
        },
    )
    assert import_cycles(package) == [["cycletoy_typing.a", "cycletoy_typing.b"]]


def test_a_face_reexporting_its_children_is_no_cycle_but_a_child_importing_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    face = (
        '"""The public face."""\n'
        "from cycletoy_face.inner.one import ONE\n"
        "from cycletoy_face.inner.two import TWO\n"
        "__all__ = ['ONE', 'TWO']\n"
    )
    package = _plant(
        tmp_path,
        monkeypatch,
        "cycletoy_face",
        {
            "__init__.py": "",
            "inner/__init__.py": face,
            "inner/one.py": "ONE = 1\n",
            "inner/two.py": "from cycletoy_face.inner.one import ONE\nTWO = ONE + 1\n",
            "user.py": "from cycletoy_face.inner import ONE, TWO\n",
        },
    )
    assert import_cycles(package) == []
    (tmp_path / "cycletoy_face" / "inner" / "two.py").write_text(
        "from cycletoy_face.inner import ONE\nTWO = ONE + 1\n", encoding="utf-8"
    )
    assert import_cycles(package) == [["cycletoy_face.inner", "cycletoy_face.inner.two"]]
