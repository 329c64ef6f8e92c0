"""Endpoint trials: which of a peer's signed candidates the tunnel sends to while the direct path
is being tried, and when an endpoint stands.

The one rule (authenticated before trusted): the tunnel is only ever pointed at an endpoint the
signed peer map lists for the peer (a candidate), or at the endpoint the tunnel itself moved to
when an authenticated handshake completed there (the tunnel roams to the source of a valid
handshake). A candidate is on trial until a handshake completes with the tunnel pointed at it;
one that sees no handshake within `TrialPolicy.attempt_timeout`, `attempts` times in a row, is
dropped for the next one (reverted: the tunnel never keeps sending to an endpoint nothing
confirmed). Pre-punch datagrams go only to the peer's candidates, at most `punch_packets` to
each per attempt, so a node sends a bounded number of packets to addresses only the map vouched
for and none at all to an address nothing vouched for.

Order (`punch_order`): candidates on our own side of a NAT first (the peer's `local` IPv4
candidates when we share a public address with it: two nodes behind one NAT talk over their
LAN, a hairpin through the router may not exist), then IPv6 (no NAT maps it), then what the
peer's NAT maps to it (`reflexive`, and what its operator typed, `configured`), then its other
`local` candidates (reachable only on a shared LAN or routed network).

Theory of operation. `TrialState.start` begins at the first candidate; `observe` is fed every
tick with the tunnel's latest handshake and current endpoint for the peer and returns the next
state and its effects: `Punch` (send pre-punch datagrams to these endpoints now, from the
tunnel's port, so that our NAT lets the peer's handshake in) at every attempt's start, and
`Rekick` (start a fresh session now: the side that initiates resends its handshake at once
instead of after the tunnel's 5 s retry) at every attempt after the first. A fresh handshake
(strictly after the attempt began) confirms the endpoint the tunnel is pointed at; a confirmed
endpoint stands (where the tunnel then roams, on authenticated packets only, is followed)
until the path controller starts a new direct attempt, which starts a new trial. A change of
the peer's candidates restarts an unconfirmed trial and keeps a confirmed one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Final, TypeAlias

import attrs

from rustynet.domain.candidates import Candidate, CandidateKind
from rustynet.domain.path.phases import PathPolicyError, PathTransitionError
from rustynet.domain.tunnel import UnderlayEndpoint

DEFAULT_ATTEMPT_TIMEOUT: Final = timedelta(milliseconds=500)
"""A handshake across two NATs takes one round trip once both mappings are open (well under
100 ms on any sane path); 0.5 s leaves room for the peer's pre-punch to arrive (both ends learn
the candidates from the same long-poll wake-up), and a re-kick after it costs far less than the
tunnel's own 5 s retry."""

DEFAULT_ATTEMPTS: Final = 3
"""Attempts per candidate: the first handshake may reach the peer's NAT before the peer's
pre-punch opened it; the re-kicks after it find it open (three cover a peer whose map came up
to 1 s later)."""

DEFAULT_RETRY_TIMEOUT: Final = timedelta(seconds=5)
"""After one full round over the candidates without a handshake, attempts slow down to the
tunnel's own retry interval: a peer that stays unreachable costs one handshake and a few
pre-punches per candidate every 5 s, not every `attempt_timeout`."""

DEFAULT_PUNCH_PACKETS: Final = 2
"""Datagrams to each candidate per attempt: one may be lost; two open the mapping."""

MAX_PUNCH_PACKETS: Final = 4
"""The hard bound a policy may not exceed (datagrams per candidate per attempt)."""


