"""Reflexive discovery from NAT classification (`application/node/nat_discovery.py`): only a
usable mapping becomes a `reflexive` candidate, a STUN server the tunnel talks to is never
probed, results are reused for the interval and re-probed on new servers or invalidation, and
the reporter sends the classification with the candidates (also when only it changed)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import attrs
import pytest

from rustynet.application.node.candidates import CandidateReporter, CandidateSettings
from rustynet.application.node.nat_discovery import NatDiscovery, probe_targets, tunnel_addresses
from rustynet.domain.candidates import Candidate, CandidateKind
from rustynet.domain.nat import NatClass, StunObservation
from rustynet.domain.netmap import PeerEntry, PeerMap, RelayEntry
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.tunnel import IPAddress, UnderlayEndpoint
from rustynet.ports.control_plane import NodeCredentials
from rustynet.ports.interfaces import ProbeUnavailableError
from tests.unit.test_netmap import NOW, make_map, tunnel

PORT = 41641
S1, S2 = "203.0.113.1:3478", "203.0.113.1:3479"
WAN = "203.0.113.9"


def ep(text: str) -> UnderlayEndpoint:
    return UnderlayEndpoint.parse(text)


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def now(self) -> datetime:
        return self.at


class FakeProbe:
    """Answers each server with the mapping the test sets (None: silent)."""

    def __init__(self, mapping: Mapping[str, str | None]) -> None:
        self.mapping = dict(mapping)
        self.asked: list[tuple[UnderlayEndpoint, ...]] = []

    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        self.asked.append(tuple(servers))
        out = []
        for s in servers:
            seen = self.mapping.get(str(s))
            out.append(StunObservation(s, None if seen is None else ep(seen)))
        return tuple(out)


class Host:
    def __init__(self, *addresses: str) -> None:
        self.found = {"eth0": tuple(ipaddress.ip_address(a) for a in addresses)}

    async def addresses(self) -> Mapping[str, tuple[IPAddress, ...]]:
        return self.found


def with_stun(*servers: str, peer_at: str | None = None, relay_host: str = "") -> PeerMap:
    peer_map = make_map()
    peers = peer_map.peers
    if peer_at is not None:
        peers = (
            PeerEntry(
                "node_c",
                "gamma",
                ("100.64.0.3/32",),
                tunnel(3),
                NOW + timedelta(days=30),
                (Candidate.parse(peer_at, "reflexive"),),
            ),
            *peers,
        )
    relays: tuple[RelayEntry, ...] = ()
    if relay_host:
        pin = SpkiPin(bytes(32))
        relays = (RelayEntry("relay-1", f"wss://{relay_host}:443/v1/relay", pin),)
    return attrs.evolve(peer_map, peers=peers, stun=servers, relays=relays)


def discovery(mapping: Mapping[str, str | None], host: Host | None = None) -> NatDiscovery:
    return NatDiscovery(FakeProbe(mapping), host or Host("198.51.100.5"), Clock(), 300)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mapping", "own", "nat", "reflexive"),
    [
        ({S1: f"{WAN}:{PORT}", S2: f"{WAN}:{PORT}"}, "198.51.100.5", "eim-port-preserving", 1),
        ({S1: f"{WAN}:6000", S2: f"{WAN}:6000"}, "198.51.100.5", "eim", 1),
        ({S1: f"{WAN}:{PORT}", S2: f"{WAN}:{PORT}"}, WAN, "public", 0),
        ({S1: f"{WAN}:6000", S2: f"{WAN}:6001"}, "198.51.100.5", "hard", 0),
        ({S1: None, S2: None}, "198.51.100.5", "udp-blocked", 0),
        ({S1: f"{WAN}:6000", S2: None}, "198.51.100.5", "unknown", 0),
    ],
)
async def test_only_a_usable_mapping_becomes_a_reflexive_candidate(
    mapping: dict[str, str | None], own: str, nat: str, reflexive: int
) -> None:
    found = discovery(mapping, Host(own))
    candidates = await found.reflexive(PORT, with_stun(S1, S2))
    assert found.nat is NatClass(nat)
    assert len(candidates) == reflexive
    if reflexive:
        seen = mapping[S1]
        assert seen is not None
        assert candidates == (Candidate(ep(seen), CandidateKind.REFLEXIVE),)


@pytest.mark.asyncio
async def test_a_stun_server_the_tunnel_talks_to_is_never_probed() -> None:
    """A peer's candidate address and the relay's address are skipped (the probe's conntrack
    entry would collide with the tunnel's flow); with none left, nothing is classified."""
    mapping = {S1: f"{WAN}:{PORT}", S2: f"{WAN}:{PORT}", "203.0.113.7:3478": f"{WAN}:{PORT}"}
    found = discovery(mapping)
    probe = found._probe
    assert isinstance(probe, FakeProbe)
    peer_map = with_stun(S1, S2, "203.0.113.7:3478", peer_at="203.0.113.1:41641")
    assert await found.reflexive(PORT, peer_map) == ()
    assert probe.asked == [(ep("203.0.113.7:3478"),)]
    assert found.nat is NatClass.UNKNOWN  # one destination left cannot tell the mapping
    relay_map = with_stun(S1, S2, relay_host="203.0.113.1")
    found.invalidate()
    assert await found.reflexive(PORT, relay_map) == ()
    assert len(probe.asked) == 1  # nothing safe left: not probed at all
    assert found.nat is None


def test_tunnel_addresses_are_every_peer_candidate_and_relay_ip() -> None:
    peer_map = with_stun(S1, peer_at="203.0.113.50:41641", relay_host="203.0.113.60")
    assert tunnel_addresses(peer_map) == {
        ipaddress.ip_address(a) for a in ("198.51.100.2", "203.0.113.50", "203.0.113.60")
    }
    safe, skipped = probe_targets([ep(S1), ep("203.0.113.50:3478")], tunnel_addresses(peer_map))
    assert safe == (ep(S1),)
    assert skipped == (ep("203.0.113.50:3478"),)


@pytest.mark.asyncio
async def test_results_are_reused_until_the_interval_new_servers_or_invalidate() -> None:
    found = discovery({S1: f"{WAN}:{PORT}", S2: f"{WAN}:{PORT}"})
    probe = found._probe
    assert isinstance(probe, FakeProbe)
    clock = found._clock
    assert isinstance(clock, Clock)
    peer_map = with_stun(S1, S2)
    assert found.stale(peer_map)
    await found.reflexive(PORT, peer_map)
    assert not found.stale(peer_map)
    await found.reflexive(PORT, peer_map)
    assert len(probe.asked) == 1
    clock.at += timedelta(seconds=301)
    await found.reflexive(PORT, peer_map)
    assert len(probe.asked) == 2
    found.invalidate()
    await found.reflexive(PORT, peer_map)
    assert len(probe.asked) == 3
    assert found.stale(with_stun(S1))
    await found.reflexive(PORT, with_stun(S1))
    assert len(probe.asked) == 4


class Control:
    def __init__(self) -> None:
        self.sent: list[tuple[tuple[Candidate, ...], NatClass | None]] = []

    async def put_candidates(
        self, auth: NodeCredentials, candidates: Sequence[Candidate], nat: NatClass | None = None
    ) -> None:
        self.sent.append((tuple(candidates), nat))


@pytest.mark.asyncio
async def test_the_reporter_sends_the_classification_and_reports_when_only_it_changed() -> None:
    found = discovery({S1: f"{WAN}:{PORT}", S2: f"{WAN}:{PORT}"})
    control = Control()
    reporter = CandidateReporter(
        CandidateSettings("rnt0", PORT),
        control,  # type: ignore[arg-type]
        Host("198.51.100.5"),
        found,
    )
    peer_map = with_stun(S1, S2)
    reporter.current_map = lambda: peer_map
    creds = NodeCredentials("node_a", "token")
    assert await reporter.report(creds)
    reflexive = Candidate(ep(f"{WAN}:{PORT}"), CandidateKind.REFLEXIVE)
    assert control.sent[-1][1] is NatClass.EIM_PORT_PRESERVING
    assert reflexive in control.sent[-1][0]
    assert not await reporter.report(creds)
    found._probe = FakeProbe({S1: f"{WAN}:{PORT}", S2: None})
    found.invalidate()
    assert await reporter.report(creds)
    last_nat: NatClass | None = control.sent[-1][1]
    assert last_nat == NatClass.UNKNOWN
    assert reflexive not in control.sent[-1][0]


class BrokenProbe:
    """A probe that cannot run at all (its nftables rule was refused)."""

    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        raise ProbeUnavailableError("cannot install the probe rule: permission denied")


@pytest.mark.asyncio
async def test_a_probe_that_cannot_run_classifies_nothing_and_reports_no_candidate() -> None:
    """Not `udp-blocked`: nothing was measured, so nothing is claimed about the network."""
    found = NatDiscovery(BrokenProbe(), Host("198.51.100.5"), Clock(), 300)
    assert await found.reflexive(PORT, with_stun(S1, S2)) == ()
    assert found.report is None
    assert found.nat is not NatClass.UDP_BLOCKED
