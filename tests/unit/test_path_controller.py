"""Examples for every transition of the path controller, its fail-closed table and its edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from rustynet.domain.path import (
    DEFAULT_DIRECT_TIMEOUT,
    EDGES,
    FAILBACK_BOUND,
    HANDLERS,
    Observation,
    PathKind,
    PathPhase,
    PathPolicy,
    PathPolicyError,
    PathTransitionError,
    PeerPath,
    ProbeDirect,
    ProbeResult,
    Reason,
    StaleProbeResult,
    Step,
    UsePath,
    status_path,
    step,
    wake_at,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POLICY = PathPolicy()
US = timedelta(microseconds=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def observe(
    state: PeerPath,
    seconds: float,
    handshake: float | None = None,
    *,
    relay: bool = True,
    policy: PathPolicy = POLICY,
) -> Step:
    hs = None if handshake is None else at(handshake)
    return step(
        policy, state, Observation(now=at(seconds), last_handshake=hs, relay_available=relay)
    )


def relayed(seconds: float = 6) -> PeerPath:
    """A peer that fell over to the relay at `seconds`."""
    result = observe(PeerPath.start(T0), seconds)
    assert result.state.phase is PathPhase.RELAY
    return result.state


def probing(state: PeerPath, seconds: float) -> PeerPath:
    result = observe(state, seconds, handshake=seconds, relay=True)
    assert result.state.phase is PathPhase.RELAY_PROBING
    return result.state


def reasons(result: Step) -> list[Reason]:
    return [t.reason for t in result.transitions]


def test_peer_starts_direct() -> None:
    """A new peer tries the direct path first and status says direct."""
    state = PeerPath.start(T0)
    assert state.phase is PathPhase.DIRECT_TRYING
    assert state.path is PathKind.DIRECT
    assert status_path(state) == "direct"


def test_direct_handshake_confirms_the_direct_path() -> None:
    """A handshake after the attempt began moves to direct-up, with no command (path unchanged)."""
    result = observe(PeerPath.start(T0), 2, handshake=1.5)
    assert result.state.phase is PathPhase.DIRECT_UP
    assert result.state.last_seen == at(1.5)
    assert reasons(result) == [Reason.HANDSHAKE_SEEN]
    assert result.commands == ()


def test_handshake_from_before_the_attempt_does_not_count() -> None:
    """A handshake at or before `since` belongs to the previous path."""
    state = PeerPath.start(at(10))
    assert observe(state, 11, handshake=10).state.phase is PathPhase.DIRECT_TRYING
    assert observe(state, 11, handshake=3).transitions == ()


def test_no_direct_handshake_switches_to_relay_exactly_at_the_timeout() -> None:
    """Just before direct_timeout the peer stays direct; at it, it switches to the relay."""
    state = PeerPath.start(T0)
    before = step(POLICY, state, Observation(T0 + DEFAULT_DIRECT_TIMEOUT - US, None, True))
    assert before.state.phase is PathPhase.DIRECT_TRYING
    assert before.transitions == ()
    result = step(POLICY, state, Observation(T0 + DEFAULT_DIRECT_TIMEOUT, None, True))
    assert result.state.phase is PathPhase.RELAY
    assert result.commands == (UsePath(PathKind.RELAY),)
    (transition,) = result.transitions
    assert (transition.from_phase, transition.to_phase) == (
        PathPhase.DIRECT_TRYING,
        PathPhase.RELAY,
    )
    assert transition.reason is Reason.DIRECT_TIMEOUT
    assert transition.changes_path
    assert status_path(result.state) == "relay"


def test_without_a_relay_the_peer_stays_direct_with_status_none() -> None:
    """No relay: the tunnel keeps the direct path, status says none, no path command."""
    result = observe(PeerPath.start(T0), 6, relay=False)
    assert result.state.phase is PathPhase.DIRECT_UNREACHABLE
    assert result.state.path is PathKind.DIRECT
    assert status_path(result.state) == "none"
    assert reasons(result) == [Reason.NO_RELAY]
    assert result.commands == ()


def test_unreachable_peer_takes_a_relay_that_appears() -> None:
    """A relay that becomes available later is used at once."""
    stranded = observe(PeerPath.start(T0), 6, relay=False).state
    assert observe(stranded, 30, relay=False).transitions == ()
    result = observe(stranded, 40, relay=True)
    assert result.state.phase is PathPhase.RELAY
    assert reasons(result) == [Reason.RELAY_AVAILABLE]
    assert result.commands == (UsePath(PathKind.RELAY),)


def test_unreachable_peer_recovers_on_a_late_direct_handshake() -> None:
    """The tunnel kept retrying direct; a late handshake makes it direct-up."""
    stranded = observe(PeerPath.start(T0), 6, relay=False).state
    result = observe(stranded, 20, handshake=19, relay=False)
    assert result.state.phase is PathPhase.DIRECT_UP
    assert status_path(result.state) == "direct"


def test_a_handshake_wins_over_the_timeout_in_the_same_observation() -> None:
    """A handshake first seen after the timeout still proves the direct path works."""
    result = observe(PeerPath.start(T0), 9, handshake=8)
    assert result.state.phase is PathPhase.DIRECT_UP


def test_stale_direct_session_starts_a_new_direct_attempt() -> None:
    """Direct-up with no fresh handshake for session_timeout goes back to direct-trying."""
    up = observe(PeerPath.start(T0), 1, handshake=1).state
    edge = 1 + POLICY.session_timeout.total_seconds()
    assert observe(up, edge - 0.5, handshake=1).transitions == ()
    result = observe(up, edge, handshake=1)
    assert result.state.phase is PathPhase.DIRECT_TRYING
    assert result.state.since == at(edge)
    assert reasons(result) == [Reason.DIRECT_STALE]
    assert result.commands == ()


def test_fresh_handshakes_keep_a_direct_session_up() -> None:
    """Each newer handshake extends the session."""
    up = observe(PeerPath.start(T0), 1, handshake=1).state
    up = observe(up, 150, handshake=140).state
    assert up.last_seen == at(140)
    assert observe(up, 300, handshake=140).state.phase is PathPhase.DIRECT_UP


def test_relay_asks_for_a_direct_probe_every_probe_interval() -> None:
    """The first probe comes probe_interval after switching, with its deadline."""
    state = relayed(6)
    early = observe(state, 6 + 10 - 0.001, handshake=7)
    assert early.state.phase is PathPhase.RELAY
    result = observe(state, 16, handshake=7)
    assert result.state.phase is PathPhase.RELAY_PROBING
    assert reasons(result) == [Reason.PROBE_DUE]
    assert result.commands == (ProbeDirect(probe=1, deadline=at(18)),)
    assert result.state.awaiting_probe


def test_probe_failure_stays_on_relay_and_keeps_the_schedule() -> None:
    """A failed probe leaves the peer relayed; the next probe is probe_interval after the last."""
    state = probing(relayed(6), 16)
    result = step(POLICY, state, ProbeResult(at(16.2), probe=1, ok=False))
    assert result.state.phase is PathPhase.RELAY
    assert reasons(result) == [Reason.PROBE_FAILED]
    assert result.commands == ()
    assert result.state.next_probe_at == at(26)


def test_unanswered_probe_times_out_as_a_failure() -> None:
    """No result by the deadline counts as failed (exactly at the deadline)."""
    state = probing(relayed(6), 16)
    assert observe(state, 17.9, handshake=16).transitions == ()
    result = observe(state, 18, handshake=16)
    assert result.state.phase is PathPhase.RELAY
    assert reasons(result) == [Reason.PROBE_TIMED_OUT]
    assert result.state.successes == 0


def test_two_successful_probes_fail_back_to_direct() -> None:
    """One success schedules a confirming probe; the second fails back with UsePath(DIRECT)."""
    state = probing(relayed(6), 16)
    first = step(POLICY, state, ProbeResult(at(16.1), probe=1, ok=True))
    assert first.state.phase is PathPhase.RELAY
    assert reasons(first) == [Reason.PROBE_SUCCEEDED]
    assert first.state.successes == 1
    assert first.state.next_probe_at == at(18.1)
    confirm = observe(first.state, 18.1, handshake=16)
    assert confirm.commands == (ProbeDirect(probe=2, deadline=at(20.1)),)
    back = step(POLICY, confirm.state, ProbeResult(at(18.2), probe=2, ok=True))
    assert back.state.phase is PathPhase.DIRECT_TRYING
    assert back.state.since == at(18.2)
    assert reasons(back) == [Reason.DIRECT_HEALTHY]
    assert back.commands == (UsePath(PathKind.DIRECT),)
    assert status_path(back.state) == "direct"


def test_a_failure_between_successes_resets_the_count() -> None:
    """Successes must be consecutive."""
    state = probing(relayed(6), 16)
    state = step(POLICY, state, ProbeResult(at(16.1), probe=1, ok=True)).state
    state = probing(state, 18.1)
    state = step(POLICY, state, ProbeResult(at(18.2), probe=2, ok=False)).state
    assert state.successes == 0
    state = probing(state, 28.1)
    result = step(POLICY, state, ProbeResult(at(28.2), probe=3, ok=True))
    assert result.state.phase is PathPhase.RELAY


def test_one_success_is_enough_when_the_policy_says_so() -> None:
    """failback_successes=1 fails back on the first successful probe."""
    policy = PathPolicy(failback_successes=1)
    state = observe(PeerPath.start(T0), 6, policy=policy).state
    state = observe(state, 16, handshake=7, policy=policy).state
    result = step(policy, state, ProbeResult(at(16.1), probe=1, ok=True))
    assert result.state.phase is PathPhase.DIRECT_TRYING


def test_lost_relay_goes_back_to_direct() -> None:
    """A relay session that disappears sends the peer back to the direct path, even mid-probe."""
    for state in (relayed(6), probing(relayed(6), 16)):
        result = observe(state, 17, handshake=7, relay=False)
        assert result.state.phase is PathPhase.DIRECT_TRYING
        assert reasons(result) == [Reason.RELAY_LOST]
        assert result.commands == (UsePath(PathKind.DIRECT),)


def test_relay_without_a_first_handshake_goes_back_to_direct_at_relay_timeout() -> None:
    """No handshake through the relay within relay_timeout: try direct again (never stuck)."""
    state = relayed(6)
    edge = 6 + POLICY.relay_timeout.total_seconds()
    assert observe(state, edge - 0.001).state.phase is PathPhase.RELAY_PROBING
    result = observe(state, edge)
    assert result.state.phase is PathPhase.DIRECT_TRYING
    assert reasons(result) == [Reason.RELAY_SILENT]
    assert result.commands == (UsePath(PathKind.DIRECT),)


def test_silent_relay_session_goes_back_to_direct() -> None:
    """A relayed session with no fresh handshake for session_timeout is abandoned."""
    state = observe(relayed(6), 7, handshake=7).state
    edge = 7 + POLICY.session_timeout.total_seconds()
    state = observe(state, edge - 1, handshake=7).state
    assert state.path is PathKind.RELAY
    result = observe(state, edge, handshake=7)
    assert reasons(result) == [Reason.RELAY_SILENT]
    assert result.state.path is PathKind.DIRECT


def test_probe_result_outside_probing_raises_and_changes_nothing() -> None:
    """A result when no probe is outstanding is stale: it raises and the state is untouched."""
    for state in (PeerPath.start(T0), relayed(6)):
        before = state
        with pytest.raises(StaleProbeResult):
            step(POLICY, state, ProbeResult(at(7), probe=0, ok=True))
        assert state == before


def test_probe_result_for_another_probe_raises() -> None:
    """An answer to an older probe cannot count for the outstanding one."""
    state = probing(relayed(6), 16)
    with pytest.raises(StaleProbeResult):
        step(POLICY, state, ProbeResult(at(16.1), probe=0, ok=True))
    assert state.successes == 0


def test_unknown_input_raises() -> None:
    """An input type the table does not list is refused."""
    with pytest.raises(PathTransitionError):
        step(POLICY, PeerPath.start(T0), "tick")  # type: ignore[arg-type]


def test_time_going_backwards_raises_and_changes_nothing() -> None:
    """Inputs older than the state's as_of are a bug in the driver."""
    state = observe(PeerPath.start(T0), 3).state
    with pytest.raises(PathTransitionError, match="backwards"):
        observe(state, 2)
    assert state.as_of == at(3)


