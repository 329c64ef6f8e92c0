"""Properties of the reconciliation planner, each with a broken planner shown to be caught.

- applying `plan(desired, actual)` to `actual` yields exactly `desired`;
- re-planning after applying yields no actions (idempotence);
- a one-peer change in the map yields exactly one peer action (and no rule/address change);
- for every pair of distinct keys exactly one side initiates first (docs/lab.md pitfall 1).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rustynet.domain import reconcile
from rustynet.domain.candidates import Candidate
from rustynet.domain.keys import TunnelKey, TunnelKeyScheme
from rustynet.domain.netmap import InboundRule, PeerEntry, PeerMap, SelfEntry
from rustynet.domain.reconcile import (
    AddPeer,
    RemovePeer,
    SetAddresses,
    SetRuleset,
    UpdatePeer,
    apply_actions,
    desired_state,
)
from tests.property.broken import assert_property_catches, broken_settings

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
Planner = Callable[[reconcile.DesiredState, reconcile.ActualState], tuple[reconcile.Action, ...]]
Initiates = Callable[[TunnelKey, TunnelKey], bool]
FAST = settings(max_examples=150, deadline=None)


def key(n: int) -> TunnelKey:
    return TunnelKey(TunnelKeyScheme.X25519, n.to_bytes(2, "big") * 16)


def entry(n: int, port: int) -> PeerEntry:
    return PeerEntry(
        id=f"node_{n:03d}",
        name=f"n{n}",
        overlay_addresses=(f"100.64.0.{n}/32",),
        tunnel_key=key(n),
        tunnel_key_expires_at=NOW + timedelta(days=30),
        candidates=(Candidate.parse(f"198.51.100.{n}:{port}", "configured"),),
    )


def pmap(own: int, peers: dict[int, int], rule_port: int, serial: int = 1) -> PeerMap:
    return PeerMap(
        addressee="node_000",
        serial=serial,
        issued_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        policy_version=1,
        self_entry=SelfEntry("node_000", "self", (f"100.64.1.{own}/32",), key(own), ()),
        peers=tuple(entry(n, port) for n, port in sorted(peers.items())),
        inbound=(InboundRule(("100.64.0.0/24",), "tcp", ((rule_port, rule_port),)),),
    )


OWN = st.integers(1, 30)
PEERS = st.dictionaries(st.integers(31, 60), st.sampled_from([41641, 5000]), max_size=8)
PORTS = st.sampled_from([22, 80])
HEARD = st.sets(st.integers(31, 60), max_size=4)


def desired_of(
    own: int, peers: dict[int, int], port: int, heard: set[int]
) -> reconcile.DesiredState:
    return desired_state(pmap(own, peers, port), key(own), heard_from=[key(n) for n in heard])


def _matches(actual: reconcile.ActualState, desired: reconcile.DesiredState) -> bool:
    return (
        dict(actual.peers) == desired.peer_map()
        and actual.routes == desired.routes
        and actual.addresses == desired.addresses
        and actual.ruleset == desired.ruleset
    )


# --- the properties, parametrized by the planner under test ---------------------------------


def check_converges(planner: Planner) -> Callable[[], None]:
    @given(OWN, PEERS, PORTS, HEARD, PEERS, PORTS, HEARD)
    def prop(
        own: int,
        p1: dict[int, int],
        r1: int,
        h1: set[int],
        p2: dict[int, int],
        r2: int,
        h2: set[int],
    ) -> None:
        before = desired_of(own, p1, r1, h1)
        actual = apply_actions(reconcile.EMPTY, planner(before, reconcile.EMPTY))
        assert _matches(actual, before), "applying the first plan did not reach desired"
        after = desired_of(own, p2, r2, h2)
        actual = apply_actions(actual, planner(after, actual))
        assert _matches(actual, after), "applying the plan did not reach desired"
        assert planner(after, actual) == (), "re-planning after applying is not empty"

    return prop


def check_one_peer_change(planner: Planner) -> Callable[[], None]:
    @given(OWN, PEERS, PORTS, st.integers(31, 60), st.sampled_from(["toggle", "move"]))
    def prop(own: int, peers: dict[int, int], port: int, victim: int, how: str) -> None:
        changed = dict(peers)
        if how == "toggle":
            if victim in changed:
                del changed[victim]
            else:
                changed[victim] = 41641
        else:
            changed[victim] = 5000 if changed.get(victim) == 41641 else 41641
        actual = apply_actions(
            reconcile.EMPTY, planner(desired_of(own, peers, port, set()), reconcile.EMPTY)
        )
        actions = planner(desired_of(own, changed, port, set()), actual)
        peer_actions = [a for a in actions if isinstance(a, AddPeer | UpdatePeer | RemovePeer)]
        touched = [a.key if isinstance(a, RemovePeer) else a.peer.key for a in peer_actions]
        assert len(peer_actions) <= 1, f"a one-peer change gave {len(peer_actions)} peer actions"
        assert touched in ([], [key(victim)]), "the action touches another peer"
        assert not [a for a in actions if isinstance(a, SetRuleset | SetAddresses)]

    return prop


def check_one_side_initiates(initiates: Initiates) -> Callable[[], None]:
    @given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
    def prop(a: bytes, b: bytes) -> None:
        ka, kb = TunnelKey(TunnelKeyScheme.X25519, a), TunnelKey(TunnelKeyScheme.X25519, b)
        if ka == kb:
            return
        assert initiates(ka, kb) != initiates(kb, ka), "not exactly one side initiates"

    return prop


def check_desired_initiation(own_pair: tuple[int, int]) -> bool:
    """Helper: whether each side's desired config for the other carries a keepalive."""
    a, b = own_pair
    da = desired_state(pmap(a, {b: 41641}, 22), key(a)).peers[0]
    db = desired_state(pmap(b, {a: 41641}, 22), key(b)).peers[0]
    return (da.keepalive_seconds is not None) != (db.keepalive_seconds is not None)


