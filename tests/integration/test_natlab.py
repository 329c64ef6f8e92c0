"""The NAT lab behaves as each kind's name says (`tests/natlab.py`, docs/development.md).

A host behind each kind sends from one local port to two UDP reflectors on the internet and
reads back the public address each saw; a third internet host then sends to that public
address unsolicited. Also: two hosts behind one NAT, the router-input-drop pitfall, cleanup.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.natlab import Host, NatKind, NatLab, read_line, seen_from
from tests.netns import require_root

pytestmark = [pytest.mark.root]

PORT = 4000
REFLECTOR_PORT = 3478


@dataclass
class Internet:
    """The lab plus two reflectors ("ip:port") and a third, silent internet host."""

    nat: NatLab
    r1: str
    r2: str
    stranger: Host


@pytest.fixture
def nat() -> Iterator[NatLab]:
    require_root("ip", "nft", "sysctl")
    with NatLab() as lab:
        yield lab


@pytest.fixture
def internet(nat: NatLab) -> Internet:
    r1, r2, stranger = nat.internet_host(), nat.internet_host(), nat.internet_host()
    for host in (r1, r2):
        assert read_line(nat.udp(host, "reflect", str(REFLECTOR_PORT))) == {"ready": True}
    return Internet(
        nat, f"{r1.address}:{REFLECTOR_PORT}", f"{r2.address}:{REFLECTOR_PORT}", stranger
    )


@pytest.mark.parametrize("kind", [NatKind.EASY, NatKind.FULL_CONE, NatKind.CGNAT])
def test_endpoint_independent_kinds_show_one_public_port_to_everyone(
    internet: Internet, kind: NatKind
) -> None:
    """Easy, full cone and CGNAT: both reflectors see the same public ip:port, and it is the
    host's own port (free here); for CGNAT the public address is the carrier's."""
    nat = internet.nat
    site = nat.site(kind)
    host = site.host()
    public_ip = nat.carrier().wan_address if kind is NatKind.CGNAT else site.router.wan_address
    assert seen_from(nat, host, PORT, internet.r1, internet.r2) == [f"{public_ip}:{PORT}"] * 2


def test_hard_nat_gives_each_destination_its_own_port(internet: Internet) -> None:
    """Hard (endpoint-dependent, random): the router's address, a different port per peer."""
    nat = internet.nat
    site = nat.site(NatKind.HARD)
    seen = seen_from(nat, site.host(), PORT, internet.r1, internet.r2)
    assert all(s is not None for s in seen), seen
    ips = {s.rsplit(":", 1)[0] for s in seen if s}
    ports = {s.rsplit(":", 1)[1] for s in seen if s}
    assert ips == {site.router.wan_address}
    assert len(ports) == 2, seen


def test_public_host_is_seen_as_itself(internet: Internet) -> None:
    """Public: no NAT, the reflectors see the host's own address and port."""
    host = internet.nat.host(NatKind.PUBLIC)
    expected = f"{host.address}:{PORT}"
    assert seen_from(internet.nat, host, PORT, internet.r1, internet.r2) == [expected] * 2


@pytest.mark.parametrize(
    ("kind", "delivered"),
    [
        (NatKind.EASY, False),
        (NatKind.HARD, False),
        (NatKind.CGNAT, False),
        (NatKind.FULL_CONE, True),
    ],
)
def test_unsolicited_inbound_reaches_only_full_cone(
    internet: Internet, kind: NatKind, delivered: bool
) -> None:
    """After the host's mapping exists (it talked to reflector 1), a third internet host sends
    to that public ip:port: dropped by easy, hard and CGNAT, delivered by full cone."""
    nat = internet.nat
    host = nat.host(kind)
    probe = nat.udp(host, "probe", "--port", str(PORT), "--to", internet.r1, "--listen", "1.5")
    mapping = read_line(probe)["seen"]
    assert isinstance(mapping, str), mapping
    sender = nat.udp(internet.stranger, "send", "--port", "5555", "--to", mapping, "--count", "3")
    assert sender.wait(10) == 0
    out, _ = probe.communicate(timeout=10)
    arrived = [json.loads(line) for line in out.splitlines()]
    expected = [{"from": f"{internet.stranger.address}:5555", "data": "unsolicited"}] * 3
    assert arrived == (expected if delivered else [])


