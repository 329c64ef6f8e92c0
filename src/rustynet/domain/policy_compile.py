"""Policy compilation: per-node views (who a node sees, what it accepts), kept incrementally.

The one rule: a view is exactly what the policy says. A node sees a peer when a flow is allowed
in EITHER direction (the tunnel must exist both ways; the inbound filter then drops what is not
allowed), and its inbound filter accepts a flow exactly when `Policy.allows` does. Incremental
updates must give the same views as a full compile; the property tests check both against the
direct evaluation.

Theory of operation. Each ACL destination entry is a `Grant` r with a source set S_r, a
destination set D_r and the nodes A_r whose addresses enter its source prefixes (matched by tag
or name). For each node the index keeps which grants it is a source of, and which it is a
destination of. Then
  visible(n) = (union of S_r over grants n is a destination of)
             | (union of D_r over grants n is a source of)) - {n}
  inbound(n) = the filter rule of each grant n is a destination of.
Selectors are inverted (tag -> grants, name -> grants, prefix -> grants), so placing one node
costs its tags and prefix lengths, not the rule count. A one-node change (`put`, `remove`)
moves the node between sets, rebuilds only the filter rules whose source prefixes changed, and
decides for each node on the far side of a changed grant whether its view changed (does the
node still have a reason to see the changed one?). Views are built lazily and cached; a change
drops the cached views of the nodes it reports.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping

import attrs

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.policy import (
    EVERYWHERE,
    Grant,
    Match,
    Network,
    NodeId,
    Policy,
    PolicyNode,
    PortRange,
    Proto,
    inside_any,
)
from rustynet.domain.scope import Tag

_EMPTY: frozenset[int] = frozenset()


@attrs.frozen(cache_hash=True)
class FilterRule:
    """Accept flows from `src_prefixes` with `proto` to `port_ranges` (ICMP ignores ports)."""

    src_prefixes: frozenset[Network]
    proto: Proto
    port_ranges: tuple[PortRange, ...]

    def accepts(self, source: Network, proto: Proto, port: int) -> bool:
        """True when a flow from host `source` with `proto`/`port` passes this rule."""
        if not self.proto.covers(proto):
            return False
        if proto is not Proto.ICMP and not any(port in r for r in self.port_ranges):
            return False
        return inside_any(source, self.src_prefixes)


@attrs.frozen
class NodeView:
    """What one node gets from the policy: peers it may see, and what it accepts inbound."""

    visible_peers: frozenset[NodeId]
    inbound: tuple[FilterRule, ...]

    def accepts(self, source: Network, proto: Proto, port: int) -> bool:
        """True when the inbound filter passes a flow from host `source`."""
        return any(rule.accepts(source, proto, port) for rule in self.inbound)


DENY_ALL_VIEW = NodeView(frozenset(), ())


class _Selectors:
    """One side (src or dst) of every grant, inverted for fast placement of a node."""

    def __init__(self, matches: Iterable[Match]) -> None:
        self.everything: set[int] = set()
        self.by_tag: dict[Tag, set[int]] = defaultdict(set)
        self.by_name: dict[str, set[int]] = defaultdict(set)
        # (version, prefix length) -> network address as int -> grants
        self.by_prefix: dict[tuple[int, int], dict[int, set[int]]] = defaultdict(
            lambda: defaultdict(set)
        )
        for r, m in enumerate(matches):
            if m.everything:
                self.everything.add(r)
            for tag in m.tags:
                self.by_tag[tag].add(r)
            for name in m.names:
                self.by_name[name].add(r)
            for p in m.prefixes:
                self.by_prefix[(p.version, p.prefixlen)][int(p.network_address)].add(r)

    def identity(self, node: PolicyNode) -> set[int]:
        """Grants whose selectors name this node by tag or name."""
        found: set[int] = set(self.by_name.get(node.name, _EMPTY))
        for tag in node.tags:
            found |= self.by_tag.get(tag, _EMPTY)
        return found

    def address(self, node: PolicyNode) -> set[int]:
        """Grants with a prefix containing one of the node's addresses."""
        found: set[int] = set()
        if not self.by_prefix or not node.addresses:
            return found
        hosts = [(a.version, int(a.network_address)) for a in node.addresses]
        for (version, length), table in self.by_prefix.items():
            bits = 32 if version == 4 else 128
            mask = ((1 << length) - 1) << (bits - length)
            for host_version, value in hosts:
                if host_version == version:
                    hit = table.get(value & mask)
                    if hit:
                        found |= hit
        return found


@attrs.frozen
class _Placement:
    """Which grants a node is a source of (all / by identity) and a destination of."""

    src: frozenset[int]
    src_identity: frozenset[int]
    dst: frozenset[int]
    addresses: tuple[Network, ...]


_NOWHERE = _Placement(_EMPTY, _EMPTY, _EMPTY, ())


