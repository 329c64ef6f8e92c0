"""Candidates: the one validation rule (`domain.candidates`), gathering with a fake interface
port (tunnel interface, loopback, link-local and excluded prefixes left out; configured
endpoints override), and reporting only when the list changed."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, Sequence

import pytest

from rustynet.application.node.candidates import CandidateReporter, CandidateSettings
from rustynet.domain.candidates import (
    MAX_CANDIDATES,
    Candidate,
    CandidateError,
    CandidateKind,
    candidate_set,
    preferred,
)
from rustynet.domain.nat import NatClass
from rustynet.domain.netmap import PeerMap
from rustynet.domain.tunnel import IPAddress, UnderlayEndpoint
from rustynet.ports.control_plane import ControlPlaneClient, NodeCredentials

HOSTILE = (
    "0.0.0.0:41641",
    "[::]:41641",
    "127.0.0.1:41641",
    "127.8.9.10:41641",
    "[::1]:41641",
    "169.254.1.1:41641",
    "[fe80::1]:41641",
    "224.0.0.1:41641",
    "239.255.255.250:1900",
    "[ff02::1]:41641",
    "255.255.255.255:41641",
    "[::ffff:127.0.0.1]:41641",
    "[::ffff:198.51.100.2]:41641",
)


@pytest.mark.parametrize("text", HOSTILE)
def test_unusable_addresses_are_never_candidates(text: str) -> None:
    """Unspecified, loopback, link-local, multicast, broadcast and IPv4-mapped addresses are
    refused whatever the kind, by `parse` and by the constructor alike."""
    for kind in CandidateKind:
        with pytest.raises(CandidateError):
            Candidate.parse(text, kind.value)
    with pytest.raises(CandidateError):
        Candidate(UnderlayEndpoint.parse(text), CandidateKind.LOCAL)


@pytest.mark.parametrize(
    "text", ["198.51.100.2:41641", "203.0.113.9:1", "10.1.2.3:65535", "[2001:db8::7]:41641"]
)
def test_unicast_addresses_are_candidates(text: str) -> None:
    """Public, private and IPv6 global addresses pass, and round-trip through `to_json`."""
    candidate = Candidate.parse(text, "local")
    assert Candidate.parse(**candidate.to_json()) == candidate
    assert candidate.to_json() == {"endpoint": text, "kind": "local"}


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [
        ("198.51.100.2:41641", "peer-observed"),
        ("198.51.100.2:41641", "LOCAL"),
        (1, "local"),
        ("vpn.example.net:41641", "local"),
        ("198.51.100.2:0", "local"),
        ("[fe80::1%eth0]:1", "local"),
    ],
)
def test_malformed_candidates_are_refused(endpoint: object, kind: object) -> None:
    with pytest.raises(CandidateError):
        Candidate.parse(endpoint, kind)


def test_candidate_sets_are_bounded_and_first_kind_wins() -> None:
    same = [
        Candidate.parse("198.51.100.2:1", "configured"),
        Candidate.parse("198.51.100.2:1", "local"),
    ]
    assert candidate_set(same) == (same[0],)
    many = [Candidate.parse(f"198.51.100.{i}:1", "local") for i in range(MAX_CANDIDATES + 1)]
    assert len(candidate_set(many[:MAX_CANDIDATES])) == MAX_CANDIDATES
    with pytest.raises(CandidateError):
        candidate_set(many)


def test_peers_prefer_configured_then_reflexive_then_local() -> None:
    listed = [
        Candidate.parse("10.0.0.2:1", "local"),
        Candidate.parse("203.0.113.5:7", "reflexive"),
        Candidate.parse("198.51.100.2:1", "configured"),
        Candidate.parse("10.0.0.3:1", "local"),
    ]
    assert [str(e) for e in preferred(listed)] == [
        "198.51.100.2:1",
        "203.0.113.5:7",
        "10.0.0.2:1",
        "10.0.0.3:1",
    ]


# --- gathering and reporting -------------------------------------------------------------------


class FakeInterfaces:
    """An interface port that answers what the test sets."""

    def __init__(self, found: Mapping[str, Sequence[str]]) -> None:
        self.found = found

    async def addresses(self) -> Mapping[str, tuple[IPAddress, ...]]:
        return {n: tuple(ipaddress.ip_address(a) for a in v) for n, v in self.found.items()}


class FakeReflexive:
    def __init__(self, found: Sequence[Candidate]) -> None:
        self.found = tuple(found)
        self.nat: NatClass | None = None

    def invalidate(self) -> None:
        pass

    def stale(self, peer_map: PeerMap | None) -> bool:
        return False

    async def reflexive(self, port: int, peer_map: PeerMap | None) -> tuple[Candidate, ...]:
        return self.found


class RecordingControl:
    def __init__(self) -> None:
        self.sent: list[tuple[Candidate, ...]] = []

    async def put_candidates(
        self, auth: NodeCredentials, candidates: Sequence[Candidate], nat: object = None
    ) -> None:
        self.sent.append(tuple(candidates))


HOST = {
    "lo": ["127.0.0.1", "::1"],
    "eth0": ["198.51.100.5", "fe80::1", "2001:db8::5"],
    "wlan0": ["10.0.0.5", "198.51.100.250"],
    "rustynet0": ["100.64.0.5"],  # the tunnel itself
}


def reporter(
    found: Mapping[str, Sequence[str]] = HOST,
    *,
    configured: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    reflexive: Sequence[Candidate] = (),
    port: int | None = 41641,
) -> tuple[CandidateReporter, RecordingControl, FakeInterfaces]:
    control, interfaces = RecordingControl(), FakeInterfaces(found)
    settings = CandidateSettings(
        interface="rustynet0",
        port=port,
        configured=configured,
        exclude=tuple(ipaddress.ip_network(p) for p in exclude),
    )
    client: ControlPlaneClient = control  # type: ignore[assignment]  # only put_candidates
    return (
        CandidateReporter(settings, client, interfaces, FakeReflexive(reflexive)),
        control,
        interfaces,
    )


def texts(candidates: Sequence[Candidate]) -> list[str]:
    return [f"{c.kind.value}:{c.endpoint}" for c in candidates]


def test_gathering_takes_usable_interface_addresses_with_the_tunnel_port() -> None:
    """Loopback, link-local and the tunnel interface are left out; IPv4 and IPv6 kept."""
    gather, _, _ = reporter()
    assert texts(asyncio.run(gather.gather())) == [
        "local:198.51.100.5:41641",
        "local:[2001:db8::5]:41641",
        "local:10.0.0.5:41641",
        "local:198.51.100.250:41641",
    ]


def test_excluded_prefixes_are_not_reported() -> None:
    gather, _, _ = reporter(exclude=("198.51.100.240/28", "2001:db8::/32"))
    assert texts(asyncio.run(gather.gather())) == [
        "local:198.51.100.5:41641",
        "local:10.0.0.5:41641",
    ]


def test_configured_endpoints_override_interface_addresses() -> None:
    """`underlay_endpoints` set: only those (and reflexive ones) are reported."""
    mapped = Candidate.parse("203.0.113.9:6000", "reflexive")
    gather, _, _ = reporter(configured=("198.51.100.7:41641",), reflexive=[mapped])
    assert texts(asyncio.run(gather.gather())) == [
        "configured:198.51.100.7:41641",
        "reflexive:203.0.113.9:6000",
    ]


def test_a_discovery_port_cannot_smuggle_other_kinds() -> None:
    """Only `reflexive` candidates are taken from reflexive discovery."""
    forged = Candidate.parse("198.51.100.99:1", "configured")
    gather, _, _ = reporter({}, reflexive=[forged])
    assert asyncio.run(gather.gather()) == ()


def test_without_a_fixed_tunnel_port_nothing_local_is_reported() -> None:
    gather, _, _ = reporter(port=None)
    assert asyncio.run(gather.gather()) == ()


def test_many_addresses_are_bounded() -> None:
    many = {"eth0": [f"198.51.100.{i}" for i in range(1, 40)]}
    gather, _, _ = reporter(many)
    assert len(asyncio.run(gather.gather())) == MAX_CANDIDATES


def test_candidates_are_reported_only_when_they_change() -> None:
    gather, control, interfaces = reporter()
    creds = NodeCredentials("node-1", "token")
    assert asyncio.run(gather.report(creds)) is True
    assert asyncio.run(gather.report(creds)) is False
    interfaces.found = {"eth0": ["198.51.100.6"]}
    assert asyncio.run(gather.report(creds)) is True
    assert [texts(s) for s in control.sent][1:] == [["local:198.51.100.6:41641"]]
    assert len(control.sent) == 2
