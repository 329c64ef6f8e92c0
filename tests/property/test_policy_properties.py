"""Policy compilation properties: compiled views agree with the direct evaluation of the policy.

Random documents over a small universe (3 tags, a group, a host, CIDRs, 6 node names, IPv4 and
IPv6 addresses), random inventories and random flows. Each property also runs against a
deliberately broken compiler, which it must catch.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rustynet.domain.policy import ALL_PORTS, Network, Policy, PolicyNode, Proto
from rustynet.domain.policy_compile import FilterRule, NodeView, PolicyIndex, _Placement
from rustynet.domain.scope import Tag
from tests.property.broken import assert_machine_catches, assert_property_catches, broken_settings

TAGS = ["tag:a", "tag:b", "tag:c"]
NAMES = [f"node-{i}" for i in range(6)]
CIDRS = ["100.64.0.0/30", "100.64.0.4/31", "fd7a::/126", "100.64.0.9/32"]
SELECTORS = ["*", *TAGS, "group:g", "h", *NAMES[:4], *CIDRS]
PORTS = ["*", "22", "80-90", "22,443"]
ADDRESSES: list[Network] = [ipaddress.ip_network(f"100.64.0.{i}/32") for i in range(1, 11)] + [
    ipaddress.ip_network(f"fd7a::{i}/128") for i in range(1, 5)
]
FLOWS = [(p, port) for p in (Proto.TCP, Proto.UDP, Proto.ICMP) for port in (22, 85, 443, 1000)]


@st.composite
def acl_rules(draw: st.DrawFn) -> dict[str, Any]:
    proto = draw(st.sampled_from(["tcp", "udp", "icmp", "any"]))
    ports = st.just("*") if proto == "icmp" else st.sampled_from(PORTS)
    dst = draw(
        st.lists(st.tuples(st.sampled_from(SELECTORS), ports), min_size=1, max_size=2).map(
            lambda pairs: [f"{sel}:{p}" for sel, p in pairs]
        )
    )
    src = draw(st.lists(st.sampled_from(SELECTORS), min_size=1, max_size=2))
    return {"action": "accept", "src": src, "dst": dst, "proto": proto}


@st.composite
def documents(draw: st.DrawFn, *, max_rules: int = 4) -> dict[str, Any]:
    members = draw(st.lists(st.sampled_from(TAGS + NAMES), max_size=3))
    return {
        "tagOwners": {t: [] for t in TAGS},
        "groups": {"group:g": members},
        "hosts": {"h": draw(st.sampled_from(CIDRS))},
        "acls": draw(st.lists(acl_rules(), max_size=max_rules)),
    }


def node_strategy(node_id: str, free: list[Network]) -> st.SearchStrategy[PolicyNode]:
    return st.builds(
        PolicyNode,
        st.just(node_id),
        st.sampled_from(NAMES),
        st.frozensets(st.sampled_from(TAGS).map(Tag), max_size=2),
        st.lists(st.sampled_from(free), max_size=2, unique=True).map(tuple)
        if free
        else st.just(()),
    )


@st.composite
def inventories(draw: st.DrawFn) -> list[PolicyNode]:
    count = draw(st.integers(0, 6))
    free = list(ADDRESSES)
    nodes = []
    for i in range(count):
        node = draw(node_strategy(f"id{i}", free))
        free = [a for a in free if a not in node.addresses]
        nodes.append(node)
    return nodes


def filters_agree(
    index_cls: type[PolicyIndex], document: dict[str, Any], nodes: list[PolicyNode]
) -> None:
    policy = Policy.parse(document)
    views = index_cls(policy, nodes).views()
    for dst in nodes:
        for src in nodes:
            if src.id == dst.id:
                continue
            for address in src.addresses:
                for proto, port in FLOWS:
                    want = policy.allows_from(src, address, dst, proto, port)
                    got = views[dst.id].accepts(address, proto, port)
                    assert got == want, f"{src.name}@{address} -> {dst.name} {proto} {port}"


def visibility_matches(
    index_cls: type[PolicyIndex], document: dict[str, Any], nodes: list[PolicyNode]
) -> None:
    policy = Policy.parse(document)
    views = index_cls(policy, nodes).views()
    for a in nodes:
        assert a.id not in views[a.id].visible_peers, "a node never sees itself"
        for b in nodes:
            if a.id == b.id:
                continue
            sees = b.id in views[a.id].visible_peers
            assert sees == (a.id in views[b.id].visible_peers), f"asymmetric {a.id} {b.id}"
            assert sees == (policy.reaches(a, b) or policy.reaches(b, a)), f"{a.id} sees {b.id}"
            for proto, port in FLOWS:
                if policy.allows(a, b, proto, port):
                    assert sees, f"{a.id} may reach {b.id} but does not see it"


@given(documents(), inventories())
def test_compiled_inbound_filter_agrees_with_direct_evaluation(
    document: dict[str, Any], nodes: list[PolicyNode]
) -> None:
    """For every source address, flow and destination, dst's filter says what the policy says."""
    filters_agree(PolicyIndex, document, nodes)


