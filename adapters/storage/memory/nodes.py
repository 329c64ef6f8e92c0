"""Enrolled nodes and their overlay address leases in memory."""

from __future__ import annotations

import ipaddress
from datetime import datetime

import attrs
from rustynet.adapters.storage.memory.state import MemoryState, spoil

from rustynet.domain.candidates import Candidate
from rustynet.domain.ipam import AddressPlan, AddressPoolExhausted
from rustynet.domain.keys import TunnelKey, VerifyKey
from rustynet.domain.nat import NatClass
from rustynet.domain.nodes import NodeRecord, NodeStatus
from rustynet.domain.scope import Tag
from rustynet.ports.store import AlreadyExists, NotFound


class MemoryNodes:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    def _lease_of(self, node_id: str) -> ipaddress.IPv4Address | None:
        return next((a for a, n in self._s.leases.items() if n == node_id), None)

    async def add(self, node: NodeRecord) -> None:
        if self._lease_of(node.id) != node.overlay_ipv4:
            raise NotFound("the node's overlay address is not its lease")
        for other in self._s.nodes.values():
            if node.id == other.id or node.name == other.name:
                raise spoil(self._s, AlreadyExists("a node with this id or name exists"))
            if node.identity_key == other.identity_key:
                raise spoil(self._s, AlreadyExists("a node with this identity key exists"))
        self._s.nodes[node.id] = node

    async def get(self, node_id: str) -> NodeRecord | None:
        return self._s.nodes.get(node_id)

    async def get_by_identity(self, identity_key: VerifyKey) -> NodeRecord | None:
        return next((n for n in self._s.nodes.values() if n.identity_key == identity_key), None)

    async def get_by_name(self, name: str) -> NodeRecord | None:
        return next((n for n in self._s.nodes.values() if n.name == name), None)

    async def names_starting_with(self, prefix: str) -> frozenset[str]:
        return frozenset(n.name for n in self._s.nodes.values() if n.name.startswith(prefix))

    async def list_all(self) -> list[NodeRecord]:
        return sorted(self._s.nodes.values(), key=lambda n: (n.created_at, n.id))

    def _require(self, node_id: str) -> NodeRecord:
        node = self._s.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}")
        return node

    def _put(self, node: NodeRecord) -> NodeRecord:
        self._s.nodes[node.id] = node
        return node

    async def rename(self, node_id: str, name: str) -> NodeRecord:
        node = self._require(node_id)
        if any(n.name == name and n.id != node_id for n in self._s.nodes.values()):
            raise spoil(self._s, AlreadyExists(f"a node named {name!r} exists"))
        return self._put(attrs.evolve(node, name=name))

    async def set_tags(self, node_id: str, tags: frozenset[Tag]) -> NodeRecord:
        return self._put(attrs.evolve(self._require(node_id), tags=tags))

    async def set_tunnel_key(
        self, node_id: str, tunnel_key: TunnelKey, expires_at: datetime
    ) -> NodeRecord:
        node = self._require(node_id)
        return self._put(
            attrs.evolve(node, tunnel_key=tunnel_key, tunnel_key_expires_at=expires_at)
        )

    async def set_candidates(
        self,
        node_id: str,
        candidates: tuple[Candidate, ...],
        now: datetime,
        nat: NatClass | None = None,
    ) -> NodeRecord:
        node = self._require(node_id)
        return self._put(
            attrs.evolve(
                node, candidates=candidates, candidates_updated_at=now, nat_classification=nat
            )
        )

    async def touch(self, node_id: str, now: datetime) -> None:
        node = self._require(node_id)
        if node.last_seen_at is None or node.last_seen_at < now:
            self._put(attrs.evolve(node, last_seen_at=now))

    async def revoke(self, node_id: str, now: datetime) -> NodeRecord:
        node = self._require(node_id)
        if node.state is NodeStatus.REVOKED:
            return node
        return self._put(attrs.evolve(node, state=NodeStatus.REVOKED, revoked_at=now))

    async def delete(self, node_id: str) -> None:
        node = self._require(node_id)
        del self._s.nodes[node_id]
        self._s.leases.pop(node.overlay_ipv4, None)


class MemoryIpam:
    def __init__(self, s: MemoryState, plan: AddressPlan) -> None:
        self._s = s
        self._plan = plan

    async def lookup(self, node_id: str) -> ipaddress.IPv4Address | None:
        return next((a for a, n in self._s.leases.items() if n == node_id), None)

    async def allocate(self, node_id: str) -> ipaddress.IPv4Address:
        existing = await self.lookup(node_id)
        if existing is not None:
            return existing
        for candidate in self._plan.candidates(node_id):
            if candidate not in self._s.leases:
                self._s.leases[candidate] = node_id
                return candidate
        raise AddressPoolExhausted(f"no free overlay address in {self._plan.network}")

    async def release(self, node_id: str) -> None:
        if node_id in self._s.nodes:
            raise spoil(self._s, AlreadyExists("the node exists: delete it instead"))
        address = await self.lookup(node_id)
        if address is not None:
            del self._s.leases[address]
