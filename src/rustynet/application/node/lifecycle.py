"""The daemon's lifecycle: its states and the only transitions allowed between them.

The one rule: the daemon is always in exactly one `DaemonState`, and it changes state only
along `TRANSITIONS`; any other change raises `IllegalTransitionError` (a bug, never a state the
daemon quietly drifts into). `rustynet status` shows the state's value.

    not_enrolled --up with a token / start--> starting
    starting  --the agent started--> running        --start-up failed--> failed
    running   --rustynet down--> down               --control refused us--> revoked
    down, failed --rustynet up--> starting          --rustynet down--> down
    revoked   --rustynet up--> starting             --up --reenroll--> not_enrolled

`not_enrolled` and `down` may be entered again from themselves (a start without state, a
second `down`); `revoked` is left only by `up` or by re-enrolling (`reenroll.py`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from rustynet.domain.errors import RustynetError


class DaemonState(enum.StrEnum):
    """What the daemon is doing; the value is what `status` shows."""

    NOT_ENROLLED = "not_enrolled"  # no node state: waits for `rustynet up --token-file`
    STARTING = "starting"  # bringing the tunnel up
    RUNNING = "running"  # the agent's loop runs (supervised: restarted after an error)
    DOWN = "down"  # `rustynet down`: tunnel removed, still enrolled
    REVOKED = "revoked"  # control refused our identity; the agent tore the tunnel down
    FAILED = "failed"  # start-up of the tunnel failed (see the log)


_S = DaemonState
TRANSITIONS: Final[Mapping[DaemonState, frozenset[DaemonState]]] = {
    _S.NOT_ENROLLED: frozenset({_S.NOT_ENROLLED, _S.STARTING, _S.DOWN}),
    _S.STARTING: frozenset({_S.RUNNING, _S.FAILED}),
    _S.RUNNING: frozenset({_S.DOWN, _S.REVOKED}),
    _S.DOWN: frozenset({_S.DOWN, _S.STARTING}),
    _S.FAILED: frozenset({_S.DOWN, _S.STARTING}),
    _S.REVOKED: frozenset({_S.STARTING, _S.NOT_ENROLLED}),
}
"""For each state, the states it may move to."""


class IllegalTransitionError(RustynetError):
    """A lifecycle change the table does not allow (a bug in the caller)."""


class Lifecycle:
    """The daemon's current state; `move` is the only way to change it."""

    def __init__(self, state: DaemonState = DaemonState.NOT_ENROLLED) -> None:
        self._state = state

    @property
    def state(self) -> DaemonState:
        """The current state."""
        return self._state

    def move(self, to: DaemonState) -> None:
        """Change to `to`; raises `IllegalTransitionError` when the table forbids it."""
        if to not in TRANSITIONS[self._state]:
            raise IllegalTransitionError(f"daemon lifecycle: {self._state} -> {to} is not allowed")
        self._state = to


__all__ = ["TRANSITIONS", "DaemonState", "IllegalTransitionError", "Lifecycle"]
