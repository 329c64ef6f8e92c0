"""The policy vocabulary: protocols, port ranges, the node view policy sees (`PolicyNode`),
resolved selectors (`Match`) and grants, policy tests, and the `PolicyError` that
lists every problem with its JSON pointer."""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeAlias

import attrs

from rustynet.domain.errors import LocalProtocolError, RemoteProtocolError
from rustynet.domain.scope import Tag
from rustynet.domain.signed import JsonValue, canonical_json

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
NodeId: TypeAlias = str

DOCUMENT_KEYS: Final = frozenset({"groups", "tagOwners", "hosts", "acls", "tests"})
ACL_KEYS: Final = frozenset({"action", "src", "dst", "proto"})
TEST_KEYS: Final = frozenset({"src", "accept", "deny"})
MAX_PORT: Final = 65535
EVERYWHERE: Final[frozenset[Network]] = frozenset(
    {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
)


class Proto(enum.Enum):
    """The protocol of a rule; `ANY` covers the three flow protocols."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ANY = "any"

    def covers(self, flow_proto: Proto) -> bool:
        """True when a rule with this protocol applies to a flow of `flow_proto`."""
        return self is Proto.ANY or self is flow_proto


@attrs.frozen
class Problem:
    """One validation finding: where (RFC 6901 pointer) and what."""

    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.pointer or '/'}: {self.message}"


class PolicyError(RemoteProtocolError):
    """The document (or its tests against the inventory) is not acceptable; nothing changed."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        summary = "; ".join(str(p) for p in self.problems[:5])
        more = len(self.problems) - 5
        super().__init__(f"policy rejected: {summary}" + (f" (+{more} more)" if more > 0 else ""))


def pointer(*parts: str | int) -> str:
    """An RFC 6901 JSON pointer to `parts` (`~` and `/` escaped)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@attrs.frozen(order=True)
class PortRange:
    """An inclusive range of ports."""

    first: int
    last: int

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.first <= self.last <= MAX_PORT:
            raise LocalProtocolError(f"bad port range {self.first}-{self.last}")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


ALL_PORTS: Final = (PortRange(0, MAX_PORT),)


def merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    merged: list[PortRange] = []
    for r in sorted(ranges):
        if merged and r.first <= merged[-1].last + 1:
            merged[-1] = PortRange(merged[-1].first, max(merged[-1].last, r.last))
        else:
            merged.append(r)
    return tuple(merged)


def _host_prefix(value: object) -> Network:
    if not isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        raise LocalProtocolError("a node address is an ipaddress network")
    if value.num_addresses != 1:
        raise LocalProtocolError(f"a node address is a single host, not {value}")
    return value


def _addresses(value: Iterable[Network]) -> tuple[Network, ...]:
    return tuple(sorted((_host_prefix(a) for a in value), key=lambda n: (n.version, n)))


@attrs.frozen
class PolicyNode:
    """What the policy needs to know of a node; independent of storage."""

    id: NodeId
    name: str
    tags: frozenset[Tag] = attrs.field(factory=frozenset)
    addresses: tuple[Network, ...] = attrs.field(default=(), converter=_addresses)
    owner: str | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise LocalProtocolError("a node id is a non-empty string")
        if not isinstance(self.tags, frozenset) or not all(isinstance(t, Tag) for t in self.tags):
            raise LocalProtocolError("node tags are a frozenset of Tag")


def inside_any(address: Network, prefixes: Iterable[Network]) -> bool:
    """True when `address` lies in one of `prefixes` (of its own IP version)."""
    return any(
        # typeshed types subnet_of for one version; the version test just before narrows it
        address.version == p.version and address.subnet_of(p)  # type: ignore[arg-type]
        for p in prefixes
    )


@attrs.frozen
class Match:
    """A resolved selector list: which nodes (by tag, name or address) and which prefixes."""

    everything: bool = False
    tags: frozenset[Tag] = frozenset()
    names: frozenset[str] = frozenset()
    prefixes: frozenset[Network] = frozenset()

    def __or__(self, other: Match) -> Match:
        return Match(
            self.everything or other.everything,
            self.tags | other.tags,
            self.names | other.names,
            self.prefixes | other.prefixes,
        )

    def by_identity(self, node: PolicyNode) -> bool:
        """Matched by tag or name (its addresses then enter source prefix lists)."""
        return node.name in self.names or not self.tags.isdisjoint(node.tags)

    def by_address(self, node: PolicyNode) -> bool:
        """Matched because an overlay address lies inside one of the prefixes."""
        return any(inside_any(a, self.prefixes) for a in node.addresses)

    def covers(self, node: PolicyNode) -> bool:
        """True when this selector list selects `node`."""
        return self.everything or self.by_identity(node) or self.by_address(node)


@attrs.frozen
class Grant:
    """One compiled unit of an ACL: src may reach dst on proto/ports (`acl` = its index)."""

    acl: int
    src: Match
    dst: Match
    proto: Proto
    ports: tuple[PortRange, ...]

    def applies(self, proto: Proto, port: int) -> bool:
        """True when this grant's protocol and ports cover a flow (ICMP has no port)."""
        if not self.proto.covers(proto):
            return False
        return proto is Proto.ICMP or any(port in r for r in self.ports)


@attrs.frozen
class PolicyTest:
    """One `tests` entry: src can reach each `accept` target and none of the `deny` ones."""

    index: int
    src: Match
    accept: tuple[tuple[Match, Proto, int], ...]
    deny: tuple[tuple[Match, Proto, int], ...]


def document_digest(document: Mapping[str, JsonValue]) -> str:
    """SHA-256 (hex) of the document's canonical JSON: how the control plane spots a change."""
    return hashlib.sha256(canonical_json(document)).hexdigest()


def pointer_join(base: str, part: str | int) -> str:
    """Extend a pointer by one (escaped) reference token."""
    return base + pointer(part)
