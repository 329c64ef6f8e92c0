"""The tunnel-port STUN probe in the NAT lab (`adapters/stun/tunnel_port.py`).

One lab for the module: an internet host runs the project's STUN service on two ports, another
reflects "tunnel" datagrams. For each NAT kind, a host whose stand-in for wireguard-go owns the
tunnel port keeps sending through it while `TunnelPortProbe` probes as if from that port: the
STUN service sees the router's WAN address and the port the router mapped for the TUNNEL port
(the one the peer saw), the classification is the kind's, the tunnel's own traffic is answered
throughout from one unchanged source, and afterwards no probe table and no conntrack entry
toward the STUN ports remains. The time each probe took is printed (`-s`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.stun.tunnel_port import TunnelPortProbe

from rustynet.domain.tunnel import UnderlayEndpoint
from rustynet.ports.interfaces import ProbeUnavailableError
from tests.natlab import Host, NatKind, NatLab, read_line
from tests.netns import require_in_ci, require_root

pytestmark = [pytest.mark.root]

TUNNEL_PORT = 41641
STUN_PORTS = (3478, 3479)
PEER_PORT = 4000
HELPER = Path(__file__).parent.parent / "natlab_stun.py"
EXPECTED = {
    NatKind.PUBLIC: "public",
    NatKind.EASY: "eim-port-preserving",
    NatKind.FULL_CONE: "eim-port-preserving",
    NatKind.CGNAT: "eim-port-preserving",
    NatKind.HARD: "hard",
}


@dataclass
class World:
    nat: NatLab
    stun: Host
    peer: Host


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_in_ci("conntrack")
    require_root("ip", "nft", "conntrack")
    with NatLab() as nat:
        stun, peer = nat.internet_host(), nat.internet_host()
        server = _helper(stun, "serve", *map(str, STUN_PORTS))
        assert read_line(server) == {"ready": True}
        assert read_line(nat.udp(peer, "reflect", str(PEER_PORT))) == {"ready": True}
        try:
            yield World(nat, stun, peer)
        finally:
            server.kill()
            server.communicate()


def _helper(host: Host, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", host.ns.name, sys.executable, str(HELPER), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _probe(world: World, host: Host, rounds: int = 2) -> dict[str, object]:
    servers = [f"{world.stun.address}:{p}" for p in STUN_PORTS]
    proc = _helper(
        host, "probe", str(TUNNEL_PORT), str(rounds), f"{world.peer.address}:{PEER_PORT}", *servers
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert isinstance(result, dict)
    return result


def _wan(host: Host) -> str:
    site = host.site
    if site is None:
        return host.address
    if site.kind is NatKind.CGNAT:
        return str(site.lab.carrier().wan_address)
    return site.router.wan_address


def _check(world: World, host: Host, kind: NatKind, label: str, expected: str = "") -> str:
    result = _probe(world, host)
    rounds = result["rounds"]
    assert isinstance(rounds, list)
    peer_saw = result["peer_saw"]
    assert isinstance(peer_saw, list)
    assert len(peer_saw) == 1, peer_saw  # the tunnel's source was never rewritten
    tunnel_public = str(peer_saw[0])
    for r in rounds:
        assert r["nat"] == (expected or EXPECTED[kind]), r
        if kind is NatKind.HARD:
            assert None not in r["mapped"], r
            assert len(set(r["mapped"])) == 2, r
            assert all(m.split(":")[0] == _wan(host) for m in r["mapped"]), r
        else:  # the STUN service saw exactly what the peer sees of the tunnel port
            assert r["mapped"] == [tunnel_public, tunnel_public], (r, tunnel_public)
            assert tunnel_public.split(":", maxsplit=1)[0] == _wan(host)
    sent, answered = result["sent"], result["answered"]
    assert isinstance(sent, int)
    assert isinstance(answered, int)
    assert answered >= sent - 2, result  # the tunnel kept working while the probes ran
    assert "rustynet-probe" not in str(result["tables"]), result["tables"]
    for port in STUN_PORTS:  # the conntrack-collision pitfall: nothing of the probe is left
        assert f"dport={port}" not in str(result["conntrack"]), result["conntrack"]
    mapped = "none (hard)" if kind is NatKind.HARD else tunnel_public
    print(
        f"\n{label:<12} reflexive={mapped:<24} nat={rounds[0]['nat']:<20} "
        f"discover={rounds[0]['seconds']:.3f}s/{rounds[1]['seconds']:.3f}s"
    )
    return tunnel_public


@pytest.mark.parametrize(
    "kind", [NatKind.PUBLIC, NatKind.EASY, NatKind.FULL_CONE, NatKind.HARD, NatKind.CGNAT]
)
def test_probe_sees_the_tunnel_ports_mapping_and_leaves_nothing_behind(
    world: World, kind: NatKind
) -> None:
    host = world.nat.internet_host() if kind is NatKind.PUBLIC else world.nat.host(kind)
    _check(world, host, kind, kind.value)


def test_two_hosts_behind_one_nat_each_see_their_own_mapping(world: World) -> None:
    site = world.nat.site(NatKind.EASY)
    a, b = site.host(), site.host()
    seen_a = _check(world, a, NatKind.EASY, "two-behind-1")
    seen_b = _check(world, b, NatKind.EASY, "two-behind-2", expected="eim")
    assert seen_a.split(":")[0] == seen_b.split(":")[0] == site.router.wan_address
    assert seen_a != seen_b  # same local port, so the router gave the second another port
    # and the port it mapped is what a peer sees of b's tunnel, so b's class is `eim`


def test_a_probe_whose_rule_is_refused_says_it_could_not_run() -> None:
    """nft refuses (here: a namespace that does not exist): `ProbeUnavailableError`, not a
    silent "no answer" that would read as udp-blocked."""
    require_root()
    probe = TunnelPortProbe(OsEntropy(), netns="rustynet-test-no-such-namespace")
    server = UnderlayEndpoint.parse("203.0.113.250:3478")
    with pytest.raises(ProbeUnavailableError, match="probe rule"):
        asyncio.run(probe.observe([server], 41641))
