"""Access policy: the document, its validation, and the direct evaluation of a flow.

The one rule: default deny. A flow is allowed only when some `accept` rule names its source,
its destination, its protocol and its port; no policy at all (`Policy.deny_all()`) allows
nothing. A document that fails validation raises `PolicyError` listing every problem with an
RFC 6901 JSON pointer, and produces no `Policy` at all, so a rejected document changes nothing.

Document (already-decoded JSON; the HTTP edge decodes)::

    {"groups":    {"group:eng": ["alice-laptop", "tag:dev"]},
     "tagOwners": {"tag:server": ["group:admins"]},
     "hosts":     {"db": "100.64.0.5/32"},
     "acls":      [{"action": "accept", "src": ["group:eng"],
                    "dst": ["tag:server:22,80-90", "db:*"], "proto": "tcp"}],
     "tests":     [{"src": "alice-laptop", "accept": ["tag:server:22/tcp"],
                    "deny": ["db:5432/tcp"]}]}

Selectors: `*` (every node, any source address), `tag:NAME` (nodes carrying the tag; every tag
used must be listed in `tagOwners`), `group:NAME` (its members: node names and tags; groups do
not nest), a `hosts` name (its prefix), an IPv4/IPv6 CIDR, or a node name. A bare name is a host
when `hosts` defines it, else a node name (a node that has not enrolled yet simply matches
nothing). A destination is `selector:ports`, ports `*` or `22,80-90`; `proto` is tcp, udp, icmp
or any (the default); ICMP carries no port, so an icmp rule must say `*`, and a port list on an
`any` rule does not restrict ICMP.

Sources are matched by address: a CIDR or host selector admits exactly the source addresses
inside it (`allows_from`, what the inbound filter enforces), and a node with any overlay address
inside it counts as a source for visibility (`allows`, `reaches`). Tags, groups and names admit
all of a node's addresses. Destinations are matched per node: a node selected by a destination
accepts the flow on all of its overlay addresses.

Policy tests are evaluated against the node inventory given at check time; an `accept`
assertion that matches no node fails (it cannot hold), a `deny` assertion that matches nothing
holds.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
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

_GROUP = re.compile(r"group:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")
_PORTS = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
_LOOKS_IP = re.compile(r"[0-9.]+(?:/\d+)?|.*:.*|.*/.*")


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


def _merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
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


@attrs.frozen
class PolicyVersion:
    """A stored policy's version: a strictly increasing number and the document digest."""

    number: int
    digest: str

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.number, int) or self.number < 0:
            raise LocalProtocolError("a policy version number is a non-negative int")
        if not re.fullmatch(r"[0-9a-f]{64}", self.digest):
            raise LocalProtocolError("a policy digest is 64 lowercase hex digits")

    @classmethod
    def initial(cls) -> PolicyVersion:
        """Version 0: no policy stored (deny all)."""
        return cls(0, document_digest({}))

    def succeed(self, policy: Policy) -> PolicyVersion:
        """The version after storing `policy`: number + 1, its digest."""
        return PolicyVersion(self.number + 1, policy.digest)

    def is_newer_than(self, other: PolicyVersion) -> bool:
        """True when this version was stored after `other`."""
        return self.number > other.number