@attrs.frozen
class TrialPolicy:
    """The bounds of an endpoint trial (defaults justified at their constants)."""

    attempt_timeout: timedelta = DEFAULT_ATTEMPT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    punch_packets: int = DEFAULT_PUNCH_PACKETS
    retry_timeout: timedelta = DEFAULT_RETRY_TIMEOUT

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.attempt_timeout, timedelta) or self.attempt_timeout <= timedelta(0):
            raise PathPolicyError("attempt_timeout must be a positive timedelta")
        if (
            not isinstance(self.retry_timeout, timedelta)
            or self.retry_timeout < self.attempt_timeout
        ):
            raise PathPolicyError("retry_timeout must be a timedelta >= attempt_timeout")
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise PathPolicyError("attempts must be at least 1")
        if not isinstance(self.punch_packets, int) or self.punch_packets < 0:
            raise PathPolicyError("punch_packets must be a non-negative int")
        if self.punch_packets > MAX_PUNCH_PACKETS:
            raise PathPolicyError(f"punch_packets must be at most {MAX_PUNCH_PACKETS}")

    def revert_bound(self) -> timedelta:
        """Longest an unconfirmed candidate stays the tunnel's endpoint (plus one tick)."""
        return self.retry_timeout * self.attempts

    def timeout(self, state: TrialState) -> timedelta:
        """How long the current attempt lasts: quick in the first round, slow after it."""
        return self.attempt_timeout if state.round == 0 else self.retry_timeout


# --- order -----------------------------------------------------------------------------------


def _public(candidates: Iterable[Candidate]) -> frozenset[object]:
    return frozenset(
        c.endpoint.address
        for c in candidates
        if c.kind is not CandidateKind.LOCAL and c.endpoint.address.version == 4
    )


def _rank(candidate: Candidate, same_nat: bool) -> int:
    v6 = candidate.endpoint.address.version == 6
    if candidate.kind is CandidateKind.LOCAL and not v6:
        return 0 if same_nat else 3
    if v6:
        return 1
    return 2


def punch_order(
    own: Iterable[Candidate], peer: Iterable[Candidate]
) -> tuple[UnderlayEndpoint, ...]:
    """The peer's candidate endpoints in the order to try them (see the module docstring);
    ties keep the map's order, configured before reflexive."""
    listed = tuple(peer)
    same_nat = bool(_public(own) & _public(listed))
    kinds = (CandidateKind.CONFIGURED, CandidateKind.REFLEXIVE, CandidateKind.LOCAL)
    ranked = sorted(
        enumerate(listed),
        key=lambda ic: (_rank(ic[1], same_nat), kinds.index(ic[1].kind), ic[0]),
    )
    seen: dict[UnderlayEndpoint, None] = {}
    for _, candidate in ranked:
        seen.setdefault(candidate.endpoint, None)
    return tuple(seen)


# --- the trial -------------------------------------------------------------------------------


@attrs.frozen
class Punch:
    """Send `count` pre-punch datagrams from the tunnel's port to each of `targets` now."""

    targets: tuple[UnderlayEndpoint, ...]
    count: int


@attrs.frozen
class Rekick:
    """Start a fresh session with the peer now (the initiating side handshakes at once)."""


TrialEffect: TypeAlias = Punch | Rekick


@attrs.frozen
class TrialState:
    """One peer's trial: the candidates in order, the one on trial, or the confirmed endpoint."""

    order: tuple[UnderlayEndpoint, ...]
    index: int
    attempt: int
    started: datetime
    """When the current attempt began (a handshake must be strictly newer to count)."""
    round: int = 0
    """Full rounds over the candidates completed without a handshake."""
    confirmed: UnderlayEndpoint | None = None
    confirmed_at: datetime | None = None

    def __attrs_post_init__(self) -> None:
        if self.order and not 0 <= self.index < len(self.order):
            raise PathTransitionError("the candidate on trial is one of the order")
        if self.attempt < 1:
            raise PathTransitionError("attempts count from 1")
        if (self.confirmed is None) != (self.confirmed_at is None):
            raise PathTransitionError("a confirmed endpoint has its handshake time")

    @classmethod
    def start(
        cls, policy: TrialPolicy, order: tuple[UnderlayEndpoint, ...], now: datetime
    ) -> tuple[TrialState, tuple[TrialEffect, ...]]:
        """A new trial at the first candidate, punching toward all of them."""
        state = cls(order=order, index=0, attempt=1, started=now)
        return state, _punch(policy, order)

    @classmethod
    def already_confirmed(
        cls,
        order: tuple[UnderlayEndpoint, ...],
        endpoint: UnderlayEndpoint,
        when: datetime,
        now: datetime,
    ) -> TrialState:
        """A trial that starts with `endpoint` already confirmed (at `when`): the tunnel took
        authenticated packets there before the trial began (the path controller's
        `direct-seen`)."""
        return cls(
            order=order,
            index=0,
            attempt=1,
            started=now,
            confirmed=endpoint,
            confirmed_at=min(when, now),
        )

    def due(self, policy: TrialPolicy) -> datetime | None:
        """When the current attempt ends if nothing is seen (None: confirmed, nothing due)."""
        return None if self.confirmed is not None else self.started + policy.timeout(self)

    @property
    def endpoint(self) -> UnderlayEndpoint | None:
        """Where the tunnel should send to the peer now (None: no candidate at all)."""
        if self.confirmed is not None:
            return self.confirmed
        return self.order[self.index] if self.order else None