def test_inputs_require_utc_times() -> None:
    """Naive or non-UTC times are refused at construction."""
    with pytest.raises(PathTransitionError):
        Observation(datetime(2026, 5, 1, 12, 0), None, True)  # noqa: DTZ001 - the point of the test
    with pytest.raises(PathTransitionError):
        ProbeResult(datetime(2026, 5, 1, tzinfo=timezone(timedelta(hours=2))), probe=1, ok=True)
    with pytest.raises(PathTransitionError):
        Observation(T0, None, 1)  # type: ignore[arg-type]


def test_handshake_in_the_future_counts_as_now() -> None:
    """Clock skew between tunnel stats and the daemon clock is clamped to now."""
    state = observe(PeerPath.start(T0), 2, handshake=5).state
    assert state.last_seen == at(2)


def test_policy_rejects_nonsense() -> None:
    """Zero bounds, a probe timeout beyond the interval, or zero successes are refused."""
    with pytest.raises(PathPolicyError):
        PathPolicy(direct_timeout=timedelta(0))
    with pytest.raises(PathPolicyError):
        PathPolicy(probe_timeout=timedelta(seconds=10), probe_interval=timedelta(seconds=10))
    with pytest.raises(PathPolicyError):
        PathPolicy(failback_successes=0)


def test_failback_bound_is_documented_and_consistent() -> None:
    """18 s for the defaults: interval + confirm + 2 x (probe timeout + tick)."""
    assert timedelta(seconds=18) == FAILBACK_BOUND
    assert PathPolicy(failback_successes=1).failback_bound() == timedelta(seconds=13)


