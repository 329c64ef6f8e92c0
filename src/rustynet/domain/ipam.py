"""Overlay address plan (IPAM rules): which address a node should get, as pure data.

The one rule: every node holds exactly one overlay address from 100.64.0.0/10 (or a subnet of
it), no two live nodes ever hold the same one, and a node keeps its address until it is deleted.

Theory of operation. The plan does not remember anything; storage does. For a node id the plan
yields a deterministic probe sequence over the whole network: start at `H1 mod size` and step
by an odd stride `H2` (both from SHA-256 of the node id). Because the network size is a power of
two, an odd stride visits every address exactly once, so the sequence is a permutation: a free
address is always found if one exists (within `max_probes`). Nodes land spread out over the
/10 (no hot spot at the low end, ids do not leak enrollment order) yet the same node id always
probes the same addresses, so tests and re-runs are reproducible.

Storage allocates by trying the candidates in order with an insert that a unique constraint on
the address decides (the loser simply tries the next candidate); a lease is released only when
its node is deleted, so an address is never reused while its node exists.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from typing import Final

import attrs

from rustynet.domain.errors import LocalProtocolError

OVERLAY_NETWORK: Final = ipaddress.IPv4Network("100.64.0.0/10")
"""Shared address space (RFC 6598): not routed on the internet, rarely used on home LANs."""

RESERVED_ADDRESSES: Final = frozenset({ipaddress.IPv4Address("100.100.100.100")})
"""Kept free for an in-overlay service address (resolver), as other mesh VPNs do."""

DEFAULT_MAX_PROBES: Final = 4096
_ID_TAG: Final = b"rustynet:ipam-probe:v1\x00"


class AddressPlanError(LocalProtocolError):
    """An address plan was built with a network outside the overlay range or too small."""


class AddressPoolExhausted(LocalProtocolError):  # noqa: N818 - names the state, like KeyNotFound
    """No free address was found within the probe budget: the pool is (nearly) full."""


def _network(_: object, attribute: attrs.Attribute[ipaddress.IPv4Network], value: object) -> None:
    if not isinstance(value, ipaddress.IPv4Network) or not value.subnet_of(OVERLAY_NETWORK):
        raise AddressPlanError(f"{attribute.name} must be a subnet of {OVERLAY_NETWORK}")
    if value.prefixlen > 30:
        raise AddressPlanError("an overlay network needs at least 4 addresses")


@attrs.frozen
class AddressPlan:
    """The overlay network, addresses never handed out, and the probe budget."""

    network: ipaddress.IPv4Network = attrs.field(default=OVERLAY_NETWORK, validator=_network)
    reserved: frozenset[ipaddress.IPv4Address] = RESERVED_ADDRESSES
    max_probes: int = DEFAULT_MAX_PROBES

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.max_probes, int) or self.max_probes < 1:
            raise AddressPlanError("max_probes must be a positive int")

    def usable(self, address: ipaddress.IPv4Address) -> bool:
        """True for an address a node may hold (inside, not network/broadcast, not reserved)."""
        return (
            address in self.network
            and address not in (self.network.network_address, self.network.broadcast_address)
            and address not in self.reserved
        )

    def candidates(self, node_id: str) -> Iterator[ipaddress.IPv4Address]:
        """The node's probe sequence: distinct usable addresses, at most `max_probes` of them."""
        if not isinstance(node_id, str) or not node_id:
            raise LocalProtocolError("a node id is a non-empty string")
        digest = hashlib.sha256(_ID_TAG + node_id.encode()).digest()
        size = self.network.num_addresses
        start = int.from_bytes(digest[:8], "big") % size
        stride = (int.from_bytes(digest[8:16], "big") % size) | 1  # odd: a full permutation
        base = int(self.network.network_address)
        yielded = 0
        for step in range(size):
            if yielded >= self.max_probes:
                return
            address = ipaddress.IPv4Address(base + (start + step * stride) % size)
            if self.usable(address):
                yielded += 1
                yield address
