"""Ports: the node registry and the overlay address leases."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Protocol

from rustynet.domain.candidates import Candidate
from rustynet.domain.keys import TunnelKey, VerifyKey
from rustynet.domain.nat import NatClass
from rustynet.domain.nodes import NodeRecord
from rustynet.domain.scope import Tag


class NodeRepository(Protocol):
    """Enrolled nodes. Ids, names and identity keys are unique (`AlreadyExists`); the node's
    overlay address must be its IPAM lease (allocate first, in the same unit of work)."""

    async def add(self, node: NodeRecord) -> None:
        """Insert a new node; `AlreadyExists` on a taken id, name or identity key;
        `NotFound` when `node.overlay_ipv4` is not this node's lease."""
        ...

    async def get(self, node_id: str) -> NodeRecord | None:
        """The node, or None."""
        ...

    async def get_by_identity(self, identity_key: VerifyKey) -> NodeRecord | None:
        """The node enrolled with this identity key, or None."""
        ...

    async def get_by_name(self, name: str) -> NodeRecord | None:
        """The node called `name` (exact, case-sensitive), or None."""
        ...

    async def names_starting_with(self, prefix: str) -> frozenset[str]:
        """Names of all nodes whose name starts with `prefix` (exact, case-sensitive)."""
        ...

    async def list_all(self) -> list[NodeRecord]:
        """Every node (active and revoked), ordered by creation time then id."""
        ...

    async def rename(self, node_id: str, name: str) -> NodeRecord:
        """Set the name; `NotFound`, or `AlreadyExists` when another node has it."""
        ...

    async def set_tags(self, node_id: str, tags: frozenset[Tag]) -> NodeRecord:
        """Replace the node's tags; `NotFound`."""
        ...

    async def set_tunnel_key(
        self, node_id: str, tunnel_key: TunnelKey, expires_at: datetime
    ) -> NodeRecord:
        """Replace the tunnel key and its binding expiry; `NotFound`."""
        ...

    async def set_candidates(
        self,
        node_id: str,
        candidates: tuple[Candidate, ...],
        now: datetime,
        nat: NatClass | None = None,
    ) -> NodeRecord:
        """Replace the node's candidates (order kept) and NAT classification, updated at
        `now`; `NotFound`."""
        ...

    async def touch(self, node_id: str, now: datetime) -> None:
        """Record that the node was seen at `now`; `NotFound`."""
        ...

    async def revoke(self, node_id: str, now: datetime) -> NodeRecord:
        """Mark the node revoked at `now` (idempotent: a revoked node keeps its first time);
        `NotFound`. The address stays leased until `delete`."""
        ...

    async def delete(self, node_id: str) -> None:
        """Remove the node and release its overlay address; `NotFound`."""
        ...


class IpamRepository(Protocol):
    """Overlay address leases (`domain.ipam.AddressPlan` decides the candidates)."""

    async def allocate(self, node_id: str) -> ipaddress.IPv4Address:
        """The node's leased address: the existing lease if it has one (stable), else the
        first free candidate of its probe sequence, claimed with an insert a unique constraint
        decides. Raises `ipam.AddressPoolExhausted` when no candidate is free."""
        ...

    async def lookup(self, node_id: str) -> ipaddress.IPv4Address | None:
        """The node's leased address, or None."""
        ...

    async def release(self, node_id: str) -> None:
        """Drop the lease of a node that has no node record (`AlreadyExists` while the node
        exists: delete the node instead); releasing nothing is a no-op."""
        ...
