"""Examples for every transition of the path controller, its fail-closed table and its edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from rustynet.domain.path import (
    DEFAULT_DIRECT_TIMEOUT,
    EDGES,
    FAILBACK_BOUND,
    FALLOVER_BOUND,
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
    peer_status,
    status_path,
    step,
    wake_at,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POLICY = PathPolicy()
QUIET = PathPolicy(direct_probe_interval=timedelta(hours=1))
"""Direct probes effectively off: isolates the handshake-driven edges of direct-up."""
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
    """A new peer tries the direct path first and status says trying (nothing confirmed)."""
    state = PeerPath.start(T0)
    assert state.phase is PathPhase.DIRECT_TRYING
    assert state.path is PathKind.DIRECT
    assert status_path(state) == "trying"


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
    assert status_path(result.state) == "trying"  # no handshake through the relay yet
    confirmed = observe(result.state, 8, handshake=7.5)
    assert confirmed.state.phase is PathPhase.RELAY
    assert status_path(confirmed.state) == "relay"


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
    up = observe(PeerPath.start(T0), 1, handshake=1, policy=QUIET).state
    edge = 1 + POLICY.session_timeout.total_seconds()
    assert observe(up, edge - 0.5, handshake=1, policy=QUIET).transitions == ()
    result = observe(up, edge, handshake=1, policy=QUIET)
    assert result.state.phase is PathPhase.DIRECT_TRYING
    assert result.state.since == at(edge)
    assert reasons(result) == [Reason.DIRECT_STALE]
    assert result.commands == ()


def test_fresh_handshakes_keep_a_direct_session_up() -> None:
    """Each newer handshake extends the session."""
    up = observe(PeerPath.start(T0), 1, handshake=1, policy=QUIET).state
    up = observe(up, 150, handshake=140, policy=QUIET).state
    assert up.last_seen == at(140)
    assert observe(up, 300, handshake=140, policy=QUIET).state.phase is PathPhase.DIRECT_UP


# --- probing a direct path that is up ---------------------------------------------------------


def direct_up(seconds: float = 1) -> PeerPath:
    """A peer whose direct path came up (first handshake seen) at `seconds`."""
    result = observe(PeerPath.start(T0), seconds, handshake=seconds)
    assert result.state.phase is PathPhase.DIRECT_UP
    return result.state


def direct_probing(state: PeerPath, seconds: float, handshake: float = 1) -> PeerPath:
    result = observe(state, seconds, handshake=handshake)
    assert result.state.phase is PathPhase.DIRECT_PROBING
    return result.state


def test_direct_up_asks_for_a_probe_every_direct_probe_interval() -> None:
    """The first probe falls due direct_probe_interval after direct-up, exactly at the edge."""
    up = direct_up(1)
    assert up.next_probe_at == at(6)
    early = step(POLICY, up, Observation(at(6) - US, at(1), True))
    assert early.state.phase is PathPhase.DIRECT_UP
    assert early.commands == ()
    result = observe(up, 6, handshake=1)
    assert result.state.phase is PathPhase.DIRECT_PROBING
    assert reasons(result) == [Reason.PROBE_DUE]
    assert result.commands == (ProbeDirect(probe=1, deadline=at(8)),)
    assert result.state.awaiting_probe
    assert result.state.next_probe_at == at(11)
    assert status_path(result.state) == "direct"
    assert wake_at(POLICY, up) == at(6)
    assert wake_at(POLICY, result.state) == at(8)


def test_successful_direct_probe_keeps_direct_up_and_the_schedule() -> None:
    """A success goes back to direct-up (no command) and the next probe is an interval later."""
    state = direct_probing(direct_up(1), 6)
    result = step(POLICY, state, ProbeResult(at(6.1), probe=1, ok=True))
    assert result.state.phase is PathPhase.DIRECT_UP
    assert reasons(result) == [Reason.PROBE_SUCCEEDED]
    assert result.commands == ()
    assert result.state.failures == 0
    assert result.state.next_probe_at == at(11)
    again = observe(result.state, 11, handshake=1)
    assert again.commands == (ProbeDirect(probe=2, deadline=at(13)),)


def test_one_failed_direct_probe_does_not_leave_direct() -> None:
    """A lost datagram counts one failure and nothing else: still direct-up, no command."""
    state = direct_probing(direct_up(1), 6)
    result = step(POLICY, state, ProbeResult(at(6.2), probe=1, ok=False))
    assert result.state.phase is PathPhase.DIRECT_UP
    assert reasons(result) == [Reason.PROBE_FAILED]
    assert result.commands == ()
    assert result.state.failures == 1
    assert result.state.next_probe_at == at(11)


def test_unanswered_direct_probe_times_out_exactly_at_its_deadline() -> None:
    """No result by the deadline is a failure (just before it, nothing happens)."""
    state = direct_probing(direct_up(1), 6)
    assert step(POLICY, state, Observation(at(8) - US, at(1), True)).transitions == ()
    result = observe(state, 8, handshake=1)
    assert result.state.phase is PathPhase.DIRECT_UP
    assert reasons(result) == [Reason.PROBE_TIMED_OUT]
    assert result.state.failures == 1


def fail_direct_probes(state: PeerPath, count: int, start: float) -> tuple[PeerPath, Step]:
    """`count` failed direct probes, one per direct_probe_interval from `start`."""
    interval = POLICY.direct_probe_interval.total_seconds()
    result = None
    for i in range(count):
        sent = start + i * interval
        state = direct_probing(state, sent)
        result = step(POLICY, state, ProbeResult(at(sent + 0.5), state.probe_seq, ok=False))
        state = result.state
    assert result is not None
    return state, result


def test_direct_lost_after_exactly_direct_lost_after_failures_in_a_row() -> None:
    """Two failures keep direct-up; the third leaves for a new direct attempt (direct-lost)."""
    state, result = fail_direct_probes(direct_up(1), 2, start=6)
    assert result.state.phase is PathPhase.DIRECT_UP
    assert result.state.failures == POLICY.direct_lost_after - 1
    state = direct_probing(state, 16)
    lost = step(POLICY, state, ProbeResult(at(16.5), probe=3, ok=False))
    assert lost.state.phase is PathPhase.DIRECT_TRYING
    assert reasons(lost) == [Reason.DIRECT_LOST]
    assert lost.commands == ()  # the path stays direct: direct-timeout decides on the relay
    assert lost.state.since == at(16.5)
    assert lost.state.failures == 0
    assert status_path(lost.state) == "trying"
    assert not lost.transitions[0].changes_path


def test_a_timed_out_probe_can_be_the_last_failure() -> None:
    """Failures may be results or timeouts: two failed results and one timeout lose the path."""
    state, _ = fail_direct_probes(direct_up(1), 2, start=6)
    state = direct_probing(state, 16)
    result = observe(state, 18, handshake=1)
    assert reasons(result) == [Reason.DIRECT_LOST]
    assert result.state.phase is PathPhase.DIRECT_TRYING


def test_a_successful_probe_resets_the_failure_count() -> None:
    """Failures must be consecutive: a success between them starts the count again."""
    state, _ = fail_direct_probes(direct_up(1), 2, start=6)
    state = direct_probing(state, 16)
    state = step(POLICY, state, ProbeResult(at(16.5), probe=3, ok=True)).state
    assert state.failures == 0
    state, result = fail_direct_probes(state, 2, start=21)
    assert result.state.phase is PathPhase.DIRECT_UP
    assert state.failures == 2


def test_a_fresh_handshake_resets_the_failure_count() -> None:
    """A handshake newer than the last one seen is proof of life, in either direct-up phase."""
    state, _ = fail_direct_probes(direct_up(1), 2, start=6)
    fresh = observe(state, 12, handshake=11.5)
    assert fresh.state.failures == 0
    assert fresh.transitions == ()
    state, _ = fail_direct_probes(direct_up(1), 2, start=6)
    probing_state = direct_probing(state, 16)
    seen = observe(probing_state, 17, handshake=16.5)
    assert seen.state.failures == 0
    assert seen.state.phase is PathPhase.DIRECT_PROBING
    after = step(POLICY, seen.state, ProbeResult(at(17.5), probe=3, ok=False))
    assert after.state.phase is PathPhase.DIRECT_UP
    assert after.state.failures == 1


def test_an_old_handshake_does_not_reset_the_failure_count() -> None:
    """The same handshake reported again proves nothing."""
    state, _ = fail_direct_probes(direct_up(1), 2, start=6)
    assert observe(state, 12, handshake=1).state.failures == 2


def test_lost_direct_path_falls_over_to_the_relay_after_direct_timeout() -> None:
    """direct-lost starts a new attempt; with no fresh handshake direct-timeout takes the relay."""
    state, lost = fail_direct_probes(direct_up(1), 3, start=6)
    assert reasons(lost) == [Reason.DIRECT_LOST]
    edge = 16.5 + POLICY.direct_timeout.total_seconds()
    assert observe(state, edge - 0.001, handshake=1).transitions == ()
    result = observe(state, edge, handshake=1)
    assert result.state.phase is PathPhase.RELAY
    assert reasons(result) == [Reason.DIRECT_TIMEOUT]
    assert result.commands == (UsePath(PathKind.RELAY),)


def test_lost_direct_path_without_a_relay_reports_none() -> None:
    """No relay: the lost path ends in direct-unreachable (status none), still direct."""
    state, _ = fail_direct_probes(direct_up(1), 3, start=6)
    result = observe(state, 23, handshake=1, relay=False)
    assert result.state.phase is PathPhase.DIRECT_UNREACHABLE
    assert status_path(result.state) == "none"


def test_stale_session_ends_direct_probing_too() -> None:
    """session_timeout without a handshake ends the session even with a probe outstanding."""
    policy = PathPolicy(direct_probe_interval=timedelta(seconds=189))
    up = observe(PeerPath.start(T0), 1, handshake=1, policy=policy).state
    state = observe(up, 190, handshake=1, policy=policy).state
    assert state.phase is PathPhase.DIRECT_PROBING
    result = observe(state, 191, handshake=1, policy=policy)
    assert reasons(result) == [Reason.DIRECT_STALE]
    assert result.state.phase is PathPhase.DIRECT_TRYING


def test_direct_probe_results_that_are_not_outstanding_are_refused() -> None:
    """A result in direct-up (it timed out) or for another probe raises and changes nothing."""
    up = direct_up(1)
    with pytest.raises(StaleProbeResult):
        step(POLICY, up, ProbeResult(at(2), probe=0, ok=False))
    state = direct_probing(up, 6)
    with pytest.raises(StaleProbeResult):
        step(POLICY, state, ProbeResult(at(6.5), probe=0, ok=False))
    timed_out = observe(state, 8, handshake=1).state
    with pytest.raises(StaleProbeResult):
        step(POLICY, timed_out, ProbeResult(at(8.5), probe=1, ok=False))
    assert timed_out.failures == 1


def test_direct_probe_numbers_continue_across_paths() -> None:
    """Probe numbers are never reused: a relay stint after direct probes counts on."""
    state, _ = fail_direct_probes(direct_up(1), 3, start=6)
    relay = observe(state, 22.5, handshake=1).state
    assert relay.phase is PathPhase.RELAY
    result = observe(relay, 32.5, handshake=23)
    assert result.commands == (ProbeDirect(probe=4, deadline=at(34.5)),)


def test_fallover_bound_is_documented_and_consistent() -> None:
    """28 s for the defaults: 3 x (direct probe interval + tick) + probe timeout + direct timeout
    + 2 ticks; a single-failure policy would be 16 s."""
    assert timedelta(seconds=28) == FALLOVER_BOUND
    assert PathPolicy(direct_lost_after=1).fallover_bound() == timedelta(seconds=16)


def test_fallover_happens_within_the_bound_after_the_direct_path_dies() -> None:
    """Worst case: the path dies just after a probe succeeded; slowest answers, 1 s ticks."""
    up = direct_up(1)
    result = observe(up, 6, handshake=1)
    state = step(POLICY, result.state, ProbeResult(at(6), 1, ok=True)).state
    died = at(6.001)
    seconds = 6.0
    while state.phase is not PathPhase.RELAY:
        seconds += 1 - 0.001  # ticks that just miss each due time
        result = observe(state, seconds, handshake=1)
        state = result.state
        for command in result.commands:
            if isinstance(command, ProbeDirect):
                reply = command.deadline  # the prober gives up at the deadline
                state = step(POLICY, state, ProbeResult(reply, command.probe, ok=False)).state
                seconds = (reply - T0).total_seconds()
    assert at(seconds) - died <= FALLOVER_BOUND
    assert at(seconds) - died > FALLOVER_BOUND - timedelta(seconds=6)


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
    assert status_path(back.state) == "trying"  # direct is re-tried, not yet confirmed


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
    with pytest.raises(PathPolicyError):
        PathPolicy(direct_lost_after=0)
    with pytest.raises(PathPolicyError):
        PathPolicy(direct_lost_after=True)
    with pytest.raises(PathPolicyError):
        PathPolicy(probe_timeout=timedelta(seconds=5))  # not shorter than direct probes


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
    assert {p for p, t in HANDLERS if t is ProbeResult} == {
        PathPhase.RELAY_PROBING,
        PathPhase.DIRECT_PROBING,
    }
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


def test_status_says_trying_until_a_handshake_on_the_path_confirms_it() -> None:
    """The NATed-peer case of issue 11: the tunnel holds a handshake from BEFORE this direct
    attempt (an old session, or one made through the relay): status stays `trying`, never
    `direct`, until a handshake after `since` arrives."""
    state = PeerPath.start(at(100))
    stale = observe(state, 103, handshake=90).state
    assert stale.phase is PathPhase.DIRECT_TRYING
    assert peer_status(POLICY, stale, at(90), at(103)) == "trying"
    seen = observe(stale, 104, handshake=103.5).state
    assert peer_status(POLICY, seen, at(103.5), at(104)) == "direct"


def test_status_without_a_controller_needs_a_live_handshake() -> None:
    """No controller (no relay bridge): `direct` only while the latest handshake is younger
    than session_timeout; none at all or a dead one is `trying`."""
    now = at(1000)
    assert peer_status(POLICY, None, None, now) == "trying"
    assert peer_status(POLICY, None, now - POLICY.session_timeout, now) == "trying"
    assert peer_status(POLICY, None, now - POLICY.session_timeout + US, now) == "direct"


def _evidence(state: PeerPath, seconds: float, seen: float) -> Step:
    obs = Observation(
        now=at(seconds), last_handshake=None, relay_available=True, direct_evidence=at(seen)
    )
    return step(POLICY, state, obs)


@pytest.mark.parametrize("probe", [False, True])
def test_direct_packets_while_relayed_move_the_peer_to_direct_up_at_once(probe: bool) -> None:
    """The tunnel took authenticated packets on a direct endpoint during the relay stint: the
    session runs direct already (`direct-seen`), no handshake or probe streak needed."""
    state = relayed(6)
    if probe:
        state = probing(state, 16)
    result = _evidence(state, 17, 16.5)
    assert result.state.phase is PathPhase.DIRECT_UP
    assert reasons(result) == [Reason.DIRECT_SEEN]
    assert result.state.last_seen == at(16.5)
    assert status_path(result.state) == "direct"


def test_direct_evidence_from_before_the_relay_stint_does_not_count() -> None:
    state = relayed(6)
    result = _evidence(state, 7, 5)
    assert result.state.phase is PathPhase.RELAY
    assert result.transitions == ()


def test_a_pair_whose_nats_rule_out_direct_takes_the_relay_as_soon_as_it_is_up() -> None:
    """Both ends behind hard NATs (the map's and our own classes): no direct attempt to sit out;
    without a relay the attempt goes on as usual."""
    state = PeerPath.start(T0)
    unlikely = Observation(at(0.2), None, relay_available=False, direct_unlikely=True)
    waiting = step(POLICY, state, unlikely)
    assert waiting.state.phase is PathPhase.DIRECT_TRYING
    result = step(POLICY, waiting.state, Observation(at(0.4), None, True, direct_unlikely=True))
    assert result.state.phase is PathPhase.RELAY
    assert reasons(result) == [Reason.DIRECT_UNLIKELY]
    assert result.commands == (UsePath(PathKind.RELAY),)
    likely = step(POLICY, state, Observation(at(0.4), None, True))
    assert likely.state.phase is PathPhase.DIRECT_TRYING  # only the classes decide


def test_after_relay_probes_a_misjudged_pair_gets_its_full_direct_attempt() -> None:
    """Relay probes that succeed move the pair to a direct attempt, which the classes do not cut
    short (probe_seq > 0): a wrong class costs a probe interval, never the direct path."""
    state = probing(relayed(6), 16)
    state = step(POLICY, state, ProbeResult(at(16.1), probe=1, ok=True)).state
    confirm = observe(state, 18.1, handshake=16)
    back = step(POLICY, confirm.state, ProbeResult(at(18.2), probe=2, ok=True))
    assert back.state.phase is PathPhase.DIRECT_TRYING
    again = step(POLICY, back.state, Observation(at(18.5), None, True, direct_unlikely=True))
    assert again.state.phase is PathPhase.DIRECT_TRYING
    assert again.transitions == ()


def test_a_pair_whose_nats_rule_out_direct_goes_back_to_a_relay_that_returns_at_once() -> None:
    """The relay lost and back (a restart): no 6 s direct attempt for a hard<->hard pair."""

    def obs(seconds: float, relay: bool) -> Observation:
        return Observation(at(seconds), None, relay, direct_unlikely=True)

    state = step(POLICY, PeerPath.start(T0), obs(0.1, True)).state
    assert state.phase is PathPhase.RELAY
    lost = step(POLICY, state, obs(20, False))
    assert lost.state.phase is PathPhase.DIRECT_TRYING
    assert reasons(lost) == [Reason.RELAY_LOST]
    back = step(POLICY, lost.state, obs(21, True))
    assert back.state.phase is PathPhase.RELAY
    assert reasons(back) == [Reason.DIRECT_UNLIKELY]
