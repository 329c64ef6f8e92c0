"""What a node learns about its own host for candidate gathering: interface addresses and the
reflexive (NAT-mapped) address of its tunnel port.

Both are I/O, so they are ports: the node's adapter reads addresses with ip(8) (not pyroute2,
which costs ~10 MB of RSS on the node); reflexive discovery is filled in by the STUN work and
finds nothing until then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from rustynet.domain.candidates import Candidate
from rustynet.domain.nat import StunObservation
from rustynet.domain.tunnel import IPAddress, UnderlayEndpoint


class InterfaceAddresses(Protocol):
    """The host's interface addresses, read now."""

    async def addresses(self) -> Mapping[str, tuple[IPAddress, ...]]:
        """Interface name → its addresses (every family and scope; callers filter)."""
        ...


class ReflexiveDiscovery(Protocol):
    """The public address and port a NAT maps the tunnel port to, as seen from outside."""

    async def reflexive(self, port: int) -> tuple[Candidate, ...]:
        """`reflexive` candidates observed for the tunnel's UDP `port` (empty: none found)."""
        ...


class NatProbe(Protocol):
    """Asks STUN servers what a local UDP port looks like from outside."""

    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        """One Binding request to each of `servers` from local UDP `port` (None: an ephemeral
        port of the adapter's choosing), concurrently; one observation per server, in order
        (`mapped` None: no valid answer before the adapter's deadline)."""
        ...


class NoReflexiveDiscovery:
    """Finds nothing: the node reports no reflexive candidate (no STUN service yet)."""

    async def reflexive(self, port: int) -> tuple[Candidate, ...]:
        """Nothing observed, so nothing reported."""
        del port
        return ()


__all__ = ["InterfaceAddresses", "NatProbe", "NoReflexiveDiscovery", "ReflexiveDiscovery"]
