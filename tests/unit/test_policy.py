"""Policy documents, validation problems with JSON pointers, tests, versions and compiled views."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from rustynet.domain.errors import LocalProtocolError, RemoteProtocolError
from rustynet.domain.policy import (
    Policy,
    PolicyError,
    PolicyNode,
    PolicyVersion,
    PortRange,
    Proto,
    document_digest,
    pointer,
)
from rustynet.domain.policy_compile import (
    DENY_ALL_VIEW,
    NodeView,
    PolicyIndex,
    changed_views,
    compile_policy,
    host,
)
from rustynet.domain.scope import Tag
from rustynet.domain.signed import JsonValue

SERVER = Tag("tag:server")


def doc(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tagOwners": {"tag:server": ["group:admins"], "tag:dev": ["group:admins"]},
        "groups": {"group:admins": ["alice-laptop"], "group:eng": ["alice-laptop", "tag:dev"]},
        "hosts": {"db": "100.64.0.9/32"},
        "acls": [
            {
                "action": "accept",
                "src": ["group:eng"],
                "dst": ["tag:server:22,80-90", "db:5432"],
                "proto": "tcp",
            }
        ],
    }
    base.update(extra)
    return base


def problems_of(document: object) -> dict[str, str]:
    with pytest.raises(PolicyError) as caught:
        Policy.parse(document)
    assert isinstance(caught.value, RemoteProtocolError)
    return {p.pointer: p.message for p in caught.value.problems}


ALICE = PolicyNode("n1", "alice-laptop", frozenset(), (host("100.64.0.1"), host("fd7a::1")))
SRV = PolicyNode("n2", "web", frozenset({SERVER}), (host("100.64.0.2"),))
DB = PolicyNode("n3", "db-node", frozenset(), (host("100.64.0.9"),))
BOB = PolicyNode("n4", "bob-laptop", frozenset(), (host("100.64.0.4"),))
INVENTORY = [ALICE, SRV, DB, BOB]


def test_valid_document_parses_into_grants() -> None:
    """A valid document yields one grant per distinct port set of each rule."""
    policy = Policy.parse(doc())
    assert len(policy.grants) == 2
    assert {g.ports for g in policy.grants} == {
        (PortRange(22, 22), PortRange(80, 90)),
        (PortRange(5432, 5432),),
    }


def test_unknown_top_level_and_rule_keys_are_rejected_with_pointers() -> None:
    """Unknown keys anywhere are problems pointing at the key."""
    bad = doc(ssh=[], acls=[{"action": "accept", "src": ["*"], "dst": ["*:*"], "users": []}])
    found = problems_of(bad)
    assert "/ssh" in found
    assert "/acls/0/users" in found


def test_every_problem_is_reported_at_its_json_pointer() -> None:
    """Bad CIDRs, unknown groups/hosts/tags, unowned tags and bad ports each get a pointer."""
    bad = doc(
        hosts={"db": "100.64.0.9/24", "ok": "fd7a::/64"},
        acls=[
            {"action": "accept", "src": ["*"], "dst": ["*:*"]},
            {"action": "accept", "src": ["*"], "dst": ["*:*"]},
            {"action": "accept", "src": ["*"], "dst": ["*:*"]},
            {
                "action": "accept",
                "src": ["group:nobody", "10.0.0.0/33", "tag:ghost"],
                "dst": ["tag:server:22", "tag:server:99999", "web:a-b", "nohost"],
                "proto": "sctp",
            },
        ],
    )
    found = problems_of(bad)
    assert "host bits" in found["/hosts/db"]
    assert "unknown group" in found["/acls/3/src/0"]
    assert "bad CIDR" in found["/acls/3/src/1"]
    assert "tagOwners" in found["/acls/3/src/2"]
    assert "port" in found["/acls/3/dst/1"]
    assert "ports" in found["/acls/3/dst/2"]
    assert "selector:ports" in found["/acls/3/dst/3"]
    assert "proto" in found["/acls/3/proto"]
    assert "/acls/3/dst/0" not in found


def test_icmp_rules_refuse_port_lists() -> None:
    """ICMP has no ports: an icmp rule with a port list is a problem."""
    found = problems_of(
        doc(acls=[{"action": "accept", "src": ["*"], "dst": ["*:22"], "proto": "icmp"}])
    )
    assert "ICMP" in found["/acls/0/dst/0"]


def test_wrong_types_and_actions_are_problems_not_crashes() -> None:
    """Non-objects, non-lists, non-strings and other actions are reported, never raised raw."""
    assert problems_of([]) == {"": "a policy is a JSON object"}
    found = problems_of(
        {"acls": [{"action": "drop", "src": "*", "dst": [7]}, 3], "groups": [], "hosts": {"x": 1}}
    )
    assert set(found) >= {
        "/acls/0/action",
        "/acls/0/src",
        "/acls/0/dst/0",
        "/acls/1",
        "/groups",
        "/hosts/x",
    }


def test_group_members_and_tag_owners_are_checked() -> None:
    """Groups do not nest, tag owners name known groups, tags in groups must be owned."""
    found = problems_of(
        {
            "groups": {"group:a": ["group:b", "tag:nope", "bad name!"], "group:b": []},
            "tagOwners": {"tag:x": ["group:missing"], "not-a-tag": []},
        }
    )
    assert "nest" in found["/groups/group:a/0"]
    assert "tagOwners" in found["/groups/group:a/1"]
    assert "not a node name" in found["/groups/group:a/2"]
    assert "unknown group" in found["/tagOwners/tag:x/0"]
    assert "not a tag" in found["/tagOwners/not-a-tag"]


def test_json_pointer_escapes_tilde_and_slash() -> None:
    """Keys holding `/` or `~` are escaped as RFC 6901 says."""
    assert pointer("hosts", "a/b~c", 3) == "/hosts/a~1b~0c/3"
    assert "/hosts/a~1b" in problems_of({"hosts": {"a/b": "10.0.0.0/8"}})


def test_flows_are_default_deny() -> None:
    """Only what a rule names is allowed: other ports, protocols and nodes are denied."""
    policy = Policy.parse(doc())
    assert policy.allows(ALICE, SRV, Proto.TCP, 22)
    assert policy.allows(ALICE, SRV, Proto.TCP, 85)
    assert not policy.allows(ALICE, SRV, Proto.TCP, 23)
    assert not policy.allows(ALICE, SRV, Proto.UDP, 22)
    assert not policy.allows(BOB, SRV, Proto.TCP, 22)
    assert not policy.allows(SRV, ALICE, Proto.TCP, 22)
    assert policy.allows(ALICE, DB, Proto.TCP, 5432)
    assert not Policy.deny_all().allows(ALICE, SRV, Proto.TCP, 22)


def test_policy_tests_pass_against_the_inventory() -> None:
    """Passing accept/deny assertions leave the policy accepted."""
    policy = Policy.parse(
        doc(
            tests=[
                {
                    "src": "alice-laptop",
                    "accept": ["tag:server:22/tcp", "db:5432"],
                    "deny": ["tag:server:22/udp", "bob-laptop:22", "nobody:1"],
                }
            ]
        )
    )
    policy.check(INVENTORY)


def test_failing_policy_tests_are_problems_at_their_pointer() -> None:
    """A failing assertion, or an accept that matches no node, rejects the policy."""
    policy = Policy.parse(
        doc(
            tests=[
                {"src": "bob-laptop", "accept": ["tag:server:22/tcp"]},
                {"src": "alice-laptop", "deny": ["tag:server:80/tcp"]},
                {"src": "alice-laptop", "accept": ["ghost:22"]},
            ]
        )
    )
    with pytest.raises(PolicyError) as caught:
        policy.check(INVENTORY)
    found = {p.pointer: p.message for p in caught.value.problems}
    assert "denied" in found["/tests/0/accept/0"]
    assert "allowed" in found["/tests/1/deny/0"]
    assert "no node" in found["/tests/2/accept/0"]


def test_malformed_policy_tests_are_rejected_at_parse() -> None:
    """Test entries have a fixed shape: src string, selector:port[/proto] targets."""
    found = problems_of(
        doc(tests=[{"src": 1, "accept": ["db"], "deny": ["db:22/sctp"], "extra": True}])
    )
    assert set(found) >= {"/tests/0/src", "/tests/0/accept/0", "/tests/0/deny/0", "/tests/0/extra"}


def test_ipv6_cidr_selectors_and_flows() -> None:
    """IPv6 prefixes work as sources, destinations and test targets."""
    policy = Policy.parse(
        {
            "acls": [{"action": "accept", "src": ["fd7a::/64"], "dst": ["fd7a::/64:443"]}],
            "tests": [{"src": "fd7a::/64", "accept": ["fd7a::/64:443/tcp"]}],
        }
    )
    other = PolicyNode("n9", "v6", frozenset(), (host("fd7a::9"),))
    policy.check([ALICE, other])
    view = compile_policy(policy, [ALICE, other]).view("n9")
    assert view.accepts(host("fd7a::1"), Proto.TCP, 443)
    assert not view.accepts(host("100.64.0.1"), Proto.TCP, 443)


def test_digest_is_of_canonical_json_and_ignores_key_order() -> None:
    """The digest is SHA-256 of canonical JSON: key order does not matter, content does."""
    a: dict[str, JsonValue] = {"hosts": {"x": "10.0.0.0/8"}, "acls": []}
    b: dict[str, JsonValue] = {"acls": [], "hosts": {"x": "10.0.0.0/8"}}
    assert document_digest(a) == document_digest(b) == Policy.parse(a).digest
    assert document_digest(a) != document_digest({"acls": []})


def test_policy_versions_increase_strictly_and_carry_the_digest() -> None:
    """Each stored policy gets the next number and its own digest."""
    v0 = PolicyVersion.initial()
    policy = Policy.parse(doc())
    v1 = v0.succeed(policy)
    v2 = v1.succeed(Policy.deny_all())
    assert (v0.number, v1.number, v2.number) == (0, 1, 2)
    assert v2.is_newer_than(v1)
    assert not v1.is_newer_than(v2)
    assert v1.digest == policy.digest
    with pytest.raises(LocalProtocolError):
        PolicyVersion(-1, v0.digest)
    with pytest.raises(LocalProtocolError):
        PolicyVersion(1, "nothex")


def test_views_see_both_directions_and_filter_inbound_only() -> None:
    """alice -> web: both see each other; only web accepts, and only the named ports."""
    index = compile_policy(Policy.parse(doc()), INVENTORY)
    web, alice, bob = index.view("n2"), index.view("n1"), index.view("n4")
    assert web.visible_peers == frozenset({"n1"})
    assert alice.visible_peers == frozenset({"n2", "n3"})
    assert bob == DENY_ALL_VIEW
    assert alice.inbound == ()
    assert web.accepts(host("100.64.0.1"), Proto.TCP, 80)
    assert web.accepts(host("fd7a::1"), Proto.TCP, 22)
    assert not web.accepts(host("100.64.0.4"), Proto.TCP, 22)
    assert not web.accepts(host("100.64.0.1"), Proto.TCP, 443)


def test_no_policy_means_nobody_sees_anybody() -> None:
    """Default deny: with no policy every view is empty."""
    views = compile_policy(Policy.deny_all(), INVENTORY).views()
    assert all(v == NodeView(frozenset(), ()) for v in views.values())


def test_wildcard_source_accepts_any_address_without_listing_nodes() -> None:
    """`*` as source compiles to 0.0.0.0/0 and ::/0, not to every node's address."""
    policy = Policy.parse({"acls": [{"action": "accept", "src": ["*"], "dst": ["web:*"]}]})
    view = compile_policy(policy, INVENTORY).view("n2")
    assert view.inbound[0].src_prefixes == frozenset(
        {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
    )
    assert view.visible_peers == frozenset({"n1", "n3", "n4"})


def test_retag_wakes_only_nodes_whose_view_changed() -> None:
    """Tagging bob as a server wakes bob and alice (who now sees him), not the db."""
    policy = Policy.parse(doc())
    index = compile_policy(policy, INVENTORY)
    index.views()
    woken = index.put(PolicyNode("n4", "bob-laptop", frozenset({SERVER}), BOB.addresses))
    assert woken == {"n4", "n1"}
    assert index.view("n1").visible_peers == frozenset({"n2", "n3", "n4"})
    assert dict(index.views()) == dict(compile_policy(policy, index_nodes(index)).views())


def test_readdressing_a_source_rebuilds_the_filters_that_name_it() -> None:
    """A new address for alice replaces the old one in web's and db's inbound filters."""
    index = compile_policy(Policy.parse(doc()), INVENTORY)
    woken = index.put(PolicyNode("n1", "alice-laptop", frozenset(), (host("100.64.0.7"),)))
    assert woken == {"n1", "n2", "n3"}
    assert index.view("n2").accepts(host("100.64.0.7"), Proto.TCP, 22)
    assert not index.view("n2").accepts(host("100.64.0.1"), Proto.TCP, 22)


def test_removing_a_node_wakes_those_that_saw_it() -> None:
    """Removing alice wakes web and db and empties their views."""
    index = compile_policy(Policy.parse(doc()), INVENTORY)
    assert index.remove("n1") == {"n1", "n2", "n3"}
    assert "n1" not in index
    assert index.view("n2") == DENY_ALL_VIEW
    with pytest.raises(KeyError):
        index.view("n1")
    with pytest.raises(LocalProtocolError):
        index.remove("n1")


def test_duplicate_addresses_are_refused_and_change_nothing() -> None:
    """Two nodes never share an overlay address; the refused put leaves the index as it was."""
    index = compile_policy(Policy.parse(doc()), INVENTORY)
    before = dict(index.views())
    with pytest.raises(LocalProtocolError, match="already belongs"):
        index.put(PolicyNode("n5", "eve", frozenset({SERVER}), (host("100.64.0.1"),)))
    assert dict(index.views()) == before
    with pytest.raises(LocalProtocolError):
        PolicyIndex(Policy.deny_all(), [ALICE, PolicyNode("x", "x", frozenset(), ALICE.addresses)])


def test_node_addresses_are_single_hosts() -> None:
    """A node address is one host (/32 or /128), not a subnet."""
    with pytest.raises(LocalProtocolError):
        PolicyNode("n", "n", frozenset(), (ipaddress.ip_network("100.64.0.0/24"),))


def test_changed_views_lists_nodes_a_policy_change_affects() -> None:
    """After a policy swap, exactly the nodes whose view differs are reported."""
    before = compile_policy(Policy.parse(doc()), INVENTORY)
    narrower = doc(acls=[{"action": "accept", "src": ["group:eng"], "dst": ["db:5432"]}])
    after = compile_policy(Policy.parse(narrower), INVENTORY)
    assert changed_views(before, after) == {"n1", "n2", "n3"}


def index_nodes(index: PolicyIndex) -> list[PolicyNode]:
    return [index.node(i) for i in index]
