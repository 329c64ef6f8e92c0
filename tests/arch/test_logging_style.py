"""One logging style in src/ and adapters/: structlog bound key-values, never stdlib `extra=`.

Our code logs with `_log = structlog.get_logger(name)` and `_log.info("event.name", key=value)`.
A stdlib `logging.getLogger(...)` or a logger call with `extra={...}` is the other style this
gate refuses; `adapters/logging.py`, the one place that configures logging, is the only
exception.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = (ROOT / "src" / "rustynet", ROOT / "adapters")
ALLOWED = frozenset({ROOT / "adapters" / "logging.py"})
LOG_METHODS = frozenset({
    "debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log", "msg",
})  # fmt: skip


def style_violations(source: str) -> list[str]:
    """`line: what` for each stdlib-style logging use in `source`."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "logging":
            found.extend(
                f"{node.lineno}: from logging import getLogger"
                for alias in node.names
                if alias.name == "getLogger"
            )
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "getLogger":
            found.append(f"{node.lineno}: {ast.unparse(func)}(...)")
        elif isinstance(func, ast.Name) and func.id == "getLogger":
            found.append(f"{node.lineno}: getLogger(...)")
        if isinstance(func, ast.Attribute) and func.attr in LOG_METHODS:
            found.extend(
                f"{node.lineno}: {ast.unparse(func)}(..., extra=...)"
                for kw in node.keywords
                if kw.arg == "extra"
            )
    return sorted(found, key=lambda hit: int(hit.split(":", 1)[0]))


def test_src_and_adapters_log_through_structlog_key_values_only() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{hit}"
        for tree in TREES
        for path in sorted(tree.rglob("*.py"))
        if path not in ALLOWED
        for hit in style_violations(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "log with structlog.get_logger(name) and key=value fields"


def test_the_gate_catches_each_stdlib_style_form() -> None:
    planted = (
        "import logging\n"
        "from logging import getLogger\n"
        "_log = logging.getLogger('rustynet.http')\n"
        "_other = getLogger(__name__)\n"
        "_log.warning('http.refused', extra={'route': '/v1/enroll'})\n"
        "self.logger.log(30, 'x', extra=fields)\n"
    )
    assert style_violations(planted) == [
        "2: from logging import getLogger",
        "3: logging.getLogger(...)",
        "4: getLogger(...)",
        "5: _log.warning(..., extra=...)",
        "6: self.logger.log(..., extra=...)",
    ]


def test_the_gate_passes_the_structlog_style() -> None:
    planted = (
        "import structlog\n"
        "_log = structlog.get_logger('rustynet.http')\n"
        "_log.warning('http.refused', route='/v1/enroll', status=400)\n"
        "options = dict(extra={'a': 1})\n"  # not a logger call
    )
    assert style_violations(planted) == []


def test_the_exempt_module_exists() -> None:
    assert all(path.is_file() for path in ALLOWED)
