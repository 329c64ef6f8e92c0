"""Stateful property test of the endpoint trial, with broken trials it must catch.

The machine drives one peer's trial on a monotonic fake clock: time jumps (often exactly onto
a bound), handshakes completing with the tunnel pointed where the trial said, handshakes that
roam the tunnel to a source no candidate names (authenticated, so the roamed address is then
vouched for), stale handshake times, and new candidate lists. After every step it checks:

* the trial points the tunnel only at a candidate of the current or an earlier signed list, or
  at an address a completed handshake vouched for;
* pre-punches go only to the current candidates, at most `punch_packets` each per attempt, and
  never more often than one round per `attempt_timeout`;
* an endpoint is confirmed only by a handshake strictly after its attempt began;
* an unconfirmed endpoint is left once its attempt is over (at most `attempt_timeout` in the
  first round, `retry_timeout` after it): the revert bound;
* a confirmed endpoint is never left for another candidate (it follows the tunnel only).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rustynet.domain.path.trial import (
    Punch,
    Rekick,
    TrialEffect,
    TrialPolicy,
    TrialState,
    observe,
    reorder,
)
from rustynet.domain.tunnel import UnderlayEndpoint
from tests.property.broken import assert_machine_catches

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = TrialPolicy(
    attempt_timeout=timedelta(milliseconds=500),
    attempts=2,
    punch_packets=2,
    retry_timeout=timedelta(seconds=2),
)
POOL = tuple(UnderlayEndpoint.parse(f"203.0.113.{n}:41641") for n in range(20, 26))
ROAMED = tuple(UnderlayEndpoint.parse(f"203.0.113.{n}:6{n}00") for n in range(30, 33))
JUMPS = st.one_of(
    st.integers(0, 12).map(lambda t: timedelta(milliseconds=100 * t)),
    st.sampled_from([POLICY.attempt_timeout, POLICY.retry_timeout]),
)
MAX_JUMP = POLICY.retry_timeout
Result = tuple[TrialState, tuple[TrialEffect, ...]]


class TrialMachine(RuleBasedStateMachine):
    """Drives one peer's endpoint trial and checks it against the world it sees."""

    def observe(
        self, state: TrialState, now: datetime, hs: datetime | None, cur: UnderlayEndpoint | None
    ) -> Result:
        """The trial under test (broken variants override this)."""
        return observe(POLICY, state, now, hs, cur)

    def reorder(
        self, state: TrialState, order: tuple[UnderlayEndpoint, ...], now: datetime
    ) -> Result:
        """The trial under test (broken variants override this)."""
        return reorder(POLICY, state, order, now)

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.order = POOL[:3]
        self.signed: set[UnderlayEndpoint] = set(self.order)
        self.vouched: set[UnderlayEndpoint] = set()
        self.handshake: datetime | None = None
        self.state, effects = TrialState.start(POLICY, self.order, T0)
        self.rounds: list[datetime] = []
        self._check_effects(effects)
        self.tunnel = self.state.endpoint  # where the tunnel sends now
        self.endpoint_since = T0  # when the trial's endpoint last changed

    def _check_effects(self, effects: tuple[TrialEffect, ...]) -> None:
        for effect in effects:
            if isinstance(effect, Punch):
                assert set(effect.targets) <= set(self.order), "punched an address not signed now"
                assert effect.count <= POLICY.punch_packets, "more pre-punches than the bound"
                assert (
                    not self.rounds
                    or self.now - self.rounds[-1] >= POLICY.attempt_timeout
                    or (self.rounds[-1] == self.now and False)
                    or self._new_list
                ), "pre-punch rounds closer than attempt_timeout"
                self.rounds.append(self.now)
        self._new_list = False

    _new_list = False

    def _step(self, hs_at: datetime | None, current: UnderlayEndpoint | None) -> None:
        before = self.state
        self.state, effects = self.observe(before, self.now, hs_at, current)
        self._check_effects(effects)
        after = self.state
        if after.confirmed is not None and before.confirmed is None:
            assert hs_at is not None, "confirmed without a handshake"
            assert min(hs_at, self.now) > before.started, (
                "confirmed without a handshake after the attempt began"
            )
        if before.confirmed is not None:
            assert after.confirmed is not None, "a confirmed endpoint was dropped"
            assert after.confirmed in (before.confirmed, current), "left a confirmed endpoint"
        elif after.confirmed is None:
            limit = POLICY.timeout(before)
            if self.now - before.started >= limit and before.order:
                assert (after.index, after.attempt) != (before.index, before.attempt), (
                    "kept an unconfirmed endpoint past its attempt (revert bound)"
                )
            if Rekick() in effects:
                assert self.now - before.started >= limit, "re-kicked before the attempt ended"
        self.tunnel = (
            self.state.endpoint if current is None or self.state.confirmed is None else current
        )
        self._check_revert(before)

    def _check_revert(self, before: TrialState) -> None:
        """An unconfirmed candidate is the endpoint for at most `attempts` attempts (each ends
        at the first tick after its timeout: at most one jump late)."""
        after = self.state
        if after.confirmed is not None or after.endpoint != before.endpoint:
            self.endpoint_since = self.now
            return
        bound = POLICY.attempts * (POLICY.retry_timeout + MAX_JUMP)
        if len(set(after.order)) > 1:
            assert self.now - self.endpoint_since <= bound, (
                "kept an unconfirmed endpoint past its attempts (revert bound)"
            )

    @rule(jump=JUMPS, answered=st.sampled_from([False] * 6 + [True]))
    def tick(self, jump: timedelta, answered: bool) -> None:
        """Time passes; maybe a handshake completes at the endpoint the tunnel uses."""
        self.now += jump
        if answered and self.tunnel is not None:
            self.handshake = self.now
            self.vouched.add(self.tunnel)
        self._step(self.handshake, self.tunnel)

    @rule(jump=JUMPS, where=st.sampled_from(ROAMED))
    def roam(self, jump: timedelta, where: UnderlayEndpoint) -> None:
        """A handshake arrives from an address no candidate names: the tunnel roams there."""
        self.now += jump
        self.handshake = self.now
        self.vouched.add(where)
        self.tunnel = where
        self._step(self.handshake, where)

    @rule(back=st.integers(1, 30))
    def stale_handshake(self, back: int) -> None:
        """The tunnel reports a handshake from before the current attempt."""
        old = self.state.started - timedelta(milliseconds=100 * back)
        self._step(old, self.tunnel)

    @rule(pick=st.lists(st.sampled_from(POOL), min_size=0, max_size=4, unique=True))
    def new_candidates(self, pick: list[UnderlayEndpoint]) -> None:
        """The signed map brings another candidate list for the peer."""
        self.order = tuple(pick)
        self.signed |= set(pick)
        self._new_list = True
        self.state, effects = self.reorder(self.state, self.order, self.now)
        self._check_effects(effects)
        self.tunnel = self.state.endpoint
        self.endpoint_since = self.now

    @invariant()
    def only_vouched_endpoints(self) -> None:
        endpoint = self.state.endpoint
        assert endpoint is None or endpoint in self.signed | self.vouched, (
            f"the tunnel points at {endpoint}, which nothing vouched for"
        )


