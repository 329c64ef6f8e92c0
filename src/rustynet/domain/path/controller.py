"""The machine: `step(policy, state, event)`, one handler per (phase, input type), and `wake_at`.

Handlers name a reason only; `step` looks the move up in the transition table (`table.EDGES`) and
derives the commands from the state change alone, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final, NamedTuple

import attrs

from rustynet.domain.path.phases import (
    RELAYED,
    PathPhase,
    PathTransitionError,
    Reason,
    StaleProbeResult,
)
from rustynet.domain.path.policy import PathPolicy
from rustynet.domain.path.states import (
    Command,
    Observation,
    PathInput,
    PeerPath,
    ProbeDirect,
    ProbeResult,
    Transition,
    UsePath,
)
from rustynet.domain.path.table import EDGES

_P = PathPhase


def wake_at(policy: PathPolicy, state: PeerPath) -> datetime | None:
    """When a timed transition falls due if nothing is observed (None: only inputs move it)."""
    phase = state.phase
    if phase is PathPhase.DIRECT_TRYING:
        return state.since + policy.direct_timeout
    if phase is PathPhase.DIRECT_UNREACHABLE:
        return None
    due = state.probe_deadline if state.awaiting_probe else state.next_probe_at
    end = _session_end(policy, state)
    return end if due is None else min(due, end)


class Step(NamedTuple):
    """The result of one input: next state, at most one transition, commands to run in order."""

    state: PeerPath
    transitions: tuple[Transition, ...]
    commands: tuple[Command, ...]


class _Move(NamedTuple):
    reason: Reason | None  # None: the phase stays
    state: PeerPath  # the next state (phase already set by `_enter`, or the same phase)


def _fresh(state: PeerPath, last_handshake: datetime | None, now: datetime) -> datetime | None:
    """A handshake newer than anything seen on this path (clamped to `now` for clock skew)."""
    if last_handshake is None:
        return None
    seen = min(last_handshake, now)
    newest = state.last_seen if state.last_seen is not None else state.since
    return seen if seen > newest else None


def _session_end(policy: PathPolicy, state: PeerPath) -> datetime:
    """When the current path counts as dead without a fresh handshake."""
    if state.last_seen is None:
        first = policy.relay_timeout if state.phase in RELAYED else policy.direct_timeout
        return state.since + first
    return state.last_seen + policy.session_timeout


def _enter(policy: PathPolicy, state: PeerPath, phase: PathPhase, now: datetime) -> PeerPath:
    """The fresh state on entering a new path (phases that keep the path use `evolve`)."""
    worked = state.direct_worked
    if phase is PathPhase.DIRECT_TRYING:
        return PeerPath(
            phase=phase, as_of=now, since=now, probe_seq=state.probe_seq, direct_worked=worked
        )
    if phase is PathPhase.RELAY:
        return PeerPath(
            phase=phase,
            as_of=now,
            since=now,
            probe_seq=state.probe_seq,
            next_probe_at=now + policy.probe_interval,
            direct_worked=worked,
        )
    raise PathTransitionError(f"{phase.value} is not entered from another path")


def _up(policy: PathPolicy, state: PeerPath, seen: datetime, now: datetime) -> PeerPath:
    """Direct-up on a first handshake: the probe schedule starts now."""
    return attrs.evolve(
        state,
        phase=PathPhase.DIRECT_UP,
        last_seen=seen,
        next_probe_at=now + policy.direct_probe_interval,
        direct_worked=True,
    )


def _on_direct_trying(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    seen = _fresh(state, obs.last_handshake, obs.now)
    if seen is not None:
        return _Move(Reason.HANDSHAKE_SEEN, _up(policy, state, seen, obs.now))
    if obs.direct_unlikely and obs.relay_available and not state.direct_worked:
        # Once direct was seen working (relay probes succeeded) it gets its full time, so a
        # pair whose NATs were misjudged still moves up.
        return _Move(Reason.DIRECT_UNLIKELY, _enter(policy, state, PathPhase.RELAY, obs.now))
    if obs.now - state.since < policy.direct_timeout:
        return _Move(None, state)
    if obs.relay_available:
        return _Move(Reason.DIRECT_TIMEOUT, _enter(policy, state, PathPhase.RELAY, obs.now))
    return _Move(Reason.NO_RELAY, state)


def _direct_alive(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    """Shared by both direct-up phases: a fresh handshake is proof of life; a stale one ends."""
    seen = _fresh(state, obs.last_handshake, obs.now)
    if seen is not None:
        state = attrs.evolve(state, last_seen=seen, failures=0)
    if obs.now >= _session_end(policy, state):
        return _Move(Reason.DIRECT_STALE, _enter(policy, state, PathPhase.DIRECT_TRYING, obs.now))
    return _Move(None, state)


def _on_direct_up(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    move = _direct_alive(policy, state, obs)
    due = move.state.next_probe_at
    if move.reason is not None or due is None or obs.now < due:
        return move
    return _Move(Reason.PROBE_DUE, _probe_now(policy, move.state, PathPhase.DIRECT_PROBING, obs))


def _direct_probe_failed(
    policy: PathPolicy, state: PeerPath, reason: Reason, now: datetime
) -> _Move:
    """One more failure in a row: back to direct-up, or lost after `direct_lost_after`."""
    failures = state.failures + 1
    if failures >= policy.direct_lost_after:
        lost = _enter(policy, state, PathPhase.DIRECT_TRYING, now)
        return _Move(Reason.DIRECT_LOST, lost)
    up = attrs.evolve(state, phase=PathPhase.DIRECT_UP, probe_deadline=None, failures=failures)
    return _Move(reason, up)


def _on_direct_probing(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    move = _direct_alive(policy, state, obs)
    deadline = move.state.probe_deadline
    if move.reason is not None or deadline is None or obs.now < deadline:
        return move
    return _direct_probe_failed(policy, move.state, Reason.PROBE_TIMED_OUT, obs.now)


def _on_direct_probe_result(policy: PathPolicy, state: PeerPath, result: ProbeResult) -> _Move:
    if result.probe != state.probe_seq:
        raise StaleProbeResult(f"probe {result.probe} is not the outstanding {state.probe_seq}")
    if not result.ok:
        return _direct_probe_failed(policy, state, Reason.PROBE_FAILED, result.now)
    up = attrs.evolve(state, phase=PathPhase.DIRECT_UP, probe_deadline=None, failures=0)
    return _Move(Reason.PROBE_SUCCEEDED, up)


def _on_direct_unreachable(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    seen = _fresh(state, obs.last_handshake, obs.now)
    if seen is not None:
        return _Move(Reason.HANDSHAKE_SEEN, _up(policy, state, seen, obs.now))
    if obs.relay_available:
        return _Move(Reason.RELAY_AVAILABLE, _enter(policy, state, PathPhase.RELAY, obs.now))
    return _Move(None, state)


def _relay_exit(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    """Shared by both relayed phases: leave a lost or silent relay, else note handshakes."""
    if not obs.relay_available:
        return _Move(Reason.RELAY_LOST, _enter(policy, state, PathPhase.DIRECT_TRYING, obs.now))
    direct = obs.direct_evidence
    if direct is not None and min(direct, obs.now) > state.since:
        # The tunnel took authenticated packets on a direct endpoint during this relay stint:
        # the direct path carries the session now (no handshake needed to prove the keys).
        up = PeerPath(
            phase=PathPhase.DIRECT_UP,
            as_of=obs.now,
            since=state.since,
            last_seen=min(direct, obs.now),
            probe_seq=state.probe_seq,
            next_probe_at=obs.now + policy.direct_probe_interval,
            direct_worked=True,
        )
        return _Move(Reason.DIRECT_SEEN, up)
    seen = _fresh(state, obs.last_handshake, obs.now)
    if seen is not None:
        state = attrs.evolve(state, last_seen=seen)
    if obs.now >= _session_end(policy, state):
        return _Move(Reason.RELAY_SILENT, _enter(policy, state, PathPhase.DIRECT_TRYING, obs.now))
    return _Move(None, state)


def _probe_now(policy: PathPolicy, state: PeerPath, phase: PathPhase, obs: Observation) -> PeerPath:
    """Start the next probe (a new number); the one after it is due one interval from now."""
    relayed = phase is PathPhase.RELAY_PROBING
    interval = policy.probe_interval if relayed else policy.direct_probe_interval
    return attrs.evolve(
        state,
        phase=phase,
        probe_seq=state.probe_seq + 1,
        next_probe_at=obs.now + interval,
        probe_deadline=obs.now + policy.probe_timeout,
    )


def _on_relay(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    move = _relay_exit(policy, state, obs)
    due = move.state.next_probe_at
    if move.reason is not None or due is None or obs.now < due:
        return move
    return _Move(Reason.PROBE_DUE, _probe_now(policy, move.state, PathPhase.RELAY_PROBING, obs))


def _probe_over(
    state: PeerPath, reason: Reason, successes: int, next_probe_at: datetime | None = None
) -> _Move:
    """Back to `relay` after a probe ends (the next regular probe time is kept on failure)."""
    after = attrs.evolve(
        state,
        phase=PathPhase.RELAY,
        probe_deadline=None,
        successes=successes,
        next_probe_at=state.next_probe_at if next_probe_at is None else next_probe_at,
    )
    return _Move(reason, after)


def _on_relay_probing(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    move = _relay_exit(policy, state, obs)
    deadline = move.state.probe_deadline
    if move.reason is not None or deadline is None or obs.now < deadline:
        return move
    return _probe_over(move.state, Reason.PROBE_TIMED_OUT, successes=0)


def _on_probe_result(policy: PathPolicy, state: PeerPath, result: ProbeResult) -> _Move:
    if result.probe != state.probe_seq:
        raise StaleProbeResult(f"probe {result.probe} is not the outstanding {state.probe_seq}")
    if not result.ok:
        return _probe_over(state, Reason.PROBE_FAILED, successes=0)
    successes = state.successes + 1
    if successes >= policy.failback_successes:
        fresh = _enter(
            policy, attrs.evolve(state, direct_worked=True), PathPhase.DIRECT_TRYING, result.now
        )
        return _Move(Reason.DIRECT_HEALTHY, fresh)
    return _probe_over(
        state,
        Reason.PROBE_SUCCEEDED,
        successes=successes,
        next_probe_at=result.now + policy.confirm_interval,
    )


HANDLERS: Final[Mapping[tuple[PathPhase, type[PathInput]], Callable[..., _Move]]] = {
    (_P.DIRECT_TRYING, Observation): _on_direct_trying,
    (_P.DIRECT_UP, Observation): _on_direct_up,
    (_P.DIRECT_PROBING, Observation): _on_direct_probing,
    (_P.DIRECT_PROBING, ProbeResult): _on_direct_probe_result,
    (_P.DIRECT_UNREACHABLE, Observation): _on_direct_unreachable,
    (_P.RELAY, Observation): _on_relay,
    (_P.RELAY_PROBING, Observation): _on_relay_probing,
    (_P.RELAY_PROBING, ProbeResult): _on_probe_result,
}
"""Every legal (phase, input type); anything else raises and leaves the state as it was."""


def step(policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
    """Feed one input: the next state, at most one transition, and the commands to run."""
    handler = HANDLERS.get((state.phase, type(event)))
    if handler is None:
        error = StaleProbeResult if isinstance(event, ProbeResult) else PathTransitionError
        raise error(f"{type(event).__name__} is not accepted in phase {state.phase.value}")
    now = event.now
    if now < state.as_of:
        raise PathTransitionError(f"time went backwards: {now} < {state.as_of}")
    reason, moved = handler(policy, attrs.evolve(state, as_of=now), event)
    if reason is None:
        if moved.phase is not state.phase:
            raise PathTransitionError("a handler changed phase without a reason")
        return Step(moved, (), ())
    to_phase = EDGES.get((state.phase, reason))
    if to_phase is None or moved.phase not in (state.phase, to_phase):
        raise PathTransitionError(f"no edge from {state.phase.value} on {reason.value}")
    next_state = attrs.evolve(moved, phase=to_phase)
    transition = Transition(at=now, from_phase=state.phase, to_phase=to_phase, reason=reason)
    return Step(next_state, (transition,), _commands(state, next_state))


def _commands(before: PeerPath, after: PeerPath) -> tuple[Command, ...]:
    """Effects follow from the state change alone, so they cannot disagree with it."""
    commands: list[Command] = []
    if before.path is not after.path:
        commands.append(UsePath(after.path))
    if after.probe_deadline is not None and not before.awaiting_probe:
        commands.append(ProbeDirect(probe=after.probe_seq, deadline=after.probe_deadline))
    return tuple(commands)