@given(documents(), inventories())
def test_visibility_is_symmetric_and_covers_every_allowed_flow(
    document: dict[str, Any], nodes: list[PolicyNode]
) -> None:
    """A sees B iff B sees A iff some flow is allowed between them, in either direction."""
    visibility_matches(PolicyIndex, document, nodes)


@given(documents(max_rules=0), inventories())
def test_default_deny_without_rules_nobody_sees_or_accepts_anything(
    document: dict[str, Any], nodes: list[PolicyNode]
) -> None:
    """With no acls (and with no policy at all), every view is empty."""
    for policy in (Policy.parse(document), Policy.deny_all()):
        views = PolicyIndex(policy, nodes).views()
        assert all(view == NodeView(frozenset(), ()) for view in views.values())
        for src in nodes:
            for dst in nodes:
                assert not any(policy.allows(src, dst, p, port) for p, port in FLOWS)


class PolicyChanges(RuleBasedStateMachine):
    """One-node changes applied to an index must equal a full recompile, and wake every change."""

    index_cls: type[PolicyIndex] = PolicyIndex

    def __init__(self) -> None:
        super().__init__()
        self.policy = Policy.deny_all()
        self.nodes: dict[str, PolicyNode] = {}
        self.index = self.index_cls(self.policy, [])

    @initialize(document=documents(max_rules=5), nodes=inventories())
    def start(self, document: dict[str, Any], nodes: list[PolicyNode]) -> None:
        self.policy = Policy.parse(document)
        self.nodes = {n.id: n for n in nodes}
        self.index = self.index_cls(self.policy, nodes)
        self.index.views()  # warm the caches, so stale cached views would show

    def _apply(self, nodes: dict[str, PolicyNode], change: Any) -> None:
        before = PolicyIndex(self.policy, self.nodes.values()).views()
        woken = change()
        self.nodes = nodes
        after = PolicyIndex(self.policy, self.nodes.values()).views()
        changed = {i for i in before.keys() | after.keys() if before.get(i) != after.get(i)}
        assert changed <= woken, f"changed views not woken: {sorted(changed - woken)}"

    @rule(data=st.data(), slot=st.integers(0, 7))
    def put_node(self, data: st.DataObject, slot: int) -> None:
        node_id = f"id{slot}"
        taken = {a for n in self.nodes.values() if n.id != node_id for a in n.addresses}
        node = data.draw(node_strategy(node_id, [a for a in ADDRESSES if a not in taken]))
        self._apply({**self.nodes, node_id: node}, lambda: self.index.put(node))

    @rule(data=st.data(), tags=st.frozensets(st.sampled_from(TAGS).map(Tag), max_size=2))
    def retag_node(self, data: st.DataObject, tags: frozenset[Tag]) -> None:
        if not self.nodes:
            return
        old = self.nodes[data.draw(st.sampled_from(sorted(self.nodes)))]
        node = PolicyNode(old.id, old.name, tags, old.addresses)
        self._apply({**self.nodes, node.id: node}, lambda: self.index.put(node))

    @rule(data=st.data())
    def remove_node(self, data: st.DataObject) -> None:
        if not self.nodes:
            return
        node_id = data.draw(st.sampled_from(sorted(self.nodes)))
        rest = {i: n for i, n in self.nodes.items() if i != node_id}
        self._apply(rest, lambda: self.index.remove(node_id))

    @invariant()
    def incremental_equals_full_recompile(self) -> None:
        full = PolicyIndex(self.policy, self.nodes.values()).views()
        assert dict(self.index.views()) == dict(full), "incremental views differ from full"


