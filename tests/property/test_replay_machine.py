"""Stateful property test of the replay guard, with broken guards it must catch.

Invariants: the same signed request (nonce, timestamp) is never accepted twice; a nonce is
never accepted again within the retention period, also across a persist/restore restart; the
memory never exceeds its capacity; and a fresh nonce with a timely timestamp is accepted while
there is room (so a guard that refuses everything fails too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rustynet.domain.replay import (
    NONCE_RETENTION,
    REPLAY_WINDOW,
    ReplayError,
    ReplayGuard,
    ReplayPolicy,
)
from tests.property.broken import assert_machine_catches

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
CAPACITY = 5
NONCES = [bytes([i]) * 16 for i in range(8)]  # a small pool, so reuse is frequent


class ReplayGuardMachine(RuleBasedStateMachine):
    """Drives a guard with fresh, reused and replayed requests, time jumps and restarts."""

    guard_class: type[ReplayGuard] = ReplayGuard

    def __init__(self) -> None:
        super().__init__()
        self.policy = ReplayPolicy(capacity=CAPACITY)
        self.guard = self.guard_class(self.policy)
        self.now = T0
        self.accepted: list[tuple[bytes, datetime, datetime]] = []  # nonce, timestamp, at

    def _live(self) -> list[tuple[bytes, datetime, datetime]]:
        return [a for a in self.accepted if self.now <= a[2] + NONCE_RETENTION]

    def _submit(self, nonce: bytes, timestamp: datetime) -> None:
        live = self._live()
        recently_seen = any(n == nonce for n, _, _ in live)
        timely = abs(timestamp - self.now) <= REPLAY_WINDOW
        try:
            self.guard.accept(nonce, timestamp, self.now)
        except ReplayError:
            assert recently_seen or not timely or len(live) >= CAPACITY, "valid request refused"
            return
        assert timely, "a stale timestamp was accepted"
        assert (nonce, timestamp) not in {(n, t) for n, t, _ in self.accepted}, "replay accepted"
        assert not recently_seen, "a nonce was accepted twice within the retention period"
        self.accepted.append((nonce, timestamp, self.now))

    @rule(nonce=st.sampled_from(NONCES), skew=st.integers(-100, 100))
    def request(self, nonce: bytes, skew: int) -> None:
        """A request with some nonce from the pool and a skewed timestamp."""
        self._submit(nonce, self.now + timedelta(seconds=skew))

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """An attacker resends a previously accepted request byte for byte."""
        if self.accepted:
            nonce, timestamp, _ = data.draw(st.sampled_from(self.accepted))
            self._submit(nonce, timestamp)

    @rule(seconds=st.integers(0, 120))
    def advance(self, seconds: int) -> None:
        """Time passes (sometimes the driver also runs expiry)."""
        self.now += timedelta(seconds=seconds)

    @rule()
    def expire(self) -> None:
        """The driver's timer fires."""
        self.guard.expire(self.now)

    @rule()
    def restart(self) -> None:
        """Persist as JSON and restore, as a process restart would."""
        plain: Mapping[str, object] = json.loads(json.dumps(self.guard.export_state()))
        self.guard = self.guard_class.restore(plain, self.now, self.policy)

    @invariant()
    def memory_is_bounded(self) -> None:
        """The nonce memory never exceeds its capacity."""
        assert len(self.guard) <= CAPACITY, "nonce memory exceeded its capacity"


TestReplayGuardMachine = ReplayGuardMachine.TestCase


# --- broken guards: each must make the machine above fail ----------------------------------


class ForgetfulGuard(ReplayGuard):
    """Never looks up seen nonces."""

    def _seen(self, nonce: bytes, now: datetime) -> bool:
        return False


class UnboundedGuard(ReplayGuard):
    """Never reports the cache as full."""

    def _full(self) -> bool:
        return False


class AmnesiacGuard(ReplayGuard):
    """Restores as empty: a restart reopens the window."""

    @classmethod
    def restore(
        cls, state: Mapping[str, object], now: datetime, policy: ReplayPolicy | None = None
    ) -> ReplayGuard:
        return cls(policy)


class RefuseAllGuard(ReplayGuard):
    """Rejects everything (safe but useless: the liveness check must notice)."""

    def _full(self) -> bool:
        return True


@pytest.mark.parametrize("broken", [ForgetfulGuard, UnboundedGuard, AmnesiacGuard, RefuseAllGuard])
def test_property_test_catches_a_broken_guard(broken: type[ReplayGuard]) -> None:
    """With a check removed, the state machine finds a counterexample."""
    machine = type(f"{broken.__name__}Machine", (ReplayGuardMachine,), {"guard_class": broken})
    assert_machine_catches(machine)
