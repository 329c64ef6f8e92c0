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

The package:

    values.py  protocols, port ranges, `PolicyNode`, `Match`, grants, tests, errors
    parser.py  `PolicyParser`: validates a document, collecting every problem, into grants
    model.py   `Policy`: the validated document, evaluated directly, and its policy tests;
               `PolicyVersion`

This module is the package's public face: import from `rustynet.domain.policy`.
"""

from __future__ import annotations

from rustynet.domain.policy.model import Policy, PolicyVersion
from rustynet.domain.policy.values import (
    ACL_KEYS,
    ALL_PORTS,
    DOCUMENT_KEYS,
    EVERYWHERE,
    MAX_PORT,
    TEST_KEYS,
    Grant,
    Match,
    Network,
    NodeId,
    PolicyError,
    PolicyNode,
    PolicyTest,
    PortRange,
    Problem,
    Proto,
    document_digest,
    inside_any,
    pointer,
    pointer_join,
)

__all__ = [
    "ACL_KEYS",
    "ALL_PORTS",
    "DOCUMENT_KEYS",
    "EVERYWHERE",
    "MAX_PORT",
    "TEST_KEYS",
    "Grant",
    "Match",
    "Network",
    "NodeId",
    "Policy",
    "PolicyError",
    "PolicyNode",
    "PolicyTest",
    "PolicyVersion",
    "PortRange",
    "Problem",
    "Proto",
    "document_digest",
    "inside_any",
    "pointer",
    "pointer_join",
]