@attrs.frozen
class Policy:
    """A validated policy document, resolved to grants; build with `parse` or `deny_all`."""

    grants: tuple[Grant, ...]
    tests: tuple[PolicyTest, ...]
    digest: str
    document: Mapping[str, JsonValue] = attrs.field(eq=False, repr=False)

    @classmethod
    def deny_all(cls) -> Policy:
        """No policy: nothing is allowed and nobody sees anybody."""
        return cls((), (), document_digest({}), {})

    @classmethod
    def parse(cls, document: object) -> Policy:
        """Validate a decoded JSON document; raise `PolicyError` listing every problem."""
        return _Parser(document).run()

    def allows(self, src: PolicyNode, dst: PolicyNode, proto: Proto, port: int) -> bool:
        """Direct evaluation (no compilation): may `src` open this flow to `dst`?"""
        if proto is Proto.ANY:
            raise LocalProtocolError("a flow has a concrete protocol: tcp, udp or icmp")
        return any(
            g.applies(proto, port) and g.dst.covers(dst) and g.src.covers(src) for g in self.grants
        )

    def allows_from(
        self, src: PolicyNode, address: Network, dst: PolicyNode, proto: Proto, port: int
    ) -> bool:
        """Direct evaluation for one source address of `src` (what a packet filter sees)."""
        if proto is Proto.ANY:
            raise LocalProtocolError("a flow has a concrete protocol: tcp, udp or icmp")
        return any(
            g.applies(proto, port)
            and g.dst.covers(dst)
            and (g.src.everything or g.src.by_identity(src) or inside_any(address, g.src.prefixes))
            for g in self.grants
        )

    def reaches(self, src: PolicyNode, dst: PolicyNode) -> bool:
        """True when some flow (any protocol, any port) from `src` to `dst` is allowed."""
        return any(g.dst.covers(dst) and g.src.covers(src) for g in self.grants)

    def check(self, nodes: Iterable[PolicyNode]) -> None:
        """Run the document's tests against an inventory; raise `PolicyError` on any failure."""
        inventory = list(nodes)
        problems: list[Problem] = []
        for test in self.tests:
            sources = [n for n in inventory if test.src.covers(n)]
            for kind, cases in (("accept", test.accept), ("deny", test.deny)):
                for j, (target, proto, port) in enumerate(cases):
                    where = pointer("tests", test.index, kind, j)
                    targets = [n for n in inventory if target.covers(n)]
                    if kind == "accept" and (not sources or not targets):
                        problems.append(Problem(where, "matches no node in the inventory"))
                        continue
                    want = kind == "accept"
                    bad = next(
                        (
                            (s, d)
                            for s in sources
                            for d in targets
                            if s.id != d.id and self.allows(s, d, proto, port) != want
                        ),
                        None,
                    )
                    if bad is not None:
                        verb = "is denied" if want else "is allowed"
                        problems.append(Problem(where, f"{bad[0].name} -> {bad[1].name} {verb}"))
        if problems:
            raise PolicyError(problems)


