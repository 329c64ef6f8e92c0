"""In CI a PostgreSQL that cannot be started fails the run; elsewhere it skips with a reason.

`.ci/run` exports `CI=true`; `tests/postgres.py::check_prerequisites` (called first by the
`postgres_cluster` fixture) then fails instead of skipping, so the store contract and the
redemption tests cannot pass on PostgreSQL by not running. A cluster that is there but fails
to start raises in `start_cluster` (an error, in CI or not).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.postgres
from tests.postgres import check_prerequisites, required

OUTCOMES = (pytest.fail.Exception, pytest.skip.Exception)  # caught here, so both are seen


@pytest.fixture
def no_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.postgres, "PG_BIN", tmp_path)  # no initdb, no pg_ctl here


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
@pytest.mark.usefixtures("no_binaries")
def test_ci_fails_when_postgresql_is_missing(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(OUTCOMES) as outcome:  # a skip must not end this test as skipped
        check_prerequisites()
    assert isinstance(outcome.value, pytest.fail.Exception), repr(outcome.value)
    assert "CI requires PostgreSQL" in str(outcome.value)


@pytest.mark.parametrize("ci", [None, "", "false"])
@pytest.mark.usefixtures("no_binaries")
def test_outside_ci_a_missing_postgresql_skips_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(OUTCOMES) as outcome:
        check_prerequisites()
    assert isinstance(outcome.value, pytest.skip.Exception), repr(outcome.value)
    assert "PostgreSQL 15 binaries not found" in str(outcome.value)


def test_the_ci_entry_point_sets_ci() -> None:
    """`.ci/run` exports CI=true before it runs the suite."""
    script = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    lines = [line.split("#")[0].strip() for line in script.splitlines()]
    assert lines.index("export CI=true") < next(
        i for i, line in enumerate(lines) if "nox -s ci" in line
    )


def test_required_reads_the_ci_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert required()
    monkeypatch.setenv("CI", "false")
    assert not required()
