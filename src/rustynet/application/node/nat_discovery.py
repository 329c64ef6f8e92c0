"""Reflexive discovery and NAT classification of the tunnel port (`ReflexiveDiscovery`).

The one rule: the node probes the peer map's STUN servers as if from its tunnel port (the
`NatProbe` port), classifies the answers (`rustynet.domain.nat.classify`), and offers a
`reflexive` candidate only when a peer can use it: behind an endpoint-independent mapping
(`eim`, `eim-port-preserving`) the one mapped endpoint; `public` needs none (the local
candidate already is that endpoint); `hard` gives none (the mapping STUN saw is not the one a
peer would get, so reporting it would be reporting something never observed for that peer);
`udp-blocked` and `unknown` give none. The node never reports a candidate it did not observe.

Safety (`probe_targets`): a STUN server whose address the tunnel talks to (any peer
candidate's address in the map, a relay's address) is never probed: the probe's conntrack
entry would collide with the tunnel's own flow to that address and port and the kernel would
silently rewrite the tunnel's source port. It is skipped and logged; if nothing is left the
node reports no classification.

Kept current: the classification is reused for `interval` seconds; the map's STUN servers
changing, or `invalidate()` (interfaces or routes changed), makes the next gather re-probe.
IPv4 servers only: the IPv6 address of a host is its own (no NAT66 assumed), and it is already
a `local` candidate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import structlog

from rustynet.domain.candidates import Candidate, CandidateKind
from rustynet.domain.nat import NatClass, NatReport, classify
from rustynet.domain.netmap import PeerMap
from rustynet.domain.tunnel import IPAddress, UnderlayEndpoint
from rustynet.ports.clock import Clock
from rustynet.ports.interfaces import InterfaceAddresses, NatProbe, ProbeUnavailableError

_log = structlog.get_logger(__name__)
DEFAULT_INTERVAL = 300.0


def tunnel_addresses(peer_map: PeerMap) -> frozenset[IPAddress]:
    """Every underlay address the tunnel may talk to under `peer_map`: each peer candidate's
    address and each relay's address (when its URL names an IP literal)."""
    found: set[IPAddress] = {c.endpoint.address for p in peer_map.peers for c in p.candidates}
    for relay in peer_map.relays:
        host = urlsplit(relay.url).hostname or ""
        try:
            found.add(ipaddress.ip_address(host))
        except ValueError:
            continue  # a host name: the relay is reached over TCP, not from the tunnel port
    return frozenset(found)


def probe_targets(
    servers: Iterable[UnderlayEndpoint], avoid: frozenset[IPAddress]
) -> tuple[tuple[UnderlayEndpoint, ...], tuple[UnderlayEndpoint, ...]]:
    """(servers safe to probe from the tunnel port, servers skipped: the tunnel talks to them)."""
    listed = tuple(servers)
    return (
        tuple(s for s in listed if s.address not in avoid),
        tuple(s for s in listed if s.address in avoid),
    )


def usable_reflexive(report: NatReport) -> tuple[Candidate, ...]:
    """The reflexive candidate a peer can use, by classification (module doc)."""
    if report.nat in (NatClass.EIM, NatClass.EIM_PORT_PRESERVING) and len(report.reflexive) == 1:
        return (Candidate(report.reflexive[0], CandidateKind.REFLEXIVE),)
    return ()


def ipv4_servers(peer_map: PeerMap | None) -> tuple[UnderlayEndpoint, ...]:
    """The map's IPv4 STUN servers, in map order."""
    if peer_map is None:
        return ()
    parsed = (UnderlayEndpoint.parse(text) for text in peer_map.stun)
    return tuple(s for s in parsed if s.address.version == 4)


class NatDiscovery:
    """`ReflexiveDiscovery` over a `NatProbe`, classifying as it goes (`report`, `nat`)."""

    def __init__(
        self,
        probe: NatProbe,
        interfaces: InterfaceAddresses | None,
        clock: Clock,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._probe = probe
        self._interfaces = interfaces
        self._clock = clock
        self._interval = timedelta(seconds=interval)
        self.report: NatReport | None = None
        self._key: tuple[object, ...] | None = None
        self._at: datetime | None = None
        self._found: tuple[Candidate, ...] = ()

    @property
    def nat(self) -> NatClass | None:
        """The current classification (None: not classified)."""
        return None if self.report is None else self.report.nat

    def invalidate(self) -> None:
        """Re-probe at the next gather (interfaces or routes changed)."""
        self._at = None

    def stale(self, peer_map: PeerMap | None) -> bool:
        """True when the next gather would probe again (new servers, or the interval passed)."""
        servers = ipv4_servers(peer_map)
        if servers and self._key is None:
            return True
        return self._key is not None and self._key[0] != servers

    async def reflexive(self, port: int, peer_map: PeerMap | None) -> tuple[Candidate, ...]:
        """Reflexive candidates of the tunnel's UDP `port` (cached for `interval`)."""
        servers = ipv4_servers(peer_map)
        avoid = frozenset() if peer_map is None else tunnel_addresses(peer_map)
        key = (servers, avoid, port)
        now = self._clock.now()
        if key == self._key and self._at is not None and now - self._at < self._interval:
            return self._found
        self._key, self._at = key, now
        safe, skipped = probe_targets(servers, avoid)
        for server in skipped:
            _log.warning("nat.server_skipped", server=str(server), reason="tunnel talks to it")
        if not safe:
            self.report, self._found = None, ()
            return ()
        try:
            observations = await self._probe.observe(safe, port)
        except ProbeUnavailableError as exc:  # nothing measured: no classification, no candidate
            _log.warning("nat.probe_unavailable", error=str(exc))
            self.report, self._found = None, ()
            return ()
        report = classify(observations, port, await self._local_addresses())
        changed = self.nat is not report.nat
        self.report, self._found = report, usable_reflexive(report)
        log = _log.info if changed else _log.debug
        log(
            "nat.classified",
            nat=report.nat.value,
            reflexive=[str(e) for e in report.reflexive],
            answered=sum(o.mapped is not None for o in observations),
            asked=len(observations),
        )
        return self._found

    async def _local_addresses(self) -> Sequence[IPAddress]:
        if self._interfaces is None:
            return ()
        found = await self._interfaces.addresses()
        return [a for addresses in found.values() for a in addresses]


__all__ = [
    "DEFAULT_INTERVAL",
    "NatDiscovery",
    "ipv4_servers",
    "probe_targets",
    "tunnel_addresses",
    "usable_reflexive",
]
