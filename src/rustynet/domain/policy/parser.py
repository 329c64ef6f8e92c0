"""The document parser: one pass over a decoded policy document that collects every problem (not
just the first) and resolves groups, hosts, tags and selectors into grants and tests."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import NamedTuple

from rustynet.domain.errors import RemoteProtocolError
from rustynet.domain.policy.values import (
    ACL_KEYS,
    ALL_PORTS,
    DOCUMENT_KEYS,
    MAX_PORT,
    TEST_KEYS,
    Grant,
    Match,
    Network,
    PolicyError,
    PolicyTest,
    PortRange,
    Problem,
    Proto,
    merge_ranges,
    pointer,
    pointer_join,
)
from rustynet.domain.scope import Tag
from rustynet.domain.signed import JsonValue

_GROUP = re.compile(r"group:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")
_PORTS = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
_LOOKS_IP = re.compile(r"[0-9.]+(?:/\d+)?|.*:.*|.*/.*")


class ParsedPolicy(NamedTuple):
    """A document that passed validation, resolved to grants and tests."""

    grants: tuple[Grant, ...]
    tests: tuple[PolicyTest, ...]
    document: Mapping[str, JsonValue]


class PolicyParser:
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

    def run(self) -> ParsedPolicy:
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
        return ParsedPolicy(grants, tests, doc)

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
        return merge_ranges(ranges)

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
