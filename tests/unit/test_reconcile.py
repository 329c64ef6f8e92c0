"""The reconciliation planner: desired state from a peer map, minimal ordered actions, and the
one-side-initiates rule that avoids the handshake collision (docs/lab.md pitfall 1)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from rustynet.domain.candidates import Candidate
from rustynet.domain.keys import TunnelKey, TunnelKeyScheme
from rustynet.domain.netmap import InboundRule, PeerEntry, PeerMap, SelfEntry
from rustynet.domain.packet_filter import Ruleset
from rustynet.domain.reconcile import (
    DEFAULT_KEEPALIVE_SECONDS,
    EMPTY,
    AddPeer,
    PlanError,
    RemovePeer,
    SetAddresses,
    SetRoutes,
    SetRuleset,
    UpdatePeer,
    apply_actions,
    desired_state,
    initiates,
    overdue_responders,
    peer_diff,
    plan,
)
from rustynet.domain.tunnel import UnderlayEndpoint

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def key(n: int) -> TunnelKey:
    return TunnelKey(TunnelKeyScheme.X25519, bytes([n]) * 32)


def peer(n: int, *, endpoint: str = "198.51.100.{n}:41641") -> PeerEntry:
    return PeerEntry(
        id=f"node_{n}",
        name=f"n{n}",
        overlay_addresses=(f"100.64.0.{n}/32",),
        tunnel_key=key(n),
        tunnel_key_expires_at=NOW + timedelta(days=30),
        candidates=(Candidate.parse(endpoint.format(n=n), "configured"),),
    )


def pmap(own: int, peers: tuple[PeerEntry, ...], serial: int = 1) -> PeerMap:
    return PeerMap(
        addressee=f"node_{own}",
        serial=serial,
        issued_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        policy_version=1,
        self_entry=SelfEntry(f"node_{own}", f"n{own}", (f"100.64.0.{own}/32",), key(own), ()),
        peers=peers,
        inbound=(InboundRule(("100.64.0.1/32",), "tcp", ((22, 22),)),),
    )


def test_lower_key_initiates_and_higher_key_waits() -> None:
    """Node 2 speaks first to 5 (endpoint + keepalive); 5 holds 2's endpoint but no keepalive."""
    low = desired_state(pmap(2, (peer(5),)), key(2)).peers[0]
    high = desired_state(pmap(5, (peer(2),)), key(5)).peers[0]
    assert low.underlay_endpoint == UnderlayEndpoint.parse("198.51.100.5:41641")
    assert low.keepalive_seconds == DEFAULT_KEEPALIVE_SECONDS
    assert high.underlay_endpoint == UnderlayEndpoint.parse("198.51.100.2:41641")
    assert high.keepalive_seconds is None
    assert initiates(key(2), key(5))
    assert not initiates(key(5), key(2))


def test_responder_talks_after_hearing_from_the_initiator_or_when_it_is_overdue() -> None:
    """After a handshake (or past the grace period) the responder gets its keepalive."""
    m = pmap(5, (peer(2),))
    heard = desired_state(m, key(5), heard_from=[key(2)]).peers[0]
    late = desired_state(m, key(5), overdue=[key(2)])
    assert heard.underlay_endpoint is not None
    assert heard.keepalive_seconds == DEFAULT_KEEPALIVE_SECONDS
    assert late.peers[0].keepalive_seconds == DEFAULT_KEEPALIVE_SECONDS
    assert key(2) in late.initiator_for


def test_overdue_responders_counts_only_silent_peers_past_the_grace() -> None:
    """Listed ≥ grace ago and never heard from → overdue; heard or recent → not."""
    since = {
        key(1): NOW - timedelta(seconds=10),
        key(2): NOW - timedelta(seconds=10),
        key(3): NOW - timedelta(seconds=1),
    }
    assert overdue_responders(since, [key(2)], NOW, timedelta(seconds=3)) == {key(1)}


def test_desired_state_has_routes_addresses_and_rules() -> None:
    """Routes are the peers' prefixes, addresses the node's own, rules from the map."""
    d = desired_state(pmap(1, (peer(3), peer(2))), key(1))
    assert [p.key for p in d.peers] == [key(2), key(3)]
    assert d.routes == tuple(ipaddress.ip_network(f"100.64.0.{n}/32") for n in (2, 3))
    assert d.addresses == (ipaddress.ip_interface("100.64.0.1/32"),)
    assert d.ruleset == Ruleset.from_inbound(pmap(1, ()).inbound)


def test_plan_from_empty_then_replan_is_empty() -> None:
    """First plan sets everything in a fail-closed order; after applying it nothing is left."""
    d = desired_state(pmap(1, (peer(2), peer(3))), key(1))
    actions = plan(d, EMPTY)
    assert isinstance(actions[0], SetRuleset)
    assert isinstance(actions[1], SetAddresses)
    assert isinstance(actions[-1], SetRoutes)
    assert sum(isinstance(a, AddPeer) for a in actions) == 2
    after = apply_actions(EMPTY, actions)
    assert plan(d, after) == ()


def test_one_peer_removed_gives_one_peer_action_and_its_route() -> None:
    """Dropping one peer (e.g. revoked) yields one RemovePeer plus the route change."""
    before = apply_actions(EMPTY, plan(desired_state(pmap(1, (peer(2), peer(3))), key(1)), EMPTY))
    actions = plan(desired_state(pmap(1, (peer(2),), 2), key(1)), before)
    assert actions == (RemovePeer(key(3)), SetRoutes((ipaddress.ip_network("100.64.0.2/32"),)))
    assert peer_diff(actions).remove == (key(3),)


def test_changed_endpoint_is_one_update() -> None:
    """A peer moving to another underlay endpoint is one UpdatePeer, nothing else."""
    before = apply_actions(EMPTY, plan(desired_state(pmap(1, (peer(2),)), key(1)), EMPTY))
    moved = desired_state(pmap(1, (peer(2, endpoint="203.0.113.9:5000"),)), key(1))
    actions = plan(moved, before)
    assert len(actions) == 1
    assert isinstance(actions[0], UpdatePeer)


def test_a_map_giving_one_prefix_to_two_peers_is_refused() -> None:
    """Two peers claiming one overlay prefix would silently steal traffic: refused."""
    twin = PeerEntry("node_9", "n9", ("100.64.0.2/32",), key(9), NOW + timedelta(days=1))
    with pytest.raises(PlanError):
        desired_state(pmap(1, (peer(2), twin)), key(1))


def test_a_peer_with_our_own_key_is_refused() -> None:
    """A map listing our own key as a peer is a bug or an attack: refused."""
    with pytest.raises(PlanError):
        desired_state(pmap(1, (peer(1),)), key(1))