def test_two_hosts_behind_one_nat(internet: Internet) -> None:
    """Two hosts on one site reach each other on their LAN addresses (no NAT between them)
    and share the router's public address; the second to use the same port gets another."""
    nat = internet.nat
    site = nat.site(NatKind.EASY)
    a, b = site.host(), site.host()
    assert read_line(nat.udp(b, "reflect", "5000")) == {"ready": True}
    assert seen_from(nat, a, PORT, f"{b.address}:5000") == [f"{a.address}:{PORT}"]
    [seen_a] = seen_from(nat, a, PORT, internet.r1)  # the router's conntrack keeps this mapping
    [seen_b] = seen_from(nat, b, PORT, internet.r1)
    wan = site.router.wan_address
    assert seen_a == f"{wan}:{PORT}"
    assert seen_b is not None
    assert seen_b.startswith(f"{wan}:")
    assert seen_b != seen_a


def test_full_cone_delivers_to_each_of_two_hosts_on_the_same_port(internet: Internet) -> None:
    """Two hosts behind one full cone router both use port 4000 (the second gets another
    public port); unsolicited datagrams to each public port reach the host that owns it."""
    nat = internet.nat
    site = nat.site(NatKind.FULL_CONE)
    probes, mappings = [], []
    for host in (site.host(), site.host()):  # one after the other: the first keeps port 4000
        probes.append(
            nat.udp(host, "probe", "--port", str(PORT), "--to", internet.r1, "--listen", "2")
        )
        mappings.append(read_line(probes[-1])["seen"])
    assert mappings[0] == f"{site.router.wan_address}:{PORT}"
    assert mappings[1] != mappings[0]
    for source_port, mapping in zip((5555, 5556), mappings, strict=True):
        assert isinstance(mapping, str)
        sender = nat.udp(internet.stranger, "send", "--port", str(source_port), "--to", mapping)
        assert sender.wait(10) == 0
    for source_port, probe in zip((5555, 5556), probes, strict=True):
        out, _ = probe.communicate(timeout=10)
        senders = {json.loads(line)["from"] for line in out.splitlines()}
        assert senders == {f"{internet.stranger.address}:{source_port}"}


@pytest.mark.parametrize("input_drop", [True, False])
def test_an_early_packet_from_outside_does_not_move_the_mapping(
    nat: NatLab, input_drop: bool
) -> None:
    """A peer's packet reaches the router's public ip:port before the host has a mapping (an
    early punch). With the input-hook drop the host's mapping afterwards is still the
    port-preserving one; without it (the pitfall) conntrack holds that tuple and SNAT moves
    the host to another port."""
    peer = nat.internet_host()
    site = nat.site(NatKind.EASY, input_drop=input_drop)
    host = site.host()
    wan = site.router.wan_address
    knock = nat.udp(peer, "reflect", str(REFLECTOR_PORT), "--knock", f"{wan}:{PORT}")
    assert read_line(knock) == {"ready": True}
    [seen] = seen_from(nat, host, PORT, f"{peer.address}:{REFLECTOR_PORT}")
    assert seen is not None
    assert seen.startswith(f"{wan}:")
    assert (seen == f"{wan}:{PORT}") is input_drop, seen


@pytest.mark.parametrize("kind", [NatKind.EASY, NatKind.HARD, NatKind.FULL_CONE, NatKind.CGNAT])
def test_every_router_drops_unsolicited_inbound_at_forward_and_input(
    nat: NatLab, kind: NatKind
) -> None:
    """The live table of each router (and the carrier) drops what arrives on `wan` unsolicited
    at both hooks."""
    site = nat.site(kind)
    routers = [site.router, nat.carrier()] if kind is NatKind.CGNAT else [site.router]
    for router in routers:
        table = router.ruleset()
        for hook in ("forward", "input"):
            chain = table.split(f"chain {hook} {{", 1)[1].split("}", 1)[0]
            assert 'iifname "wan" ct state established,related accept' in chain
            assert 'iifname "wan" drop' in chain


def test_close_removes_every_namespace_and_process(internet: Internet) -> None:
    """After close() none of the lab's namespaces is left and its helpers are gone."""
    nat = internet.nat
    nat.site(NatKind.CGNAT).host()
    names = [ns.name for ns in nat.netlab.namespaces]
    procs = list(nat.procs)
    nat.close()
    listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True)
    assert not [n for n in names if n in listed.stdout]
    assert all(p.poll() is not None for p in procs)
