"""Candidate gathering and reporting: what this node tells the control plane about where it
may be reached.

The one rule: a node reports only candidates it observed or was configured with: the
`underlay_endpoints` an operator typed (`configured`, an override: nothing local is gathered
besides them), the reflexive candidates its discovery port observed (with the NAT
classification, reported alongside: `nat_discovery.py`), and the addresses its
interfaces carry now (`local`: not the tunnel interface, not an excluded prefix, not loopback,
link-local or multicast; with the tunnel's fixed `underlay_port`, so none without one). The
agent re-gathers every `candidate_interval` seconds and at once when `wake` is set (a new map's
STUN servers, an address or route change); a list is reported only when it (or the
classification) changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import attrs
import structlog

from rustynet.domain.candidates import (
    Candidate,
    CandidateKind,
    gathered,
    local_candidates,
)
from rustynet.domain.nat import NatClass
from rustynet.domain.netmap import PeerMap
from rustynet.domain.tunnel import IPNetwork
from rustynet.ports.control_plane import ControlPlaneClient, NodeCredentials
from rustynet.ports.interfaces import InterfaceAddresses, ReflexiveDiscovery

_log = structlog.get_logger(__name__)


@attrs.frozen
class CandidateSettings:
    """What to gather: the tunnel interface and port, the override, the excluded prefixes."""

    interface: str
    port: int | None
    configured: tuple[str, ...] = ()
    exclude: tuple[IPNetwork, ...] = ()


class CandidateReporter:
    """Gathers this node's candidates and reports them when they change."""

    def __init__(
        self,
        settings: CandidateSettings,
        control: ControlPlaneClient,
        interfaces: InterfaceAddresses | None,
        reflexive: ReflexiveDiscovery | None,
    ) -> None:
        self.settings = settings
        self._control = control
        self._interfaces = interfaces
        self._reflexive = reflexive
        self._configured = tuple(
            Candidate.parse(text, CandidateKind.CONFIGURED.value) for text in settings.configured
        )
        self.reported: tuple[Candidate, ...] | None = None
        self.reported_nat: NatClass | None = None
        self.current_map: Callable[[], PeerMap | None] = lambda: None
        self.wake = asyncio.Event()

    @property
    def discovery(self) -> ReflexiveDiscovery | None:
        """The reflexive discovery in use (None: none)."""
        return self._reflexive

    async def gather(self) -> tuple[Candidate, ...]:
        """The candidates as of now (configured, reflexive, local; bounded)."""
        s, port = self.settings, self.settings.port
        reflexive: Sequence[Candidate] = ()
        local: Sequence[Candidate] = ()
        if port is not None and self._reflexive is not None:
            observed = await self._reflexive.reflexive(port, self.current_map())
            reflexive = [c for c in observed if c.kind is CandidateKind.REFLEXIVE]
        if port is not None and self._interfaces is not None and not self._configured:
            found = await self._interfaces.addresses()
            addresses = [a for name, addrs in found.items() if name != s.interface for a in addrs]
            local = local_candidates(addresses, port, s.exclude)
        return gathered(self._configured, reflexive, local)

    async def report(self, creds: NodeCredentials) -> bool:
        """Gather, and report when the list differs from the last one reported; True if sent."""
        candidates = await self.gather()
        nat = None if self._reflexive is None else self._reflexive.nat
        if candidates == self.reported and nat is self.reported_nat:
            return False
        await self._control.put_candidates(creds, candidates, nat)
        self.reported, self.reported_nat = candidates, nat
        _log.info(
            "candidates.reported",
            count=len(candidates),
            candidates=[f"{c.kind.value}:{c.endpoint}" for c in candidates],
            nat=None if nat is None else nat.value,
        )
        return True


__all__ = ["CandidateReporter", "CandidateSettings"]