class _Parser:
    """One pass over a document collecting every problem (not just the first)."""

    def __init__(self, document: object) -> None:
        self.doc = document
        self.problems: list[Problem] = []
        self.groups: dict[str, Match] = {}
        self.hosts: dict[str, Network] = {}
        self.owned: set[Tag] = set()
        self.tag_uses: list[tuple[Tag, str]] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def run(self) -> Policy:
        doc = self.doc
        if not isinstance(doc, Mapping):
            raise PolicyError([Problem("", "a policy is a JSON object")])
        for key in doc:
            if key not in DOCUMENT_KEYS:
                self.fail(pointer(str(key)), f"unknown key (allowed: {sorted(DOCUMENT_KEYS)})")
        self._tag_owners(doc.get("tagOwners", {}))
        self._hosts(doc.get("hosts", {}))
        self._groups(doc.get("groups", {}))
        grants = self._acls(doc.get("acls", []))
        tests = self._tests(doc.get("tests", []))
        for tag, where in self.tag_uses:
            if tag not in self.owned:
                self.fail(where, f"{tag} has no entry in tagOwners")
        if self.problems:
            raise PolicyError(self.problems)
        return Policy(grants, tests, document_digest(doc), doc)

    def _object(self, value: object, where: str) -> Mapping[str, object]:
        if not isinstance(value, Mapping):
            self.fail(where, "expected an object")
            return {}
        return value

    def _strings(self, value: object, where: str, *, non_empty: bool = False) -> list[str]:
        if not isinstance(value, list):
            self.fail(where, "expected a list of strings")
            return []
        if non_empty and not value:
            self.fail(where, "must not be empty")
        out: list[str] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.fail(pointer_join(where, i), "expected a string")
        return out

    def _tag(self, text: str, where: str) -> Tag | None:
        try:
            tag = Tag(text)
        except RemoteProtocolError:
            self.fail(where, f"not a tag: {text!r} (expected tag:lowercase-name)")
            return None
        self.tag_uses.append((tag, where))
        return tag

    def _tag_owners(self, value: object) -> None:
        owners = self._object(value, "/tagOwners")
        for key, members in owners.items():
            where = pointer("tagOwners", key)
            try:
                self.owned.add(Tag(key))
            except RemoteProtocolError:
                self.fail(where, f"not a tag: {key!r} (expected tag:lowercase-name)")
            for i, member in enumerate(self._strings(members, where)):
                if member.startswith("group:") and member not in self._declared_groups():
                    self.fail(pointer_join(where, i), f"unknown group {member!r}")

    def _declared_groups(self) -> set[str]:
        groups = self.doc.get("groups", {}) if isinstance(self.doc, Mapping) else {}
        return set(groups) if isinstance(groups, Mapping) else set()

    def _hosts(self, value: object) -> None:
        for key, cidr in self._object(value, "/hosts").items():
            where = pointer("hosts", key)
            if not _NAME.fullmatch(key):
                self.fail(where, f"not a host name: {key!r}")
                continue
            if not isinstance(cidr, str):
                self.fail(where, "expected a CIDR string")
                continue
            network = self._cidr(cidr, where)
            if network is not None:
                self.hosts[key] = network

    def _cidr(self, text: str, where: str) -> Network | None:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            self.fail(where, f"bad CIDR {text!r}: {exc}")
            return None

    def _groups(self, value: object) -> None:
        for key, members in self._object(value, "/groups").items():
            where = pointer("groups", key)
            if not _GROUP.fullmatch(key):
                self.fail(where, f"not a group name: {key!r} (expected group:lowercase-name)")
                continue
            match = Match()
            for i, member in enumerate(self._strings(members, where)):
                at = pointer_join(where, i)
                if member.startswith("group:"):
                    self.fail(at, "groups do not nest")
                elif member.startswith("tag:"):
                    tag = self._tag(member, at)
                    if tag is not None:
                        match = match | Match(tags=frozenset({tag}))
                elif _NAME.fullmatch(member):
                    match = match | Match(names=frozenset({member}))
                else:
                    self.fail(at, f"not a node name or tag: {member!r}")
            self.groups[key] = match

    def _selector(self, text: str, where: str) -> Match | None:  # noqa: PLR0911 - one return per selector kind
        if text == "*":
            return Match(everything=True)
        if text.startswith("tag:"):
            tag = self._tag(text, where)
            return None if tag is None else Match(tags=frozenset({tag}))
        if text.startswith("group:"):
            if text not in self.groups:
                self.fail(where, f"unknown group {text!r}")
                return None
            return self.groups[text]
        if text in self.hosts:
            return Match(prefixes=frozenset({self.hosts[text]}))
        if _LOOKS_IP.fullmatch(text):
            network = self._cidr(text, where)
            return None if network is None else Match(prefixes=frozenset({network}))
        if _NAME.fullmatch(text):
            return Match(names=frozenset({text}))
        self.fail(where, f"not a selector: {text!r}")
        return None

    def _ports(self, text: str, where: str) -> tuple[PortRange, ...] | None:
        if text == "*":
            return ALL_PORTS
        ranges: list[PortRange] = []
        for part in text.split(","):
            m = _PORTS.fullmatch(part)
            if m is None:
                self.fail(where, f"malformed ports {text!r} (expected *, 22 or 80-90, ...)")
                return None
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) else first
            if not 1 <= first <= last <= MAX_PORT:
                self.fail(where, f"bad port range {part!r} (1-65535, low-high)")
                return None
            ranges.append(PortRange(first, last))
        return _merge_ranges(ranges)

    def _acls(self, value: object) -> tuple[Grant, ...]:
        if not isinstance(value, list):
            self.fail("/acls", "expected a list of rules")
            return ()
        grants: list[Grant] = []
        for i, rule in enumerate(value):
            where = pointer("acls", i)
            if not isinstance(rule, Mapping):
                self.fail(where, "expected an object")
                continue
            for key in rule:
                if key not in ACL_KEYS:
                    self.fail(pointer_join(where, str(key)), "unknown key")
            if rule.get("action") != "accept":
                self.fail(pointer_join(where, "action"), 'action must be "accept"')
            proto = self._proto(rule.get("proto", "any"), pointer_join(where, "proto"))
            src = Match()
            src_ok = True
            for j, text in enumerate(
                self._strings(rule.get("src"), pointer_join(where, "src"), non_empty=True)
            ):
                m = self._selector(text, pointer_join(pointer_join(where, "src"), j))
                src_ok = src_ok and m is not None
                src = src | (m or Match())
            by_ports: dict[tuple[PortRange, ...], Match] = {}
            for j, text in enumerate(
                self._strings(rule.get("dst"), pointer_join(where, "dst"), non_empty=True)
            ):
                at = pointer_join(pointer_join(where, "dst"), j)
                selector, sep, port_text = text.rpartition(":")
                if not sep or not selector:
                    self.fail(at, f"expected selector:ports, got {text!r}")
                    continue
                m = self._selector(selector, at)
                ports = self._ports(port_text, at)
                if proto is Proto.ICMP and ports is not None and ports != ALL_PORTS:
                    self.fail(at, "ICMP has no ports: use selector:*")
                if m is not None and ports is not None:
                    by_ports[ports] = by_ports.get(ports, Match()) | m
            if src_ok and proto is not None:
                grants.extend(Grant(i, src, dst, proto, ports) for ports, dst in by_ports.items())
        return tuple(grants)

    def _proto(self, value: object, where: str) -> Proto | None:
        try:
            return Proto(value)
        except ValueError:
            self.fail(where, "proto must be tcp, udp, icmp or any")
            return None

    def _tests(self, value: object) -> tuple[PolicyTest, ...]:
        if not isinstance(value, list):
            self.fail("/tests", "expected a list of tests")
            return ()
        tests: list[PolicyTest] = []
        for i, test in enumerate(value):
            where = pointer("tests", i)
            if not isinstance(test, Mapping):
                self.fail(where, "expected an object")
                continue
            for key in test:
                if key not in TEST_KEYS:
                    self.fail(pointer_join(where, str(key)), "unknown key")
            src_text = test.get("src")
            src = None
            if isinstance(src_text, str):
                src = self._selector(src_text, pointer_join(where, "src"))
            else:
                self.fail(pointer_join(where, "src"), "expected a selector string")
            cases: dict[str, list[tuple[Match, Proto, int]]] = {"accept": [], "deny": []}
            for kind, found in cases.items():
                for j, text in enumerate(
                    self._strings(test.get(kind, []), pointer_join(where, kind))
                ):
                    case = self._flow(text, pointer_join(pointer_join(where, kind), j))
                    if case is not None:
                        found.append(case)
            if src is not None:
                tests.append(PolicyTest(i, src, tuple(cases["accept"]), tuple(cases["deny"])))
        return tuple(tests)

    def _flow(self, text: str, where: str) -> tuple[Match, Proto, int] | None:
        target, slash, proto_text = text.rpartition("/")
        if not slash or not proto_text.isalpha():  # no protocol given (or an IPv6 prefix length)
            target, proto_text = text, ""
        selector, sep, port_text = target.rpartition(":")
        proto = Proto.TCP
        if proto_text:
            try:
                proto = Proto(proto_text)
            except ValueError:
                proto = Proto.ANY
            if proto is Proto.ANY:
                self.fail(where, f"flow protocol must be tcp, udp or icmp, got {proto_text!r}")
                return None
        if not sep or not selector or not port_text.isdigit() or int(port_text) > MAX_PORT:
            self.fail(where, f"expected selector:port[/proto], got {text!r}")
            return None
        match = self._selector(selector, where)
        return None if match is None else (match, proto, int(port_text))


def pointer_join(base: str, part: str | int) -> str:
    """Extend a pointer by one (escaped) reference token."""
    return base + pointer(part)
