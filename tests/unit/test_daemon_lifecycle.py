"""The daemon's lifecycle table: the transitions the daemon makes are allowed, others raise."""

from __future__ import annotations

import pytest

from rustynet.application.node.lifecycle import (
    TRANSITIONS,
    DaemonState,
    IllegalTransitionError,
    Lifecycle,
)

S = DaemonState


def test_a_new_daemon_is_not_enrolled() -> None:
    assert Lifecycle().state is S.NOT_ENROLLED


@pytest.mark.parametrize(
    "path",
    [
        # join, run, `rustynet down`, `rustynet up`
        (S.STARTING, S.RUNNING, S.DOWN, S.STARTING, S.RUNNING),
        # a start-up that fails, then `down` and `up`
        (S.STARTING, S.FAILED, S.DOWN, S.STARTING, S.RUNNING),
        # revoked, then re-enrolled
        (S.STARTING, S.RUNNING, S.REVOKED, S.NOT_ENROLLED, S.STARTING, S.RUNNING),
        # a start without state, a second `down`
        (S.NOT_ENROLLED, S.DOWN, S.DOWN),
    ],
)
def test_the_daemons_paths_are_allowed(path: tuple[DaemonState, ...]) -> None:
    lifecycle = Lifecycle()
    for state in path:
        lifecycle.move(state)
    assert lifecycle.state is path[-1]


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (S.RUNNING, S.STARTING),  # a second agent while one runs
        (S.STARTING, S.DOWN),
        (S.DOWN, S.RUNNING),  # running only after starting
        (S.NOT_ENROLLED, S.RUNNING),
        (S.REVOKED, S.DOWN),  # a revoked node stays revoked until up or re-enroll
        (S.RUNNING, S.NOT_ENROLLED),  # only a revoked node is re-enrolled
        (S.FAILED, S.REVOKED),
    ],
)
def test_other_transitions_raise_and_change_nothing(start: DaemonState, to: DaemonState) -> None:
    lifecycle = Lifecycle(start)
    with pytest.raises(IllegalTransitionError, match=f"{start} -> {to}"):
        lifecycle.move(to)
    assert lifecycle.state is start


def test_every_state_has_a_row_and_the_values_are_what_status_shows() -> None:
    assert set(TRANSITIONS) == set(DaemonState)
    assert [s.value for s in DaemonState] == [
        "not_enrolled",
        "starting",
        "running",
        "down",
        "revoked",
        "failed",
    ]