# --- the real planner passes -----------------------------------------------------------------


def test_plan_converges_and_is_idempotent() -> None:
    """Applying any plan reaches the desired state; re-planning then gives no actions."""
    FAST(check_converges(reconcile.plan))()


def test_one_peer_change_is_one_peer_action() -> None:
    """Adding, removing or moving one peer yields exactly one action naming that peer."""
    FAST(check_one_peer_change(reconcile.plan))()


def test_exactly_one_side_of_every_pair_initiates() -> None:
    """The key order picks exactly one initiator per pair of distinct keys."""
    FAST(check_one_side_initiates(reconcile.initiates))()


@FAST
@given(st.integers(1, 30), st.integers(31, 60))
def test_exactly_one_side_gets_a_keepalive_before_any_handshake(a: int, b: int) -> None:
    """In the two nodes' desired configs, exactly one side may speak first."""
    assert check_desired_initiation((a, b))


# --- broken planners are caught --------------------------------------------------------------


def _forgets_removals(
    desired: reconcile.DesiredState, actual: reconcile.ActualState
) -> tuple[reconcile.Action, ...]:
    return tuple(a for a in reconcile.plan(desired, actual) if not isinstance(a, RemovePeer))


def _replaces_every_peer(
    desired: reconcile.DesiredState, actual: reconcile.ActualState
) -> tuple[reconcile.Action, ...]:
    removals = tuple(RemovePeer(k) for k in actual.peers)
    return (*removals, *(AddPeer(p) for p in desired.peers))


def _both_initiate(own: TunnelKey, peer: TunnelKey) -> bool:
    return True


def test_broken_planner_that_forgets_removals_is_caught() -> None:
    """A planner that never removes peers fails the convergence property."""
    assert_property_catches(broken_settings()(check_converges(_forgets_removals)))


def test_broken_planner_that_replaces_every_peer_is_caught() -> None:
    """A full-replacement planner (docs/lab.md pitfall 2) fails the one-peer-change property."""
    assert_property_catches(broken_settings()(check_one_peer_change(_replaces_every_peer)))


def test_broken_rule_where_both_sides_initiate_is_caught() -> None:
    """An initiation rule that lets both ends speak first fails the exactly-one property."""
    assert_property_catches(broken_settings()(check_one_side_initiates(_both_initiate)))
