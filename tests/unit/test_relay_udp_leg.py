"""A relayed peer's UDP relay leg (`domain.path.relay_udp`): ask → try (binds, nudges) → up on
the tunnel's own evidence only → rest and retry; never `relay-udp` on a counter that grew while
the plan itself had just pointed the tunnel there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs

from rustynet.domain.path.relay_udp import (
    Bind,
    LegPhase,
    Nudge,
    Read,
    UdpLeg,
    UdpLegPolicy,
    granted,
    observe,
    refused,
)
from rustynet.domain.tunnel import UnderlayEndpoint

T0 = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
POLICY = UdpLegPolicy(stale=timedelta(seconds=12))
RELAY = UnderlayEndpoint.parse("203.0.113.50:40001")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def trying() -> UdpLeg:
    leg, effects = granted(POLICY, UdpLeg.asking(T0), RELAY, T0)
    assert leg.phase is LegPhase.TRYING
    assert leg.points_at_relay
    assert effects == (Bind(leg.counter), Nudge())
    return leg


def test_a_grant_starts_a_trial_with_a_bind_and_a_nudge_then_more_on_schedule() -> None:
    leg = trying()
    first = leg.counter
    assert leg.due(POLICY) == at(0.3)
    leg, effects = observe(POLICY, leg, at(0.3), None)
    assert effects == (Bind(leg.counter), Nudge())
    assert leg.counter > first  # every bind counts up: the relay takes only a higher counter
    leg, effects = observe(POLICY, leg, at(0.6), None)
    assert effects == (Bind(leg.counter), Nudge())
    assert leg.due(POLICY) == at(1.0)
    leg, effects = observe(POLICY, leg, at(0.9), None)
    assert effects == ()
    assert leg.phase is LegPhase.TRYING


def test_two_reads_at_the_relay_with_a_grown_counter_are_evidence() -> None:
    leg = trying()
    leg, _ = observe(POLICY, leg, at(0.2), Read(at_relay=True, rx=100))
    assert leg.phase is LegPhase.TRYING
    leg, _ = observe(POLICY, leg, at(0.4), Read(at_relay=True, rx=100))
    assert leg.phase is LegPhase.TRYING  # nothing came
    leg, _ = observe(POLICY, leg, at(0.7), Read(at_relay=True, rx=148))
    assert leg.phase is LegPhase.UP
    assert leg.points_at_relay
    assert leg.evidence == at(0.7)


def test_a_counter_that_grew_while_the_tunnel_was_elsewhere_proves_nothing() -> None:
    """The trial's first plan points the tunnel at the relay: a read before it saw the bridge,
    so packets counted in between came through the bridge (the plan moved the endpoint)."""
    leg = trying()
    leg = attrs_read(leg, Read(at_relay=False, rx=100))
    leg, _ = observe(POLICY, leg, at(0.3), Read(at_relay=True, rx=200))
    assert leg.phase is LegPhase.TRYING
    # Packets through the bridge while trying: the tunnel roamed back to the bridge.
    leg, _ = observe(POLICY, leg, at(0.6), Read(at_relay=False, rx=300))
    assert leg.phase is LegPhase.TRYING


def attrs_read(leg: UdpLeg, read: Read) -> UdpLeg:
    """The leg as if its previous read had been `read`."""
    return attrs.evolve(leg, read=read)


def test_no_evidence_in_the_trial_rests_on_the_bridge_and_retries_with_backoff() -> None:
    leg = trying()
    leg, _ = observe(POLICY, leg, at(1.0), Read(at_relay=True, rx=0))
    assert leg.phase is LegPhase.RESTING
    assert not leg.points_at_relay
    assert leg.retry == POLICY.retry_first
    assert leg.due(POLICY) == at(11.0)
    assert not leg.retry_due(at(10.9))
    leg, effects = observe(POLICY, leg, at(11.0), Read(at_relay=False, rx=0))
    # The retry asks the relay again (the caller's part: the allocation may be a new one).
    assert (leg.phase, effects) == (LegPhase.RESTING, ())
    assert leg.retry_due(at(11.0))
    leg = regranted(leg, at(11.0))
    assert leg.phase is LegPhase.TRYING
    leg, _ = observe(POLICY, leg, at(12.0), Read(at_relay=True, rx=0))
    assert leg.retry == 2 * POLICY.retry_first
    for _ in range(10):
        leg = one_more_failed_trial(leg)
    assert leg.retry == POLICY.retry_max


def regranted(leg: UdpLeg, now: datetime) -> UdpLeg:
    """The caller's re-ask at a due retry, answered at once (the backoff carries over)."""
    asking = attrs.evolve(UdpLeg.asking(now), retry=leg.retry)
    tried, effects = granted(POLICY, asking, RELAY, now)
    assert effects == (Bind(tried.counter), Nudge())
    return tried


