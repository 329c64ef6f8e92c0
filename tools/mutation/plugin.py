"""pytest plugin the gate loads (`-p tools.mutation.plugin`): records what each test did.

It writes JSON to the file named by RUSTYNET_MUTANTS_REPORT: the outcome of every test node
(`passed`, `failed` or `skipped`) and the file the `rustynet` package was imported from, so the
gate can prove the tests ran against the mutated copy and not against the checkout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPORT_ENV = "RUSTYNET_MUTANTS_REPORT"
_RANK = {"passed": 0, "skipped": 1, "failed": 2}
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the worst outcome of a test's setup, call and teardown."""
    outcome = report.outcome
    previous = _outcomes.get(report.nodeid, "passed")
    if _RANK[outcome] >= _RANK[previous]:
        _outcomes[report.nodeid] = outcome


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module that fails to import is a failure of every test it would have held."""
    if report.failed:
        _outcomes[report.nodeid] = "failed"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the report (also when the session ends early, as with -x)."""
    del session
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    package = sys.modules.get("rustynet")
    Path(target).write_text(
        json.dumps(
            {
                "outcomes": _outcomes,
                "exitstatus": int(exitstatus),
                "rustynet": getattr(package, "__file__", None),
            }
        ),
        encoding="utf-8",
    )
