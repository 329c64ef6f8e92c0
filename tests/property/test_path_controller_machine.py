"""Stateful property test of the path controller, with broken controllers it must catch.

The machine drives one peer's controller with random observation sequences on a monotonic
fake clock: time jumps (often exactly onto a bound), handshakes on the active path, a relay
that comes and goes, probe answers (good, bad, late, stale) and inputs from the past. A small
model kept beside it (the tunnel endpoint as set by `UsePath`, when the current direct attempt
began, which handshakes were seen on which path, the outstanding probe, the streak of
successful probes while relayed and of failed probes while direct is up) checks after every
step:

* exactly one active path, and the tunnel endpoint the commands set always equals it;
* never relay when the latest observation says no relay is available;
* a switch to relay only at least `direct_timeout` after the direct attempt began, with no
  direct handshake seen in it; and the switch does happen once that is true and a relay exists;
* a fail back only on a successful probe completing `failback_successes` in a row; any other
  exit from the relay has a cause (relay lost, or silent per the model), and a silent relay
  is always left (never stuck);
* no exit from direct-up without `direct_lost_after` failed probes in a row (no successful
  probe or fresh handshake between them) or a session silent for `session_timeout`, and the
  exit does happen once either is true; while direct-up a probe is asked for at least every
  `direct_probe_interval`;
* every phase change emits exactly one transition whose from/to/at match and which is an edge
  of the table; no phase change, no transition; illegal inputs raise and change nothing;
* time in the state never goes backwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rustynet.domain.path import (
    EDGES,
    Observation,
    PathInput,
    PathKind,
    PathPhase,
    PathPolicy,
    PathTransitionError,
    PeerPath,
    ProbeDirect,
    ProbeResult,
    Reason,
    StaleProbeResult,
    Step,
    Transition,
    UsePath,
    status_path,
    step,
)
from tests.property.broken import assert_machine_catches

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DIRECT_LIVE = (PathPhase.DIRECT_UP, PathPhase.DIRECT_PROBING)
# Short bounds so random walks of ~50 steps cross every one of them many times.
POLICY = PathPolicy(
    direct_timeout=timedelta(seconds=6),
    relay_timeout=timedelta(seconds=11),
    session_timeout=timedelta(seconds=30),
    probe_interval=timedelta(seconds=10),
    confirm_interval=timedelta(seconds=2),
    probe_timeout=timedelta(seconds=3),
    failback_successes=2,
    direct_probe_interval=timedelta(seconds=5),
    direct_lost_after=3,
)
BOUNDS = [2, 3, 5, 6, 10, 11, 30]  # seconds: jumps that land exactly on a bound
SHORT = st.integers(0, 25).map(lambda tenths: timedelta(seconds=tenths / 10))
JUMPS = st.one_of(
    SHORT,
    SHORT,
    st.integers(0, 150).map(lambda tenths: timedelta(seconds=tenths / 10)),
    st.sampled_from(BOUNDS).map(lambda s: timedelta(seconds=s)),
)


class PathControllerMachine(RuleBasedStateMachine):
    """Drives one peer's path controller and checks it against a small model."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        """The controller under test (broken variants override this)."""
        return step(policy, state, event)

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.handshake: datetime | None = None  # what the tunnel reports (latest, any path)
        self.state = PeerPath.start(T0)
        self.endpoint = PathKind.DIRECT  # the tunnel endpoint, as the commands set it
        self.attempt_start = T0  # when the current direct attempt began
        self.direct_seen = False  # a handshake after attempt_start was observed
        self.relay_entered: datetime | None = None
        self.relay_seen: datetime | None = None  # latest handshake observed through the relay
        self.outstanding: ProbeDirect | None = None
        self.streak = 0  # successful probes in a row in this relay stint
        self.probe_path: PathKind | None = None  # the path the outstanding probe was sent on
        self.direct_last: datetime | None = None  # latest direct handshake in this attempt
        self.fails = 0  # failed direct probes in a row while direct-up, since proof of life
        self.probe_base: datetime | None = None  # direct-up: entered or latest probe sent

    # --- the world -----------------------------------------------------------------------

    @rule(
        answer=st.sampled_from([None, True, True, False]),
        jump=JUMPS,
        relay=st.sampled_from([True] * 9 + [False]),
        fresh=st.sampled_from([False, False, True]),
        direct=st.sampled_from([None] * 10 + [0, 0, 30]),
    )
    def tick(
        self,
        answer: bool | None,
        jump: timedelta,
        relay: bool,
        fresh: bool,
        direct: int | None = None,
    ) -> None:
        """Maybe the outstanding probe ends at once; time passes, maybe a handshake completes
        on the active path, maybe the tunnel took authenticated packets on a direct endpoint
        (`direct` seconds ago); the daemon observes."""
        if answer is not None:
            self._answer(answer)
        self.now += jump
        if fresh:
            self.handshake = self.now
        evidence = None if direct is None else self.now - timedelta(seconds=direct)
        obs = Observation(
            now=self.now,
            last_handshake=self.handshake,
            relay_available=relay,
            direct_evidence=evidence,
        )
        before = self.state
        result = self.controller(POLICY, before, obs)
        self._check_common(before, obs, result)
        self._check_observation(before, obs, result)
        self._advance(before, obs, result)

    @rule(ok=st.booleans(), delay=st.integers(0, 40))
    def late_probe_answer(self, ok: bool, delay: int) -> None:
        """The outstanding probe ends `delay` tenths of a second later (maybe past its deadline)."""
        self.now += timedelta(seconds=delay / 10)
        self._answer(ok)

    def _answer(self, ok: bool) -> None:
        if self.outstanding is None:
            return
        answer = ProbeResult(now=self.now, probe=self.outstanding.probe, ok=ok)
        before = self.state
        try:
            result = self.controller(POLICY, before, answer)
        except PathTransitionError as exc:
            raise AssertionError(f"the outstanding probe's answer was refused: {exc}") from exc
        direct = self.probe_path is PathKind.DIRECT
        self.outstanding = None
        if direct:
            self.fails = 0 if ok else self.fails + 1
        else:
            self.streak = self.streak + 1 if ok else 0
        self._check_common(before, answer, result)
        if before.path is PathKind.RELAY and result.state.path is PathKind.DIRECT:
            assert ok, "failed back on a failed probe"
            assert self.streak >= POLICY.failback_successes, "failed back without enough probes"
        if direct:
            self._check_direct_up_exit(before, answer, result)
        self._advance(before, answer, result)

    @rule(ok=st.booleans(), offset=st.integers(-2, 1))
    def stale_probe_answer_is_refused(self, ok: bool, offset: int) -> None:
        """An answer to no outstanding probe raises StaleProbeResult and changes nothing."""
        current = self.outstanding.probe if self.outstanding is not None else None
        number = max(0, self.state.probe_seq + offset)
        if number == current:
            return
        self._assert_refused(ProbeResult(now=self.now, probe=number, ok=ok), StaleProbeResult)

    @rule(back=st.integers(1, 5000))
    def input_from_the_past_is_refused(self, back: int) -> None:
        past = self.state.as_of - timedelta(milliseconds=back)
        self._assert_refused(Observation(past, self.handshake, True), PathTransitionError)

    def _assert_refused(self, event: PathInput, error: type[PathTransitionError]) -> None:
        before = self.state
        try:
            self.controller(POLICY, before, event)
        except error:
            assert self.state == before, "a refused input changed the state"
            return
        raise AssertionError(f"an illegal input was accepted: {event}")

    # --- checks ---------------------------------------------------------------------------

    def _check_common(self, before: PeerPath, event: PathInput, result: Step) -> None:
        after = result.state
        reason = result.transitions[0].reason if result.transitions else None
        assert after.as_of == event.now >= before.as_of, "time went backwards in the state"
        assert after.since <= after.as_of
        if after.phase is before.phase:
            assert result.transitions == (), "a transition without a phase change"
        else:
            assert len(result.transitions) == 1, "a phase change must emit exactly one event"
            (t,) = result.transitions
            assert t == Transition(event.now, before.phase, after.phase, t.reason), (
                "transition from/to/at do not match the step"
            )
            assert EDGES.get((t.from_phase, t.reason)) is t.to_phase, "transition not in EDGES"
        uses = [c for c in result.commands if isinstance(c, UsePath)]
        assert len(uses) <= 1, "two path commands in one step"
        for use in uses:
            self.endpoint = use.path
        assert self.endpoint is after.path, "tunnel endpoint differs from the active path"
        probes = [c for c in result.commands if isinstance(c, ProbeDirect)]
        assert len(probes) == (1 if after.awaiting_probe and not before.awaiting_probe else 0)
        if after.path is PathKind.RELAY and before.path is PathKind.DIRECT:
            self._check_switch_to_relay(event)
        if after.path is PathKind.DIRECT and before.path is PathKind.RELAY:
            self._check_leaving_relay(event, reason)

    def _direct_handshake_in(self, event: PathInput) -> bool:
        if not isinstance(event, Observation) or event.last_handshake is None:
            return self.direct_seen
        return self.direct_seen or event.last_handshake > self.attempt_start

    def _relay_dead(self, obs: Observation) -> bool:
        assert self.relay_entered is not None
        last = self.relay_seen
        if obs.last_handshake is not None and obs.last_handshake > self.relay_entered:
            last = obs.last_handshake if last is None else max(last, obs.last_handshake)
        if last is None:
            return obs.now - self.relay_entered >= POLICY.relay_timeout
        return obs.now - last >= POLICY.session_timeout

    def _check_switch_to_relay(self, event: PathInput) -> None:
        assert isinstance(event, Observation), "switched to relay on a probe result"
        assert event.relay_available, "switched to a relay that is not available"
        waited = event.now - self.attempt_start
        assert waited >= POLICY.direct_timeout, f"switched to relay after only {waited}"
        assert not self._direct_handshake_in(event), "switched to relay despite a direct handshake"

    def _check_leaving_relay(self, event: PathInput, reason: Reason | None) -> None:
        if isinstance(event, ProbeResult):
            assert reason is Reason.DIRECT_HEALTHY
            return  # probe_answers checks the streak
        assert reason is not Reason.DIRECT_HEALTHY, "failed back without a successful probe"
        if reason is Reason.DIRECT_SEEN:
            assert self._direct_evidence(event), "failed back on direct evidence from before"
            return
        assert not event.relay_available or self._relay_dead(event), "left a working relay"

    def _direct_evidence(self, obs: Observation) -> bool:
        """Authenticated direct packets during this relay stint (per the model)."""
        entered, seen = self.relay_entered, obs.direct_evidence
        return entered is not None and seen is not None and min(seen, obs.now) > entered

    def _check_observation(self, before: PeerPath, obs: Observation, result: Step) -> None:
        after = result.state
        if not obs.relay_available:
            assert after.path is PathKind.DIRECT, "relayed while no relay is available"
        if before.path is PathKind.RELAY and obs.relay_available and self._relay_dead(obs):
            assert after.path is PathKind.DIRECT, "stuck on a silent relay"
        if before.path is PathKind.RELAY and obs.relay_available and self._direct_evidence(obs):
            assert after.phase is PathPhase.DIRECT_UP, "stayed relayed on a working direct path"
        if (
            before.path is PathKind.DIRECT
            and before.phase not in DIRECT_LIVE
            and obs.relay_available
            and obs.now - self.attempt_start >= POLICY.direct_timeout
            and not self._direct_handshake_in(obs)
        ):
            assert after.path is PathKind.RELAY, "direct failed, a relay exists, yet no switch"
        if self.outstanding is not None and obs.now >= self.outstanding.deadline:
            assert not after.awaiting_probe, "a probe outlived its deadline"
        if before.phase in DIRECT_LIVE:
            self._check_direct_up_exit(before, obs, result)
        if (
            before.phase is PathPhase.DIRECT_UP
            and after.phase is not PathPhase.DIRECT_TRYING
            and self.probe_base is not None
            and obs.now - self.probe_base >= POLICY.direct_probe_interval
        ):
            assert after.awaiting_probe, "no probe of a direct path that is up"

    def _direct_after(self, obs: Observation) -> tuple[datetime | None, int]:
        """Latest direct handshake and failures in a row after `obs` (a fresh handshake resets
        the count, then a probe past its deadline adds one), per the model."""
        last, fails = self.direct_last, self.fails
        hs = obs.last_handshake
        if hs is not None and hs > (last or self.attempt_start):
            last, fails = hs, 0
        timed_out = self.outstanding is not None and obs.now >= self.outstanding.deadline
        if timed_out and self.probe_path is PathKind.DIRECT:
            fails += 1
        return last, fails

    def _check_direct_up_exit(self, before: PeerPath, event: PathInput, result: Step) -> None:
        """Direct-up is left only (and always) on enough failures in a row or a silent session."""
        if isinstance(event, Observation):
            last, fails = self._direct_after(event)
            assert last is not None, "direct-up without a direct handshake in the model"
            silent = event.now - last >= POLICY.session_timeout
        else:
            fails, silent = self.fails, False
        lost = fails >= POLICY.direct_lost_after
        left = result.state.phase not in DIRECT_LIVE
        if left:
            assert lost or silent, f"left direct-up after {fails} failed probes in a row"
        else:
            assert not lost, f"stayed direct-up after {fails} failed probes in a row"
            assert not silent, "stayed direct-up on a silent session"

    # --- the model ------------------------------------------------------------------------

    def _advance(self, before: PeerPath, event: PathInput, result: Step) -> None:
        after = result.state
        if isinstance(event, Observation):
            if before.path is PathKind.DIRECT and before.phase is not PathPhase.DIRECT_UNREACHABLE:
                self.direct_last, self.fails = self._direct_after(event)
            if self.outstanding is not None and event.now >= self.outstanding.deadline:
                self.outstanding, self.streak = None, 0
            hs = event.last_handshake
            if before.path is PathKind.DIRECT and hs is not None and hs > self.attempt_start:
                self.direct_seen = True
            entered = self.relay_entered
            if before.path is PathKind.RELAY and hs is not None and entered and hs > entered:
                self.relay_seen = hs if self.relay_seen is None else max(self.relay_seen, hs)
        if after.phase is PathPhase.DIRECT_TRYING and before.phase is not PathPhase.DIRECT_TRYING:
            self.attempt_start, self.direct_seen = event.now, False
            self.direct_last, self.fails, self.outstanding = None, 0, None
        if after.phase in DIRECT_LIVE and before.path is PathKind.RELAY:
            # direct-seen: the session runs direct from here; later handshakes count from
            # the start of the relay stint, as the controller's `since` does.
            assert isinstance(event, Observation)
            assert event.direct_evidence is not None
            assert self.relay_entered is not None
            self.attempt_start, self.direct_seen = self.relay_entered, True
            self.direct_last = min(event.direct_evidence, event.now)
        if after.phase in DIRECT_LIVE and before.phase not in DIRECT_LIVE:
            self.probe_base, self.fails = event.now, 0
        if after.path is not before.path:
            self.outstanding, self.streak = None, 0
            self.relay_entered = event.now if after.path is PathKind.RELAY else None
            self.relay_seen = None
        for command in result.commands:
            if isinstance(command, ProbeDirect):
                self.outstanding, self.probe_path = command, after.path
                if after.path is PathKind.DIRECT:
                    self.probe_base = event.now
        self.state = after

    @invariant()
    def exactly_one_active_path(self) -> None:
        assert self.state.path in (PathKind.DIRECT, PathKind.RELAY)
        assert self.endpoint is self.state.path
        word = status_path(self.state)
        assert (word == "relay") == (
            self.state.path is PathKind.RELAY and self.state.last_seen is not None
        )
        # `direct`/`relay` only once a handshake on the current path confirmed it.
        assert (word in ("direct", "relay")) == (self.state.last_seen is not None)