def one_more_failed_trial(leg: UdpLeg) -> UdpLeg:
    """A due retry, re-asked and granted, whose trial sees nothing."""
    leg = regranted(leg, leg.since + (leg.retry or timedelta(0)))
    leg, _ = observe(POLICY, leg, leg.since + POLICY.trial, None)
    return leg


def test_an_up_leg_rests_at_once_when_the_peers_packets_come_through_the_bridge() -> None:
    """The peer went back to the WebSocket (its relay session, and the allocation, may be
    gone): its packets move our tunnel to the bridge although the plan pointed at the UDP port.
    Rest at once instead of sending into the old port until the evidence goes stale."""
    leg = trying()
    leg, _ = observe(POLICY, leg, at(0.2), Read(at_relay=True, rx=0))
    leg, effects = observe(POLICY, leg, at(0.5), Read(at_relay=True, rx=10))
    assert leg.phase is LegPhase.UP
    assert Nudge() in effects  # our next packet through the port brings a late peer over
    # A moment after the evidence: the peer may be about to follow; stay.
    leg, _ = observe(POLICY, leg, at(1.5), Read(at_relay=False, rx=60, at_bridge=True))
    assert leg.phase is LegPhase.UP
    leg, _ = observe(POLICY, leg, at(7.5), Read(at_relay=False, rx=90, at_bridge=True))
    assert leg.phase is LegPhase.RESTING
    assert not leg.points_at_relay
    assert leg.retry == POLICY.retry_first
    # A read elsewhere without new packets (a probe window's candidate) changes nothing.
    up = trying()
    up, _ = observe(POLICY, up, at(0.2), Read(at_relay=True, rx=0))
    up, _ = observe(POLICY, up, at(0.5), Read(at_relay=True, rx=10))
    up, _ = observe(POLICY, up, at(7.5), Read(at_relay=False, rx=60, at_bridge=False))
    assert up.phase is LegPhase.UP


def test_while_resting_the_tunnel_moving_to_the_relay_by_itself_is_evidence() -> None:
    """The plan pointed at the bridge; the tunnel moved to the relay address on authenticated
    packets (the peer sends through the UDP port and it works): up at once."""
    leg = trying()
    leg, _ = observe(POLICY, leg, at(1.0), Read(at_relay=False, rx=10))
    assert leg.phase is LegPhase.RESTING
    leg, _ = observe(POLICY, leg, at(2.0), Read(at_relay=True, rx=60))
    assert leg.phase is LegPhase.UP
    assert leg.retry is None


def test_up_stays_on_evidence_rebinds_and_rests_when_it_goes_stale() -> None:
    leg = trying()
    leg, _ = observe(POLICY, leg, at(0.2), Read(at_relay=True, rx=0))
    leg, _ = observe(POLICY, leg, at(0.5), Read(at_relay=True, rx=10))
    assert leg.phase is LegPhase.UP
    rx = 10
    for second in range(2, 30, 5):  # keepalives every 5 s
        rx += 32
        leg, effects = observe(POLICY, leg, at(second), Read(at_relay=True, rx=rx))
        assert leg.phase is LegPhase.UP
        if effects:
            assert effects == (Bind(leg.counter),)
    assert leg.bound is not None
    assert leg.bound > at(20)  # re-bound within rebind_every
    quiet_from = leg.evidence
    assert quiet_from is not None
    leg, _ = observe(POLICY, leg, quiet_from + POLICY.stale, Read(at_relay=True, rx=rx))
    assert leg.phase is LegPhase.UP
    leg, _ = observe(
        POLICY, leg, quiet_from + POLICY.stale + timedelta(seconds=1), Read(at_relay=True, rx=rx)
    )
    assert leg.phase is LegPhase.RESTING
    assert not leg.points_at_relay


def test_a_refused_ask_rests_with_no_endpoint() -> None:
    leg = refused(POLICY, UdpLeg.asking(T0), T0)
    assert leg.phase is LegPhase.RESTING
    assert leg.endpoint is None
    assert not leg.points_at_relay
    assert leg.due(POLICY) == at(10.0)
    leg, effects = observe(POLICY, leg, at(11.0), Read(at_relay=False, rx=5))
    assert (leg.phase, effects) == (LegPhase.RESTING, ())  # the caller asks again


def test_bind_counters_stay_above_an_earlier_run_of_the_node() -> None:
    """Counters start at the wall clock in ms: a restarted node is never taken for a replay."""
    leg = trying()
    assert leg.counter >= int(T0.timestamp() * 1000)
