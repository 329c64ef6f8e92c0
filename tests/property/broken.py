"""Negative controls: run a property test against a deliberately broken variant, which must fail.

Every state machine in this folder ships broken variants (a check removed) and proves with these
helpers that the property test catches each one, so a green property test means something.
Detection is the point, not a minimal example: the runs are derandomized, skip shrinking and
stop at the first bug, which keeps each control fast and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


def broken_settings(*, max_examples: int = 300, stateful_step_count: int = 50) -> settings:
    """Fixed settings for a negative control: deterministic, no shrinking, first bug wins."""
    return settings(
        max_examples=max_examples,
        stateful_step_count=stateful_step_count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def assert_machine_catches(
    machine_cls: type[RuleBasedStateMachine],
    *,
    match: str | None = None,
    max_examples: int = 300,
    stateful_step_count: int = 50,
) -> None:
    """Run `machine_cls` (wired to a broken variant): its invariants must raise AssertionError."""
    run_settings = broken_settings(
        max_examples=max_examples, stateful_step_count=stateful_step_count
    )
    with pytest.raises(AssertionError, match=match):
        run_state_machine_as_test(machine_cls, settings=run_settings)


def assert_property_catches(test: Callable[[], None], *, match: str | None = None) -> None:
    """Run a `@given` test checking a broken variant (decorate it with `broken_settings()`)."""
    with pytest.raises(AssertionError, match=match):
        test()