def test_failback_happens_within_the_bound_after_the_path_heals() -> None:
    """Worst case: healing just after a probe went out; the 1 s ticks still meet the bound."""
    state = probing(relayed(6), 16)  # probe 1 sent at 16 s; the path heals just after
    healed = at(16.001)
    seconds = 16.0
    while state.phase is not PathPhase.DIRECT_TRYING:
        seconds += 1
        result = observe(state, seconds, handshake=7.5)
        state = result.state
        for command in result.commands:
            if isinstance(command, ProbeDirect):
                sent = seconds
                ok = at(sent) > healed
                reply = at(sent) + POLICY.probe_timeout  # the slowest allowed answer
                state = step(POLICY, state, ProbeResult(reply, command.probe, ok)).state
                seconds = (reply - T0).total_seconds()
    assert at(seconds) - healed <= FAILBACK_BOUND


def test_wake_at_names_the_next_timed_transition() -> None:
    """The driver may sleep until wake_at; every timed phase has one, unreachable has none."""
    assert wake_at(POLICY, PeerPath.start(T0)) == at(6)
    assert wake_at(POLICY, relayed(6)) == at(16)
    assert wake_at(POLICY, probing(relayed(6), 16)) == at(18)  # the probe deadline
    assert wake_at(POLICY, observe(relayed(6), 8).state) == at(16)  # probe due before 17 s
    assert wake_at(POLICY, observe(PeerPath.start(T0), 6, relay=False).state) is None


def test_tables_are_consistent() -> None:
    """Every phase accepts observations, only probing accepts probe results, edges are legal."""
    assert {p for p, _ in HANDLERS} == set(PathPhase)
    assert [p for p, t in HANDLERS if t is ProbeResult] == [PathPhase.RELAY_PROBING]
    assert {p for p, _ in EDGES} <= {p for p, _ in HANDLERS}
    assert set(EDGES.values()) == set(PathPhase)


def test_transition_log_fields_name_both_paths() -> None:
    """The log record carries phases, status paths and the reason."""
    (transition,) = observe(PeerPath.start(T0), 6).transitions
    assert transition.log_fields() == {
        "from_phase": "direct-trying",
        "to_phase": "relay",
        "from_path": "direct",
        "to_path": "relay",
        "reason": "direct-timeout",
        "at": at(6).isoformat(),
    }