TrialMachine.TestCase.settings = settings(
    settings(), stateful_step_count=50, suppress_health_check=[HealthCheck.too_slow]
)
TestTrialMachine = TrialMachine.TestCase


# --- deliberately broken trials --------------------------------------------------------------


class TrustingMachine(TrialMachine):
    """BROKEN: any handshake the tunnel reports confirms, even one from before the attempt."""

    def observe(
        self, state: TrialState, now: datetime, hs: datetime | None, cur: UnderlayEndpoint | None
    ) -> Result:
        if state.confirmed is None and hs is not None and cur is not None:
            return attrs.evolve(state, confirmed=cur, confirmed_at=min(hs, now)), ()
        return super().observe(state, now, hs, cur)


class StubbornMachine(TrialMachine):
    """BROKEN: never gives up on a candidate that sees no handshake."""

    def observe(
        self, state: TrialState, now: datetime, hs: datetime | None, cur: UnderlayEndpoint | None
    ) -> Result:
        nxt, effects = super().observe(state, now, hs, cur)
        if nxt.confirmed is None and nxt.index != state.index:
            return attrs.evolve(nxt, index=state.index), effects
        return nxt, effects


class ChattyMachine(TrialMachine):
    """BROKEN: punches more datagrams than the bound."""

    def observe(
        self, state: TrialState, now: datetime, hs: datetime | None, cur: UnderlayEndpoint | None
    ) -> Result:
        nxt, effects = super().observe(state, now, hs, cur)
        return nxt, tuple(
            Punch(e.targets, e.count + 1) if isinstance(e, Punch) else e for e in effects
        )


class WanderingMachine(TrialMachine):
    """BROKEN: takes over where the tunnel says it is before any handshake confirmed it (an
    address a forged, unauthenticated source could name)."""

    def observe(
        self, state: TrialState, now: datetime, hs: datetime | None, cur: UnderlayEndpoint | None
    ) -> Result:
        if state.confirmed is None and cur is not None and cur not in state.order:
            return attrs.evolve(state, order=(*state.order, cur), index=len(state.order)), ()
        return super().observe(state, now, hs, cur)

    @rule(where=st.sampled_from(ROAMED))
    def forged(self, where: UnderlayEndpoint) -> None:
        """An unauthenticated datagram names an address (the tunnel itself ignores it)."""
        self._step(None, where)


def test_machine_catches_a_trial_that_trusts_stale_handshakes() -> None:
    assert_machine_catches(TrustingMachine, match="confirmed without a handshake")


def test_machine_catches_a_trial_that_never_reverts() -> None:
    assert_machine_catches(StubbornMachine, match="revert bound")


def test_machine_catches_a_trial_that_punches_too_much() -> None:
    assert_machine_catches(ChattyMachine, match="more pre-punches than the bound")


def test_machine_catches_a_trial_that_follows_unvouched_addresses() -> None:
    assert_machine_catches(WanderingMachine, match="nothing vouched for")