# --- deliberately broken controllers ---------------------------------------------------------


class HastyMachine(PathControllerMachine):
    """BROKEN: gives up on the direct path after half the timeout."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        hasty = attrs.evolve(policy, direct_timeout=policy.direct_timeout / 2)
        return step(hasty, state, event)


class ImpatientMachine(PathControllerMachine):
    """BROKEN: fails back after one successful probe where the policy asks for two."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        return step(attrs.evolve(policy, failback_successes=1), state, event)


class BlindMachine(PathControllerMachine):
    """BROKEN: believes a relay is always available."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        if isinstance(event, Observation):
            event = attrs.evolve(event, relay_available=True)
        return step(policy, state, event)


class StickyMachine(PathControllerMachine):
    """BROKEN: takes any activity for a handshake while relayed, so never leaves a dead relay."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        if isinstance(event, Observation) and state.path is PathKind.RELAY:
            event = attrs.evolve(event, last_handshake=event.now)
        return step(policy, state, event)


class OptimistMachine(PathControllerMachine):
    """BROKEN: when a probe falls due it fails back at once instead of probing."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        result = step(policy, state, event)
        if not any(isinstance(c, ProbeDirect) for c in result.commands):
            return result
        back = PeerPath(
            phase=PathPhase.DIRECT_TRYING, as_of=event.now, since=event.now, probe_seq=0
        )
        t = Transition(event.now, state.phase, back.phase, Reason.DIRECT_HEALTHY)
        return Step(back, (t,), (UsePath(PathKind.DIRECT),))


class FragileMachine(PathControllerMachine):
    """BROKEN: leaves direct-up after a single failed probe."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        return step(attrs.evolve(policy, direct_lost_after=1), state, event)


