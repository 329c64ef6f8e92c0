"""The node's punching use case (`application/node/punching.py`): what counts as the tunnel's
evidence of a direct path, the relayed probe window (point, punch, nudge, then leave the
endpoint to the tunnel), and who re-kicks a trial."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from rustynet.application.node.punching import NUDGE_DELAY, Punching
from rustynet.application.node.settings import AgentSettings
from rustynet.domain.candidates import Candidate
from rustynet.domain.keys import TunnelKey, TunnelKeyScheme
from rustynet.domain.netmap import PeerEntry
from rustynet.domain.path import PathPhase, PeerPath
from rustynet.domain.tunnel import PeerStats, UnderlayEndpoint

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
BRIDGE = UnderlayEndpoint.parse("127.0.0.1:50000")
PEER_AT = UnderlayEndpoint.parse("203.0.113.20:41641")


def key(n: int) -> TunnelKey:
    return TunnelKey(TunnelKeyScheme.X25519, bytes([n]) * 32)


PEER = PeerEntry(
    id="node_2",
    name="n2",
    overlay_addresses=("100.64.0.2/32",),
    tunnel_key=key(2),
    tunnel_key_expires_at=T0 + timedelta(days=30),
    candidates=(
        Candidate.parse("203.0.113.20:41641", "reflexive"),
        Candidate.parse("198.51.100.18:41641", "local"),
    ),
)


class Recorder:
    """A `PrePunchPort` that records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[tuple[UnderlayEndpoint, ...], int]] = []

    async def punch(self, targets: tuple[UnderlayEndpoint, ...], count: int) -> int:
        self.sent.append((targets, count))
        return len(targets) * count

    async def send(self, target: UnderlayEndpoint, payload: bytes) -> bool:
        raise AssertionError("punching sends no relay bind")


def punching(own: int = 1) -> tuple[Punching, Recorder]:
    recorder = Recorder()
    return Punching(AgentSettings(interface="rn0"), recorder, lambda: key(own), tuple), recorder


def stats(rx: int, endpoint: UnderlayEndpoint) -> PeerStats:
    return PeerStats(key(2), T0, rx, 0, endpoint)


def test_direct_packets_are_evidence_only_on_reads_after_the_tunnel_was_pointed() -> None:
    """The first read after a plan pointed the tunnel at a direct endpoint proves nothing (a
    relayed packet may have arrived just before the plan, and the plan moved the endpoint
    back); growth between two later reads on a direct endpoint does; the bridge never does."""
    p, _ = punching()
    asyncio.run(p.open_window(PEER, T0 + timedelta(seconds=2), T0))
    assert not p.read(PEER.id, stats(100, BRIDGE), False, T0)
    later = T0 + timedelta(milliseconds=10)
    assert not p.read(PEER.id, stats(200, PEER_AT), True, later)  # counter from before
    nudged = T0 + NUDGE_DELAY
    assert p.relayed_endpoint(PEER, BRIDGE, nudged) is None  # left to the tunnel from here
    assert p.read(PEER.id, stats(300, PEER_AT), True, nudged + timedelta(milliseconds=200))
    after = nudged + timedelta(milliseconds=400)
    assert not p.read(PEER.id, stats(300, PEER_AT), True, after)  # nothing arrived
    assert p.read(PEER.id, stats(400, PEER_AT), True, after + timedelta(milliseconds=200))
    assert not p.read(PEER.id, stats(500, BRIDGE), False, after + timedelta(milliseconds=400))


def test_a_roam_while_relayed_and_unpointed_is_evidence() -> None:
    """Outside a window the tunnel points at the bridge: a direct endpoint with new packets is
    where the tunnel moved itself, on packets that decrypted."""
    p, _ = punching()
    assert not p.read(PEER.id, stats(100, BRIDGE), False, T0)
    assert p.read(PEER.id, stats(150, PEER_AT), True, T0 + timedelta(seconds=1))
    assert p.alive(PEER.id, T0 + timedelta(seconds=1) + p.evidence_window)
    assert not p.alive(PEER.id, T0 + timedelta(seconds=2) + p.evidence_window)


