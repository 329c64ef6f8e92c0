"""The inbound `Ruleset`: built from peer-map rules, normalised, default deny, diffable."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from rustynet.domain.netmap import InboundRule
from rustynet.domain.packet_filter import (
    DENY_ALL,
    FlowRule,
    Ruleset,
    RulesetError,
    diff,
    needs_apply,
)
from rustynet.domain.policy import PortRange, Proto
from rustynet.domain.policy_compile import FilterRule

A = ipaddress.ip_address("100.64.0.1")
B = ipaddress.ip_address("100.64.0.2")
V6 = ipaddress.ip_address("fd7a:115c:a1e0::1")


def rule(
    sources: tuple[str, ...], proto: str, ports: tuple[tuple[int, int], ...] = ()
) -> InboundRule:
    return InboundRule(sources, proto, ports)


def test_any_expands_to_tcp_udp_and_icmp() -> None:
    """`any` admits tcp and udp on its ports and icmp echo, and nothing else is invented."""
    rs = Ruleset.from_inbound([rule(("100.64.0.1/32",), "any", ((22, 22),))])
    assert [r.proto for r in rs.rules] == [Proto.ICMP, Proto.TCP, Proto.UDP]
    assert rs.admits(A, Proto.TCP, 22)
    assert rs.admits(A, Proto.UDP, 22)
    assert rs.admits(A, Proto.ICMP)
    assert not rs.admits(A, Proto.TCP, 23)


def test_default_deny_admits_no_new_flow_but_established() -> None:
    """An empty ruleset drops every new flow; established/related traffic still passes."""
    for proto, port in [(Proto.TCP, 22), (Proto.UDP, 53), (Proto.ICMP, None)]:
        assert not DENY_ALL.admits(A, proto, port)
        assert DENY_ALL.admits(A, proto, port, established=True)


def test_only_listed_sources_ports_and_families_are_admitted() -> None:
    """A tcp/22 rule from A admits A:22 only: not B, not port 23, not udp, not icmp."""
    rs = Ruleset.from_inbound([rule(("100.64.0.1/32",), "tcp", ((22, 22),))])
    assert rs.admits(A, Proto.TCP, 22)
    assert not rs.admits(B, Proto.TCP, 22)
    assert not rs.admits(A, Proto.TCP, 23)
    assert not rs.admits(A, Proto.UDP, 22)
    assert not rs.admits(A, Proto.ICMP)
    assert not rs.admits(V6, Proto.TCP, 22)
    assert not rs.admits(A, Proto.TCP, None)


def test_icmp_rules_carry_no_ports_and_portless_tcp_rules_vanish() -> None:
    """ICMP ports are dropped; a tcp/udp rule with no port range admits nothing and is gone."""
    rs = Ruleset.from_inbound(
        [rule(("100.64.0.0/10",), "icmp", ((1, 2),)), rule(("100.64.0.0/10",), "tcp", ())]
    )
    assert rs.rules == (FlowRule((ipaddress.ip_network("100.64.0.0/10"),), Proto.ICMP, ()),)


def test_equivalent_inputs_normalise_to_equal_rulesets() -> None:
    """Order, duplicates, overlapping sources and touching port ranges do not change the value."""
    one = Ruleset.from_inbound(
        [
            rule(("100.64.0.1/32", "fd7a::/48"), "tcp", ((22, 22), (23, 30))),
            rule(("100.64.0.0/31",), "tcp", ((22, 30),)),
            rule(("100.64.0.9/32",), "udp", ((53, 53),)),
        ]
    )
    two = Ruleset.from_inbound(
        [
            rule(("100.64.0.9/32",), "udp", ((53, 53), (53, 53))),
            rule(("fd7a::/48", "100.64.0.0/31", "100.64.0.1/32"), "tcp", ((25, 30), (22, 24))),
        ]
    )
    assert one == two
    assert diff(one, two).is_empty
    assert not needs_apply(one, two)
    tcp = next(r for r in one.rules if r.proto is Proto.TCP)
    assert tcp.ports == ((22, 30),)
    assert [str(s) for s in tcp.sources] == ["100.64.0.0/31", "fd7a::/48"]


def test_diff_reports_added_and_removed_rules() -> None:
    """Changing one rule shows up as exactly that rule added and the old one removed."""
    old = Ruleset.from_inbound([rule(("100.64.0.1/32",), "tcp", ((22, 22),))])
    new = Ruleset.from_inbound(
        [rule(("100.64.0.1/32",), "tcp", ((22, 22),)), rule(("100.64.0.2/32",), "udp", ((53, 53),))]
    )
    d = diff(old, new)
    assert [r.proto for r in d.added] == [Proto.UDP]
    assert d.removed == ()
    back = diff(new, old)
    assert back.added == ()
    assert [r.proto for r in back.removed] == [Proto.UDP]


def test_nothing_applied_always_needs_an_apply() -> None:
    """Where no filter is in place even deny-all must be applied (the table must exist)."""
    assert needs_apply(None, DENY_ALL)
    assert diff(None, DENY_ALL).is_empty
    assert not needs_apply(DENY_ALL, Ruleset())


@pytest.mark.parametrize(
    "bad",
    [
        rule(("100.64.0.1/24",), "tcp", ((22, 22),)),  # host bits set
        rule(("not-a-prefix",), "tcp", ((22, 22),)),
        rule(("100.64.0.1/32",), "sctp", ((22, 22),)),
        rule(("100.64.0.1/32",), "tcp", ((22, 70000),)),
        rule(("100.64.0.1/32",), "tcp", ((30, 22),)),
        rule(("100.64.0.1/32",), "tcp", ((-1, 22),)),
    ],
)
def test_malformed_inbound_rules_are_rejected(bad: InboundRule) -> None:
    """Bad prefixes, protocols and port ranges never become a ruleset."""
    with pytest.raises(RulesetError):
        Ruleset.from_inbound([bad])


def test_check_refuses_values_built_around_the_constructors() -> None:
    """A ruleset that bypassed normalisation (unsorted, unmerged, out of range) fails `check`."""
    net_a, net_b = ipaddress.ip_network("100.64.0.2/32"), ipaddress.ip_network("100.64.0.1/32")
    unsorted = Ruleset((FlowRule((net_a, net_b), Proto.TCP, ((22, 22),)),))
    out_of_range = Ruleset((FlowRule((net_b,), Proto.TCP, ((22, 70000),)),))
    icmp_ports = Ruleset((FlowRule((net_b,), Proto.ICMP, ((1, 1),)),))
    any_proto = Ruleset((FlowRule((net_b,), Proto.ANY, ((1, 1),)),))
    split = Ruleset(
        (FlowRule((net_b,), Proto.TCP, ((22, 22),)), FlowRule((net_a,), Proto.TCP, ((22, 22),)))
    )
    for bad in (unsorted, out_of_range, icmp_ports, any_proto, split):
        with pytest.raises(RulesetError):
            bad.check()
    Ruleset.from_inbound([rule(("100.64.0.1/32",), "any", ((22, 22),))]).check()


def test_ruleset_decides_like_the_compiled_filter() -> None:
    """For compiled filter rules, `Ruleset.admits` agrees with `FilterRule.accepts` flow by flow."""
    filters = [
        FilterRule(
            frozenset({ipaddress.ip_network("100.64.0.0/30")}), Proto.TCP, (PortRange(20, 25),)
        ),
        FilterRule(frozenset({ipaddress.ip_network("fd7a::/64")}), Proto.ANY, (PortRange(53, 53),)),
        FilterRule(frozenset({ipaddress.ip_network("100.64.0.5/32")}), Proto.ICMP, ()),
    ]
    rs = Ruleset.from_inbound(InboundRule.from_filter(f) for f in filters)
    hosts = ["100.64.0.1", "100.64.0.5", "100.64.0.9", "fd7a::1", "fd7b::1"]
    for host, proto, port in itertools.product(
        hosts, (Proto.TCP, Proto.UDP, Proto.ICMP), (19, 20, 25, 26, 53)
    ):
        addr = ipaddress.ip_address(host)
        expected = any(f.accepts(ipaddress.ip_network(addr), proto, port) for f in filters)
        assert rs.admits(addr, proto, port) == expected, (host, proto, port)