class GrudgeMachine(PathControllerMachine):
    """BROKEN: a successful direct probe does not reset the count of failures."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        result = step(policy, state, event)
        if (
            isinstance(event, ProbeResult)
            and event.ok
            and result.state.phase is PathPhase.DIRECT_UP
        ):
            kept = attrs.evolve(result.state, failures=state.failures)
            return result._replace(state=kept)
        return result


class ForgetfulMachine(PathControllerMachine):
    """BROKEN: a fresh handshake is not taken as proof of life for the failure count."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        result = step(policy, state, event)
        if isinstance(event, Observation) and state.failures and result.state.phase in DIRECT_LIVE:
            kept = attrs.evolve(result.state, failures=max(state.failures, result.state.failures))
            return result._replace(state=kept)
        return result


class IdleMachine(PathControllerMachine):
    """BROKEN: never probes a direct path that is up (the pre-probing controller)."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        lazy = attrs.evolve(policy, direct_probe_interval=timedelta(days=1))
        return step(lazy, state, event)


PathControllerMachine.TestCase.settings = settings(
    settings(), stateful_step_count=50, suppress_health_check=[HealthCheck.too_slow]
)
TestPathControllerMachine = PathControllerMachine.TestCase


class DeafMachine(PathControllerMachine):
    """BROKEN: ignores authenticated direct packets while relayed (never leaves the relay for
    a direct path that works unless probes say so)."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        if isinstance(event, Observation):
            event = attrs.evolve(event, direct_evidence=None)
        return step(policy, state, event)