def test_a_window_points_punches_nudges_then_leaves_the_endpoint_to_the_tunnel() -> None:
    p, recorder = punching()
    deadline = T0 + timedelta(seconds=2)
    asyncio.run(p.open_window(PEER, deadline, T0))
    assert recorder.sent == [((PEER_AT, UnderlayEndpoint.parse("198.51.100.18:41641")), 2)]
    assert p.quiet_now(T0) == {PEER.tunnel_key}  # keepalive off in the opening plan
    assert p.relayed_endpoint(PEER, BRIDGE, T0) == PEER_AT
    assert p.quiet_now(T0 + NUDGE_DELAY) == frozenset()  # back on: one keepalive goes out
    assert p.relayed_endpoint(PEER, BRIDGE, T0 + NUDGE_DELAY) is None
    assert p.relayed_endpoint(PEER, BRIDGE, T0 + timedelta(seconds=1)) is None
    assert p.relayed_endpoint(PEER, BRIDGE, deadline) == BRIDGE
    asyncio.run(p.open_window(PEER, deadline + timedelta(seconds=10), deadline))
    second = p.relayed_endpoint(PEER, BRIDGE, deadline)
    assert second == UnderlayEndpoint.parse("198.51.100.18:41641")  # the next candidate


def _trying() -> PeerPath:
    return PeerPath.start(T0)


def test_only_the_lower_key_re_kicks_a_trial() -> None:
    for own, restarts in ((1, {PEER.tunnel_key}), (3, set())):
        p, _ = punching(own)
        attempt = _trying()
        asyncio.run(p.direct_endpoint(PEER, attempt, None, None, T0))
        later = T0 + AgentSettings(interface="rn0").trial_policy.attempt_timeout
        asyncio.run(p.direct_endpoint(PEER, attempt, None, None, later))
        assert p.take_restarts() == restarts


def test_a_trial_starting_on_a_live_session_starts_confirmed() -> None:
    """Relay → direct-up on direct evidence: the trial keeps where the tunnel is."""
    p, recorder = punching()
    up = PeerPath(
        phase=PathPhase.DIRECT_UP,
        as_of=T0 + timedelta(seconds=5),
        since=T0,
        last_seen=T0 + timedelta(seconds=4),
        next_probe_at=T0 + timedelta(seconds=10),
    )
    roamed = UnderlayEndpoint.parse("203.0.113.20:61000")
    chosen = asyncio.run(p.direct_endpoint(PEER, up, None, roamed, T0 + timedelta(seconds=5)))
    assert chosen == roamed
    assert recorder.sent == []


def test_an_unconfirmed_relay_stint_is_re_kicked_each_second_three_times_by_the_initiator() -> None:
    """Both ends switch to the relay at once; the first initiation may arrive before the peer
    holds the map: the side that speaks first starts a fresh session after 1, 2 and 3 s."""
    first, _ = punching(own=1)  # key 1 sorts below the peer's: it speaks first
    kicked = []
    for tenth in range(60):
        now = T0 + timedelta(seconds=tenth / 10)
        first.relay_unconfirmed(PEER, T0, now)
        if first.take_restarts():
            kicked.append(tenth / 10)
    assert kicked == [1.0, 2.0, 3.0]
    # A new relay stint starts the count again.
    first.relay_unconfirmed(PEER, T0 + timedelta(seconds=10), T0 + timedelta(seconds=11))
    assert first.take_restarts() == {PEER.tunnel_key}
    responder, _ = punching(own=9)
    for tenth in range(60):
        responder.relay_unconfirmed(PEER, T0, T0 + timedelta(seconds=tenth / 10))
        assert not responder.take_restarts()