def _punch(policy: TrialPolicy, order: tuple[UnderlayEndpoint, ...]) -> tuple[TrialEffect, ...]:
    if not order or policy.punch_packets == 0:
        return ()
    return (Punch(order, policy.punch_packets),)


def observe(
    policy: TrialPolicy,
    state: TrialState,
    now: datetime,
    last_handshake: datetime | None,
    current: UnderlayEndpoint | None,
) -> tuple[TrialState, tuple[TrialEffect, ...]]:
    """One tick: confirm on a fresh handshake, follow an authenticated roam, or move on.

    `current` is the tunnel's endpoint for the peer on the direct path (None when it has
    none, or it is not a direct one): the tunnel moves it only to the source of an
    authenticated packet, so once a handshake confirmed the peer, wherever the tunnel moved
    is followed (a NAT rebinding, the peer roaming)."""
    if state.confirmed is not None:
        if current is not None and current != state.confirmed:
            return attrs.evolve(state, confirmed=current), ()
        return state, ()
    fresh = last_handshake is not None and min(last_handshake, now) > state.started
    if fresh and last_handshake is not None and current is not None:
        # A completed handshake vouches for the endpoint the tunnel uses now: the candidate
        # on trial, or where the tunnel roamed to when the handshake came from elsewhere.
        when = min(last_handshake, now)
        return attrs.evolve(state, confirmed=current, confirmed_at=when), ()
    if now - state.started < policy.timeout(state):
        return state, ()
    if not state.order:
        return attrs.evolve(state, started=now), ()
    if state.attempt < policy.attempts:
        nxt = attrs.evolve(state, attempt=state.attempt + 1, started=now)
    else:
        index = (state.index + 1) % len(state.order)
        done = state.round + (index == 0)
        nxt = attrs.evolve(state, index=index, attempt=1, started=now, round=done)
    return nxt, (*_punch(policy, state.order), Rekick())


def reorder(
    policy: TrialPolicy,
    state: TrialState,
    order: tuple[UnderlayEndpoint, ...],
    now: datetime,
    *,
    last_handshake: datetime | None = None,
    current: UnderlayEndpoint | None = None,
) -> tuple[TrialState, tuple[TrialEffect, ...]]:
    """The peer's candidates changed: a confirmed endpoint stands (punch the new ones so a
    roamed peer gets in); an unconfirmed trial starts over on the new order.

    A handshake that completed during the attempt now ending is taken first (`observe`): the
    peer's candidates often change (its reflexive one arrives) in the very tick in which the
    first handshake is seen, and a trial started over after it would never see a fresh one
    (the session rekeys only every two minutes; a responder never re-kicks), so it would keep
    pointing the tunnel away from a working endpoint."""
    if order == state.order:
        return state, ()
    if state.confirmed is None:
        state, _ = observe(policy, state, now, last_handshake, current)
    if state.confirmed is not None:
        return attrs.evolve(state, order=order, index=0), _punch(policy, order)
    return TrialState.start(policy, order, now)


__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_PUNCH_PACKETS",
    "DEFAULT_RETRY_TIMEOUT",
    "MAX_PUNCH_PACKETS",
    "Punch",
    "Rekick",
    "TrialEffect",
    "TrialPolicy",
    "TrialState",
    "observe",
    "punch_order",
    "reorder",
]
