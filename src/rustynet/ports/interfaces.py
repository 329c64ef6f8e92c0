"""What a node learns about its own host for candidate gathering: interface addresses and the
reflexive (NAT-mapped) address of its tunnel port.

All are I/O, so they are ports: the node's adapter reads addresses and watches for changes
with ip(8) (not pyroute2, which costs ~10 MB of RSS on the node); reflexive discovery
(`application/node/nat_discovery.py`) probes through a `NatProbe`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from rustynet.domain.candidates import Candidate
from rustynet.domain.errors import RustynetError
from rustynet.domain.nat import NatClass, StunObservation
from rustynet.domain.netmap import PeerMap
from rustynet.domain.tunnel import IPAddress, UnderlayEndpoint


class InterfaceAddresses(Protocol):
    """The host's interface addresses, read now."""

    async def addresses(self) -> Mapping[str, tuple[IPAddress, ...]]:
        """Interface name → its addresses (every family and scope; callers filter)."""
        ...


class InterfaceChanges(Protocol):
    """Tells when the host's addresses or routes changed."""

    async def changed(self) -> None:
        """Return at the next address or route change (the caller debounces)."""
        ...

    async def close(self) -> None:
        """Stop watching (a later `changed` starts again)."""
        ...


class ReflexiveDiscovery(Protocol):
    """The public address and port a NAT maps the tunnel port to, as seen from outside."""

    @property
    def nat(self) -> NatClass | None:
        """The NAT classification of the tunnel port (None: not classified)."""
        ...

    def invalidate(self) -> None:
        """Forget the last result: the next `reflexive` call observes again."""
        ...

    def stale(self, peer_map: PeerMap | None) -> bool:
        """True when `peer_map` brings STUN servers not yet probed (observe now)."""
        ...

    async def reflexive(self, port: int, peer_map: PeerMap | None) -> tuple[Candidate, ...]:
        """`reflexive` candidates observed for the tunnel's UDP `port` against the STUN
        servers of `peer_map` (empty: none found or none usable)."""
        ...


class ProbeUnavailableError(RustynetError):
    """The probe could not run at all (no permission for its nftables rule, nft missing):
    nothing was measured, which is not the same as "no STUN server answered"."""


class NatProbe(Protocol):
    """Asks STUN servers what a local UDP port looks like from outside."""

    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        """One Binding request to each of `servers` from local UDP `port` (None: an ephemeral
        port of the adapter's choosing), concurrently; one observation per server, in order
        (`mapped` None: no valid answer before the adapter's deadline); raises
        `ProbeUnavailableError` when it could not send at all."""
        ...


__all__ = [
    "InterfaceAddresses",
    "InterfaceChanges",
    "NatProbe",
    "ProbeUnavailableError",
    "ReflexiveDiscovery",
]
