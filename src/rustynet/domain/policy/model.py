"""`Policy`: a validated document resolved to grants, its direct evaluation of a flow (default
deny) and its policy tests run against a node inventory; `PolicyVersion`, the version a stored
policy carries."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import attrs

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.policy.parser import PolicyParser
from rustynet.domain.policy.values import (
    Grant,
    Network,
    PolicyError,
    PolicyNode,
    PolicyTest,
    Problem,
    Proto,
    document_digest,
    inside_any,
    pointer,
)
from rustynet.domain.signed import JsonValue


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
        parsed = PolicyParser(document).run()
        return cls(parsed.grants, parsed.tests, document_digest(parsed.document), parsed.document)

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