class CredulousMachine(PathControllerMachine):
    """BROKEN: takes direct evidence from before the relay stint (a stale roam) as fresh."""

    def controller(self, policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
        if isinstance(event, Observation) and event.direct_evidence is not None:
            event = attrs.evolve(event, direct_evidence=event.now)
        return step(policy, state, event)


def test_machine_catches_a_controller_deaf_to_direct_packets_while_relayed() -> None:
    """Negative control: staying relayed while the tunnel runs direct is caught."""
    assert_machine_catches(DeafMachine, match="stayed relayed on a working direct path")


def test_machine_catches_a_controller_that_takes_stale_direct_evidence() -> None:
    """Negative control: failing back on direct evidence from before the relay is caught."""
    assert_machine_catches(CredulousMachine, match="direct evidence from before")


def test_machine_catches_a_controller_that_leaves_direct_too_early() -> None:
    """Negative control: switching to relay before direct_timeout is caught."""
    assert_machine_catches(HastyMachine, match="switched to relay after only")


def test_machine_catches_a_controller_that_fails_back_on_one_probe() -> None:
    """Negative control: failing back before failback_successes probes is caught."""
    assert_machine_catches(ImpatientMachine, match="without enough probes")


def test_machine_catches_a_controller_that_relays_without_a_relay() -> None:
    """Negative control: relaying while no relay is available is caught."""
    assert_machine_catches(BlindMachine, match="no relay is available|not available")


def test_machine_catches_a_controller_stuck_on_a_silent_relay() -> None:
    """Negative control: a relay that stopped handshaking must be left."""
    assert_machine_catches(StickyMachine, match="stuck on a silent relay")


def test_machine_catches_a_controller_that_fails_back_without_probing() -> None:
    """Negative control: failing back with no successful probe is caught."""
    assert_machine_catches(OptimistMachine, match="without a successful probe|not in EDGES")


def test_machine_catches_a_controller_that_leaves_direct_on_one_failed_probe() -> None:
    """Negative control: one lost probe datagram must not end a working direct path."""
    assert_machine_catches(FragileMachine, match="left direct-up after 1 failed probes")


def _probe_answers(machine: PathControllerMachine, answers: list[bool]) -> None:
    """Drive `machine` to direct-up, then answer its direct probes in order (relay up)."""
    machine.tick(answer=None, jump=timedelta(seconds=1), relay=True, fresh=True)
    for answer in answers:
        for _ in range(20):
            if machine.outstanding is not None:
                break
            machine.tick(answer=None, jump=timedelta(seconds=1), relay=True, fresh=False)
        machine.tick(answer=answer, jump=timedelta(0), relay=True, fresh=False)


def test_machine_catches_a_controller_whose_successes_do_not_reset_failures() -> None:
    """Negative control: failures separated by a successful probe are not in a row.

    Scripted (fail, succeed, fail, fail, ...), not searched: the random walk needs that exact
    pattern inside one direct stint and, with derandomized runs, found it in some test orders
    and not in others; the script makes the model's check meet the bug every time."""
    _probe_answers(PathControllerMachine(), [False, True, False, False])  # honest: no error
    with pytest.raises(AssertionError, match="left direct-up after 2 failed probes"):
        _probe_answers(GrudgeMachine(), [False, True, False, False, False, False])


def test_machine_catches_a_controller_that_ignores_fresh_handshakes() -> None:
    """Negative control: a fresh handshake is proof of life and resets the failures."""
    assert_machine_catches(ForgetfulMachine, match="left direct-up after [0-2] failed probes")


def test_machine_catches_a_controller_that_never_probes_direct() -> None:
    """Negative control: a direct path that is up must be probed every interval."""
    assert_machine_catches(IdleMachine, match="no probe of a direct path that is up")