PolicyChanges.TestCase.settings = settings(max_examples=60, stateful_step_count=15)
TestPolicyChanges = PolicyChanges.TestCase


# -- negative controls: deliberately broken compilers ------------------------------------------


class OneWayVisibilityIndex(PolicyIndex):
    """Broken: a destination sees its sources, but a source does not see its destinations."""

    def _union(self, placed: _Placement) -> frozenset[str]:
        seen: set[str] = set()
        for r in placed.dst:
            seen.update(self._sources[r])
        return frozenset(seen)


class PortBlindIndex(PolicyIndex):
    """Broken: inbound filters accept every port of a granted protocol."""

    def view(self, node_id: str) -> NodeView:
        view = super().view(node_id)

        widened = tuple(FilterRule(f.src_prefixes, f.proto, ALL_PORTS) for f in view.inbound)
        return NodeView(view.visible_peers, widened)


class ForgetfulIndex(PolicyIndex):
    """Broken: a one-node change does not report the peers whose visibility it changed."""

    def _wake_visibility_changes(
        self, node_id: str, old: _Placement, new: _Placement, woken: set[str]
    ) -> None:
        super()._wake_visibility_changes(node_id, old, new, set())


class StaleCacheIndex(PolicyIndex):
    """Broken: a one-node change leaves the cached peer sets of other nodes as they were."""

    def _wake_visibility_changes(
        self, node_id: str, old: _Placement, new: _Placement, woken: set[str]
    ) -> None:
        kept = {k: dict(v) for k, v in self._pending.items()}
        super()._wake_visibility_changes(node_id, old, new, woken)
        self._pending = kept


def test_broken_one_way_visibility_is_caught() -> None:
    """The symmetry property catches a compiler that builds visibility in one direction."""

    @broken_settings()
    @given(documents(), inventories())
    def check(document: dict[str, Any], nodes: list[PolicyNode]) -> None:
        visibility_matches(OneWayVisibilityIndex, document, nodes)

    assert_property_catches(check, match="sees|asymmetric")


def test_broken_port_blind_filter_is_caught() -> None:
    """The agreement property catches a compiler whose filters ignore ports."""

    @broken_settings()
    @given(documents(), inventories())
    def check(document: dict[str, Any], nodes: list[PolicyNode]) -> None:
        filters_agree(PortBlindIndex, document, nodes)

    assert_property_catches(check, match="->")


def test_broken_incremental_update_is_caught() -> None:
    """The incremental machine catches an update that forgets to revisit affected peers."""

    class BrokenChanges(PolicyChanges):
        index_cls = ForgetfulIndex

    assert_machine_catches(
        BrokenChanges, match="not woken", max_examples=300, stateful_step_count=15
    )


def test_broken_stale_view_cache_is_caught() -> None:
    """The incremental machine catches cached views that a change did not update."""

    class BrokenChanges(PolicyChanges):
        index_cls = StaleCacheIndex

    assert_machine_catches(
        BrokenChanges, match="incremental views differ", max_examples=300, stateful_step_count=15
    )
