"""Endpoint trials (`rustynet.domain.path.trial`): the punch order, confirmation by a handshake
only, the bounded revert, the bounded pre-punches, and the policy's limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rustynet.domain.candidates import Candidate, CandidateKind
from rustynet.domain.path.phases import PathPolicyError
from rustynet.domain.path.trial import (
    MAX_PUNCH_PACKETS,
    Punch,
    Rekick,
    TrialPolicy,
    TrialState,
    observe,
    punch_order,
    reorder,
)
from rustynet.domain.tunnel import UnderlayEndpoint

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = TrialPolicy()
L, R, C = CandidateKind.LOCAL, CandidateKind.REFLEXIVE, CandidateKind.CONFIGURED


def ep(text: str) -> UnderlayEndpoint:
    return UnderlayEndpoint.parse(text)


def cand(text: str, kind: CandidateKind) -> Candidate:
    return Candidate(ep(text), kind)


PEER = (
    cand("198.51.100.18:41641", L),
    cand("[2001:db8::18]:41641", L),
    cand("203.0.113.20:41641", R),
    cand("203.0.113.21:41641", C),
)


def test_order_behind_another_nat_is_ipv6_then_mapped_then_local() -> None:
    own = (cand("198.51.100.34:41641", L), cand("203.0.113.30:41641", R))
    assert punch_order(own, PEER) == (
        ep("[2001:db8::18]:41641"),
        ep("203.0.113.21:41641"),  # configured before reflexive
        ep("203.0.113.20:41641"),
        ep("198.51.100.18:41641"),
    )


def test_order_behind_the_same_nat_tries_the_lan_first() -> None:
    """Two nodes behind one NAT share a public address: their local candidates come first
    (a hairpin through the router may not exist)."""
    own = (cand("198.51.100.19:41641", L), cand("203.0.113.20:40000", R))
    assert punch_order(own, PEER)[0] == ep("198.51.100.18:41641")


def test_order_without_own_candidates_keeps_local_last() -> None:
    assert punch_order((), PEER)[-1] == ep("198.51.100.18:41641")


def _started() -> TrialState:
    order = punch_order((), PEER)
    state, effects = TrialState.start(POLICY, order, T0)
    assert effects == (Punch(order, POLICY.punch_packets),)
    return state


def test_a_handshake_after_the_attempt_began_confirms_the_endpoint() -> None:
    state = _started()
    on_trial = state.endpoint
    nxt, effects = observe(
        POLICY, state, T0 + timedelta(milliseconds=300), T0 + timedelta(milliseconds=200), on_trial
    )
    assert nxt.confirmed == on_trial
    assert effects == ()


def test_a_handshake_from_before_the_attempt_confirms_nothing() -> None:
    state = _started()
    nxt, _ = observe(POLICY, state, T0 + timedelta(milliseconds=300), T0, state.endpoint)
    assert nxt.confirmed is None
    nxt, _ = observe(
        POLICY, state, T0 + timedelta(milliseconds=300), T0 - timedelta(seconds=9), state.endpoint
    )
    assert nxt.confirmed is None


def test_a_handshake_that_roamed_the_tunnel_confirms_where_it_came_from() -> None:
    """Full cone ↔ hard: the peer's handshake came from a port no candidate names; the tunnel
    roamed there on the authenticated handshake, and that endpoint stands."""
    state = _started()
    roamed = ep("203.0.113.20:61234")
    nxt, _ = observe(
        POLICY, state, T0 + timedelta(seconds=1), T0 + timedelta(milliseconds=900), roamed
    )
    assert nxt.confirmed == roamed
    assert nxt.endpoint == roamed


def test_an_unconfirmed_candidate_is_reverted_after_its_attempts() -> None:
    """No handshake: re-kick (and punch again) every attempt_timeout, the next candidate after
    `attempts`; the tunnel never stays longer on an endpoint nothing confirmed."""
    state = _started()
    first = state.endpoint
    now = T0
    for attempt in range(2, POLICY.attempts + 1):
        now += POLICY.attempt_timeout
        state, effects = observe(POLICY, state, now, None, state.endpoint)
        assert (state.attempt, state.endpoint) == (attempt, first)
        assert Rekick() in effects
    now += POLICY.attempt_timeout
    state, effects = observe(POLICY, state, now, None, state.endpoint)
    assert state.endpoint != first
    assert state.index == 1
    assert any(isinstance(e, Punch) for e in effects)


def test_nothing_moves_before_the_attempt_ends() -> None:
    state = _started()
    nxt, effects = observe(
        POLICY, state, T0 + POLICY.attempt_timeout - timedelta(milliseconds=1), None, None
    )
    assert (nxt, effects) == (state, ())


def test_after_a_full_round_attempts_slow_to_the_retry_interval() -> None:
    state, _ = TrialState.start(POLICY, (ep("203.0.113.20:41641"),), T0)
    now = T0
    for _ in range(POLICY.attempts):
        now += POLICY.attempt_timeout
        state, _ = observe(POLICY, state, now, None, None)
    assert state.round == 1
    assert state.due(POLICY) == now + POLICY.retry_timeout
    same, effects = observe(POLICY, state, now + POLICY.attempt_timeout, None, None)
    assert (same, effects) == (state, ())


def test_a_confirmed_endpoint_follows_the_tunnel_and_never_reverts() -> None:
    state = _started()
    state, _ = observe(
        POLICY, state, T0 + timedelta(seconds=1), T0 + timedelta(milliseconds=500), state.endpoint
    )
    later = T0 + timedelta(minutes=5)
    kept, effects = observe(POLICY, state, later, None, state.endpoint)
    assert (kept, effects) == (state, ())
    moved = ep("203.0.113.20:50000")  # a NAT rebinding: the tunnel followed authenticated packets
    followed, _ = observe(POLICY, state, later, None, moved)
    assert followed.endpoint == moved
    assert followed.due(POLICY) is None


def test_new_candidates_restart_an_unconfirmed_trial_and_keep_a_confirmed_one() -> None:
    state = _started()
    order = (ep("203.0.113.40:41641"),)
    fresh, effects = reorder(POLICY, state, order, T0 + timedelta(seconds=2))
    assert (fresh.endpoint, fresh.started) == (order[0], T0 + timedelta(seconds=2))
    assert effects == (Punch(order, POLICY.punch_packets),)
    confirmed, _ = observe(
        POLICY, state, T0 + timedelta(seconds=1), T0 + timedelta(milliseconds=500), state.endpoint
    )
    kept, effects = reorder(POLICY, confirmed, order, T0 + timedelta(seconds=2))
    assert kept.endpoint == confirmed.endpoint
    assert effects == (Punch(order, POLICY.punch_packets),)


def test_a_handshake_seen_in_the_tick_the_candidates_change_still_confirms() -> None:
    """The peer's reflexive candidate often arrives in the very tick the first handshake is
    seen: that handshake vouches for where the tunnel is, even though the trial would start
    over (a restarted trial sees no fresher handshake for two minutes)."""
    state = _started()
    roamed = ep("203.0.113.12:41641")  # the tunnel moved there on the peer's handshake
    order = (roamed, *state.order)
    now = T0 + timedelta(milliseconds=800)
    seen = T0 + timedelta(milliseconds=700)
    kept, effects = reorder(POLICY, state, order, now, last_handshake=seen, current=roamed)
    assert (kept.confirmed, kept.endpoint, kept.order) == (roamed, roamed, order)
    assert effects == (Punch(order, POLICY.punch_packets),)
    # A handshake from before the attempt began vouches for nothing: the trial starts over.
    old = T0 - timedelta(seconds=1)
    fresh, _ = reorder(POLICY, state, order, now, last_handshake=old, current=roamed)
    assert (fresh.confirmed, fresh.started, fresh.endpoint) == (None, now, order[0])


def test_no_candidates_no_endpoint_no_packets() -> None:
    state, effects = TrialState.start(POLICY, (), T0)
    assert (state.endpoint, effects) == (None, ())
    state, effects = observe(POLICY, state, T0 + timedelta(seconds=9), None, None)
    assert effects == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt_timeout": timedelta(0)},
        {"attempts": 0},
        {"punch_packets": -1},
        {"punch_packets": MAX_PUNCH_PACKETS + 1},
        {"retry_timeout": timedelta(milliseconds=100)},
    ],
)
def test_policy_limits(kwargs: dict[str, object]) -> None:
    with pytest.raises(PathPolicyError):
        TrialPolicy(**kwargs)  # type: ignore[arg-type]
