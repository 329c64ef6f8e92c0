"""The inbound packet filter a node enforces on its tunnel interface, as a normalised value.

The one rule: everything arriving on the tunnel interface is dropped unless it belongs to an
established/related connection or matches an allowed flow of the `Ruleset`; a `Ruleset` has
one canonical form, so two rulesets that admit the same flows by the same rules compare equal
and re-applying one is a no-op (`diff(old, new).is_empty`).

A `Ruleset` is built from the peer map's `InboundRule`s (`Ruleset.from_inbound`):

* `any` expands to tcp, udp and icmp (the three flow protocols `Proto.ANY` covers);
* icmp rules carry no ports and admit echo requests (v4 and v6); tcp/udp rules with no ports
  admit nothing and vanish;
* port ranges are merged, sources are collapsed per address family, and rules with the same
  protocol and ports are merged into one rule with the union of their sources.

`Ruleset.admits` is the reference decision the firewall adapters must implement; the in-memory
adapter uses it directly and the nftables adapter is checked against it on a real data path.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from typing import Final, TypeAlias

import attrs

from rustynet.domain.errors import RemoteProtocolError
from rustynet.domain.netmap import InboundRule
from rustynet.domain.policy import Proto

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
PortSpan: TypeAlias = tuple[int, int]

MAX_PORT: Final = 65535
FLOW_PROTOS: Final = (Proto.TCP, Proto.UDP, Proto.ICMP)


class RulesetError(RemoteProtocolError):
    """Inbound rules that cannot form a ruleset (bad prefix, protocol or port range)."""


def _network_key(net: Network) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def _normal_sources(sources: Iterable[Network]) -> tuple[Network, ...]:
    nets = list(sources)
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    collapsed: list[Network] = [*ipaddress.collapse_addresses(v4)]
    collapsed.extend(ipaddress.collapse_addresses(v6))
    return tuple(sorted(collapsed, key=_network_key))


def _normal_ports(ports: Iterable[PortSpan]) -> tuple[PortSpan, ...]:
    merged: list[PortSpan] = []
    for first, last in sorted(ports):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def _check_span(span: object) -> PortSpan:
    if (
        not isinstance(span, tuple)
        or len(span) != 2
        or not all(type(p) is int for p in span)
        or not 0 <= span[0] <= span[1] <= MAX_PORT
    ):
        raise RulesetError(
            f"a port range is (first, last) with 0 <= first <= last <= 65535, not {span!r}"
        )
    return span[0], span[1]


@attrs.frozen
class FlowRule:
    """Admit `proto` flows from any of `sources` to `ports` (icmp: echo requests, no ports).

    Build through `Ruleset`; `check()` re-verifies the canonical form.
    """

    sources: tuple[Network, ...]
    proto: Proto
    ports: tuple[PortSpan, ...]

    def check(self) -> None:
        """Raise `RulesetError` unless this rule is in canonical form."""
        if self.proto not in FLOW_PROTOS:
            raise RulesetError(f"a flow rule's protocol is tcp, udp or icmp, not {self.proto!r}")
        if not self.sources or not all(
            isinstance(s, ipaddress.IPv4Network | ipaddress.IPv6Network) for s in self.sources
        ):
            raise RulesetError("a flow rule has at least one source prefix")
        if self.sources != _normal_sources(self.sources):
            raise RulesetError("a flow rule's sources are collapsed and sorted")
        spans = tuple(_check_span(s) for s in self.ports)
        if self.proto is Proto.ICMP and spans:
            raise RulesetError("an icmp rule has no ports")
        if self.proto is not Proto.ICMP and not spans:
            raise RulesetError("a tcp/udp rule has at least one port range")
        if spans != _normal_ports(spans):
            raise RulesetError("a flow rule's port ranges are merged and sorted")

    def admits(self, source: Address, proto: Proto, port: int | None) -> bool:
        """True when a new flow from host `source` with `proto` (to `port`) matches this rule."""
        if proto is not self.proto:
            return False
        if proto is not Proto.ICMP and not any(
            port is not None and first <= port <= last for first, last in self.ports
        ):
            return False
        return any(source.version == s.version and source in s for s in self.sources)

    def sources_of(self, version: int) -> tuple[Network, ...]:
        """The source prefixes of one address family (4 or 6)."""
        return tuple(s for s in self.sources if s.version == version)

    def sort_key(self) -> tuple[str, tuple[PortSpan, ...]]:
        """Canonical order of rules inside a ruleset."""
        return (self.proto.value, self.ports)


@attrs.frozen
class Ruleset:
    """The allowed inbound flows on the tunnel interface; everything else new is dropped."""

    rules: tuple[FlowRule, ...] = ()

    @classmethod
    def of(cls, rules: Iterable[FlowRule]) -> Ruleset:
        """Normalise `rules` (merge same protocol+ports, collapse sources) into one ruleset."""
        grouped: dict[tuple[Proto, tuple[PortSpan, ...]], list[Network]] = defaultdict(list)
        for rule in rules:
            if rule.proto not in FLOW_PROTOS:
                raise RulesetError(f"a flow rule's protocol is tcp, udp or icmp: {rule.proto!r}")
            ports = _normal_ports(_check_span(s) for s in rule.ports)
            if rule.proto is Proto.ICMP:
                ports = ()
            elif not ports:
                continue  # a tcp/udp rule without ports admits nothing
            grouped[(rule.proto, ports)].extend(rule.sources)
        built = [
            FlowRule(_normal_sources(sources), proto, ports)
            for (proto, ports), sources in grouped.items()
            if sources
        ]
        return cls(tuple(sorted(built, key=FlowRule.sort_key)))

    @classmethod
    def from_inbound(cls, rules: Iterable[InboundRule]) -> Ruleset:
        """The ruleset enforcing a peer map's inbound rules (`RulesetError` on bad input)."""
        flows: list[FlowRule] = []
        for rule in rules:
            try:
                proto = Proto(rule.proto)
            except ValueError as exc:
                raise RulesetError(f"unknown protocol {rule.proto!r}") from exc
            sources: list[Network] = []
            for text in rule.sources:
                try:
                    sources.append(ipaddress.ip_network(text, strict=True))
                except (TypeError, ValueError) as exc:
                    raise RulesetError(f"{text!r} is not a source prefix") from exc
            ports = tuple(_check_span(tuple(span)) for span in rule.ports)
            for flow_proto in FLOW_PROTOS:
                if proto.covers(flow_proto):
                    flow_ports = () if flow_proto is Proto.ICMP else ports
                    flows.append(FlowRule(tuple(sources), flow_proto, flow_ports))
        return cls.of(flows)

    def check(self) -> None:
        """Raise `RulesetError` unless this value is in canonical form (defence in depth)."""
        if not isinstance(self.rules, tuple) or not all(
            isinstance(r, FlowRule) for r in self.rules
        ):
            raise RulesetError("a ruleset is a tuple of flow rules")
        for rule in self.rules:
            rule.check()
        if self != Ruleset.of(self.rules):
            raise RulesetError("a ruleset is normalised (merged and sorted)")

    def admits(
        self, source: Address, proto: Proto, port: int | None = None, *, established: bool = False
    ) -> bool:
        """The reference decision for one packet arriving on the tunnel interface."""
        if established:
            return True
        return any(rule.admits(source, proto, port) for rule in self.rules)


DENY_ALL: Final = Ruleset()
"""No new inbound flow is admitted (established/related traffic still is)."""


@attrs.frozen
class RulesetDiff:
    """What changes between two rulesets (`is_empty`: applying is a no-op)."""

    added: tuple[FlowRule, ...]
    removed: tuple[FlowRule, ...]

    @property
    def is_empty(self) -> bool:
        """True when nothing changes."""
        return not self.added and not self.removed


def needs_apply(current: Ruleset | None, desired: Ruleset) -> bool:
    """True unless `desired` is exactly what is enforced now."""
    return current is None or current != desired


def diff(old: Ruleset | None, new: Ruleset) -> RulesetDiff:
    """Rules only in `new` (added) and only in `old` (removed); `None` means nothing applied.

    Re-applying an equal ruleset is the empty diff. Where nothing is applied (`old is None`)
    even `DENY_ALL` must be applied: use `needs_apply` to decide, `diff` to report.
    """
    if old is None:
        return RulesetDiff(new.rules, ())
    old_rules, new_rules = set(old.rules), set(new.rules)
    return RulesetDiff(
        tuple(r for r in new.rules if r not in old_rules),
        tuple(r for r in old.rules if r not in new_rules),
    )