class PolicyIndex:
    """Compiled per-node views of one policy over a node inventory, updated one node at a time.

    Build with `compile_policy`. `put(node)` (add, retag, rename, readdress) and `remove(id)`
    return the ids to wake: every node whose view changed, the changed node itself, and the
    nodes that see it (their maps carry its addresses). Node ids and addresses are unique;
    a change that breaks that raises `LocalProtocolError` and changes nothing.
    """

    def __init__(self, policy: Policy, nodes: Iterable[PolicyNode] = ()) -> None:
        self.policy = policy
        grants = policy.grants
        self._grants: tuple[Grant, ...] = grants
        self._src = _Selectors(g.src for g in grants)
        self._dst = _Selectors(g.dst for g in grants)
        self._nodes: dict[NodeId, PolicyNode] = {}
        self._owner_of: dict[Network, NodeId] = {}
        self._placed: dict[NodeId, _Placement] = {}
        self._sources: list[set[NodeId]] = [set() for _ in grants]
        self._identity: list[set[NodeId]] = [set() for _ in grants]
        self._targets: list[set[NodeId]] = [set() for _ in grants]
        self._views: dict[NodeId, NodeView] = {}
        self._seen: dict[NodeId, frozenset[NodeId]] = {}
        self._inbound: dict[NodeId, tuple[FilterRule, ...]] = {}
        # peers that came (True) or went (False) since `_seen` was cached, applied on read
        self._pending: dict[NodeId, dict[NodeId, bool]] = {}
        self._unions: dict[tuple[frozenset[int], frozenset[int]], frozenset[NodeId]] = {}
        for node in nodes:
            self._check_unique(node)
            self._nodes[node.id] = node
            for a in node.addresses:
                self._owner_of[a] = node.id
            placed = self._place(node)
            self._placed[node.id] = placed
            for r in placed.src:
                self._sources[r].add(node.id)
            for r in placed.src_identity:
                self._identity[r].add(node.id)
            for r in placed.dst:
                self._targets[r].add(node.id)
        self._filters: list[FilterRule] = [self._filter(r) for r in range(len(grants))]

    # -- queries ---------------------------------------------------------------------------

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __iter__(self) -> Iterator[NodeId]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def node(self, node_id: NodeId) -> PolicyNode:
        """The node as last put; KeyError when unknown."""
        return self._nodes[node_id]

    def view(self, node_id: NodeId) -> NodeView:
        """The view of one node (built on first use, then cached); KeyError when unknown."""
        cached = self._views.get(node_id)
        if cached is not None:
            return cached
        placed = self._placed[node_id]
        seen = self._seen.get(node_id)
        pending = self._pending.pop(node_id, None)
        if seen is not None and pending:
            came = {peer for peer, present in pending.items() if present}
            seen = (seen | came) - {peer for peer, present in pending.items() if not present}
            self._seen[node_id] = seen
        if seen is None:
            seen = self._union(placed)
            if node_id in seen:
                seen = seen - {node_id}
            self._seen[node_id] = seen
        inbound = self._inbound.get(node_id)
        if inbound is None:
            rules = (self._filters[r] for r in sorted(placed.dst))
            inbound = tuple(dict.fromkeys(f for f in rules if f.src_prefixes))
            self._inbound[node_id] = inbound
        view = NodeView(seen, inbound)
        self._views[node_id] = view
        return view

    def views(self) -> Mapping[NodeId, NodeView]:
        """Every node's view (builds the ones not cached yet)."""
        return {node_id: self.view(node_id) for node_id in self._nodes}

    # -- one-node changes ------------------------------------------------------------------

    def put(self, node: PolicyNode) -> frozenset[NodeId]:
        """Add or replace one node; return the ids to wake.

        That is the node itself, every node whose view changed, and, when the node's name or
        addresses changed, every node that sees it (its peer entry in their maps changed).
        """
        self._check_unique(node)
        old_node = self._nodes.get(node.id)
        woken: set[NodeId] = set()
        if old_node is not None:
            if (old_node.name, old_node.addresses) != (node.name, node.addresses):
                woken |= self.view(node.id).visible_peers
            for a in old_node.addresses:
                del self._owner_of[a]
        self._nodes[node.id] = node
        for a in node.addresses:
            self._owner_of[a] = node.id
        self._move(node.id, self._placed.get(node.id, _NOWHERE), self._place(node), woken)
        if old_node is None or (old_node.name, old_node.addresses) != (node.name, node.addresses):
            woken |= self.view(node.id).visible_peers
        return frozenset(woken)

    def remove(self, node_id: NodeId) -> frozenset[NodeId]:
        """Remove one node; return the ids to wake (the removed one and those that saw it)."""
        if node_id not in self._nodes:
            raise LocalProtocolError(f"no node {node_id!r} in the policy index")
        woken = set(self.view(node_id).visible_peers)
        for a in self._nodes.pop(node_id).addresses:
            del self._owner_of[a]
        self._move(node_id, self._placed[node_id], _NOWHERE, woken)
        return frozenset(woken)

    # -- internals -------------------------------------------------------------------------

    def _check_unique(self, node: PolicyNode) -> None:
        if not isinstance(node, PolicyNode):
            raise LocalProtocolError("the policy index holds PolicyNode values")
        for a in node.addresses:
            owner = self._owner_of.get(a, node.id)
            if owner != node.id:
                raise LocalProtocolError(f"address {a} already belongs to node {owner!r}")

    def _place(self, node: PolicyNode) -> _Placement:
        identity = self._src.identity(node)
        src = identity | self._src.address(node) | self._src.everything
        dst = self._dst.identity(node) | self._dst.address(node) | self._dst.everything
        return _Placement(
            frozenset(src),
            frozenset(identity - self._src.everything),
            frozenset(dst),
            node.addresses,
        )

    def _filter(self, r: int) -> FilterRule:
        grant = self._grants[r]
        if grant.src.everything:
            prefixes = EVERYWHERE
        else:
            nodes = self._nodes
            found = set(grant.src.prefixes)
            for node_id in self._identity[r]:
                found.update(nodes[node_id].addresses)
            prefixes = frozenset(found)
        return FilterRule(prefixes, grant.proto, grant.ports)

    def _union(self, placed: _Placement) -> frozenset[NodeId]:
        key = (placed.src, placed.dst)
        cached = self._unions.get(key)
        if cached is None:
            sources, targets = self._sources, self._targets
            cached = frozenset().union(
                *[sources[r] for r in placed.dst], *[targets[r] for r in placed.src]
            )
            self._unions[key] = cached
        return cached

    def _move(self, node_id: NodeId, old: _Placement, new: _Placement, woken: set[NodeId]) -> None:
        """Move one node from placement `old` to `new`, collecting the views that changed."""
        woken.add(node_id)
        for r in old.src - new.src:
            self._sources[r].discard(node_id)
        for r in new.src - old.src:
            self._sources[r].add(node_id)
        for r in old.dst - new.dst:
            self._targets[r].discard(node_id)
        for r in new.dst - old.dst:
            self._targets[r].add(node_id)
        refilter = old.src_identity ^ new.src_identity
        if old.addresses != new.addresses:
            refilter |= old.src_identity & new.src_identity
        for r in old.src_identity - new.src_identity:
            self._identity[r].discard(node_id)
        for r in new.src_identity - old.src_identity:
            self._identity[r].add(node_id)
        for r in refilter:
            rebuilt = self._filter(r)
            if rebuilt != self._filters[r]:
                self._filters[r] = rebuilt
                for target in self._targets[r]:
                    self._inbound.pop(target, None)
                    self._views.pop(target, None)
                woken |= self._targets[r]
        for cache in (self._seen, self._pending, self._inbound, self._views):
            cache.pop(node_id, None)
        self._unions.clear()
        self._wake_visibility_changes(node_id, old, new, woken)

    def _wake_visibility_changes(
        self, node_id: NodeId, old: _Placement, new: _Placement, woken: set[NodeId]
    ) -> None:
        """Add every other node whose reason to see `node_id` appeared or vanished."""
        candidates: set[NodeId] = set()
        for r in old.src ^ new.src:
            candidates |= self._targets[r]
        for r in old.dst ^ new.dst:
            candidates |= self._sources[r]
        candidates.discard(node_id)
        placed, seen, pending, views = self._placed, self._seen, self._pending, self._views
        old_src, old_dst, new_src, new_dst = old.src, old.dst, new.src, new.dst
        for other in candidates:
            there = placed[other]
            its_src, its_dst = there.src, there.dst
            before = not old_src.isdisjoint(its_dst) or not old_dst.isdisjoint(its_src)
            after = not new_src.isdisjoint(its_dst) or not new_dst.isdisjoint(its_src)
            if before != after:
                woken.add(other)
                views.pop(other, None)
                if other in seen:  # only `node_id` came or went: note it, patch on read
                    pending.setdefault(other, {})[node_id] = after
        if new is _NOWHERE:
            placed.pop(node_id, None)
        else:
            placed[node_id] = new


def compile_policy(policy: Policy, nodes: Iterable[PolicyNode]) -> PolicyIndex:
    """Compile `policy` over an inventory (ids and addresses unique)."""
    return PolicyIndex(policy, nodes)


def changed_views(before: PolicyIndex, after: PolicyIndex) -> frozenset[NodeId]:
    """Ids whose view differs between two compilations (after a policy change), or that exist
    in only one of them; builds every view of both."""
    ids = set(before) | set(after)
    return frozenset(
        i for i in ids if i not in before or i not in after or before.view(i) != after.view(i)
    )


def host(text: str) -> Network:
    """Parse one host address (`100.64.0.5` or `fd7a::5`) as a single-address network."""
    return ipaddress.ip_network(text)
