"""UDP relay sessions in the NAT lab, relay side, with plain wireguard-go peers: two hosts
behind HARD NATs and a relay host on the lab's internet running the relay's UDP side
(`tests/e2e/udp_relay_helper.py`: allocations, bind sockets, kernel forwarding). Each host
binds its side with a bind packet sent from its tunnel port, then its wireguard-go sends to its
relay address: pings cross, the kernel forwards (per-session counters move), the marker never
appears in clear on the relay, forged and replayed binds from another address change nothing,
teardown removes the elements and the conntrack entries, and a killed relay's elements time
out by themselves.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rustynet.adapters.relay.udp_kernel import TABLE

from rustynet.domain.udp_relay import UdpGrant, bind_packet
from tests.e2e.harness import wait_for
from tests.e2e.udp_relay_lab import (
    ROOT,
    Peer,
    RelayProcess,
    bind,
    peer_with,
    ping,
    reaped,
    send,
    wireguard,
)
from tests.natlab import Host, NatKind, NatLab
from tests.netns import require_in_ci, require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

KILLED_TTL_S = 10
MARKER = b"rn-udp-relay-mk1"  # 16 bytes: ping -p repeats it in every echo request


@dataclass
class World:
    nat: NatLab
    relay_host: Host
    relay: RelayProcess
    a: Peer
    b: Peer
    mallory: Host


@pytest.fixture(params=["kernel"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    require_in_ci("conntrack", "wireguard-go", "wg")
    require_root("ip", "nft", "conntrack", "wireguard-go", "wg")
    with reaped(), NatLab() as nat:
        relay_host, mallory = nat.internet_host(), nat.internet_host()
        relay_host.ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        a_host, b_host = nat.host(NatKind.HARD), nat.host(NatKind.HARD)
        relay = RelayProcess(relay_host, request.param)
        try:
            a = wireguard(nat, a_host, "100.64.77.1", tmp_path)
            b = wireguard(nat, b_host, "100.64.77.2", tmp_path)
            yield World(nat, relay_host, relay, a, b, mallory)
        finally:
            relay.close()


def _allocate(world: World, ttl: float) -> tuple[dict[str, object], dict[str, object]]:
    """Both sides ask, bind from their tunnel ports, then point wireguard-go at the relay."""
    ask_a = world.relay.call(op="ask", node="node-a", peer="node-b", ttl=ttl)
    ask_b = world.relay.call(op="ask", node="node-b", peer="node-a", ttl=ttl)
    assert ask_a["type"] == ask_b["type"] == "udp_allocation", (ask_a, ask_b)
    assert ask_a["allocation"] == ask_b["allocation"]
    assert ask_a["relay_port"] != ask_b["relay_port"]
    assert ask_a["bind_key"] != ask_b["bind_key"]
    return ask_a, ask_b


def _connect(world: World, ask_a: dict[str, object], ask_b: dict[str, object]) -> bytes:
    relay = world.relay_host.address
    packet = bind(world.a, world.relay_host, ask_a, 1)
    bind(world.b, world.relay_host, ask_b, 1)
    peer_with(world.a, world.b, f"{relay}:{ask_a['relay_port']}")
    peer_with(world.b, world.a, f"{relay}:{ask_b['relay_port']}")
    return packet


def test_hard_to_hard_pings_through_kernel_forwarding_and_forgeries_change_nothing(
    world: World, tmp_path: Path
) -> None:
    ask_a, ask_b = _allocate(world, 60)
    # Before any bind: WireGuard's packets to the ports are dropped before conntrack.
    assert "elements" not in world.relay.nft_set("bound")
    started = time.monotonic()
    a_bind = _connect(world, ask_a, ask_b)
    wait_for("A pings B through the relay", lambda: ping(world.a, world.b), 20, interval=0.0)
    first_ping_s = time.monotonic() - started
    bound = world.relay.keys("bound")
    wans = [p.host.site.router.wan_address for p in (world.a, world.b) if p.host.site]
    ports = [int(str(ask["relay_port"])) for ask in (ask_a, ask_b)]
    assert {(k[0], k[2]) for k in bound} == set(zip(wans, ports, strict=True)), bound

    # Forgeries from another internet host: a wrong key, and A's own valid bind replayed.
    port_a = int(str(ask_a["relay_port"]))
    wrong = bind_packet(b"k" * 32, UdpGrant.from_message(ask_a).allocation_id, port_a, 99)
    for packet in (wrong, a_bind, b"\x04\0\0\0" + bytes(28)):  # the last: WireGuard-like
        send(world.mallory, "-", world.relay_host, port_a, packet)
    counters = world.relay.call(op="counters")
    udp = counters["udp"]
    assert isinstance(udp, dict)
    assert (udp["refused_binds"], udp["binds"], udp["rebinds"]) == (2, 2, 0), udp
    # The non-bind datagram from an unbound source was dropped before conntrack.
    assert world.relay.keys("bound") == bound
    assert world.mallory.address not in world.relay.conntrack()
    unbound = world.relay_host.ns.run("nft", "list", "counter", "ip", TABLE, "unbound").stdout
    assert "packets 0 " not in unbound, unbound
    assert ping(world.a, world.b)

    # The plaintext marker crosses the tunnel but never the relay in clear.
    capture = tmp_path / "relay.cap"
    (wan,) = [link for link in world.relay_host.ns.links() if link != "lo"]
    sniffer = subprocess.Popen(
        ["ip", "netns", "exec", world.relay_host.ns.name, sys.executable, "-m",
         "tests.e2e.sniff", wan, "3", str(capture)],
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert sniffer.stdout is not None
    assert sniffer.stdout.readline().strip() == b"capturing"
    done = world.a.host.ns.run(
        "ping", "-c", "5", "-i", "0.2", "-W", "1", "-p", MARKER.hex(), world.b.overlay
    )
    sniffer.wait(15)
    sniffer.stdout.close()
    assert done.returncode == 0
    carried = capture.read_bytes()
    assert len(carried) > 10 * 100, "nothing crossed the relay"
    assert MARKER not in carried

    # Counted in the forward chain, both ways (more than a flow's first packet).
    flows = world.relay.call(op="counters")["flows"]
    assert isinstance(flows, list)
    assert len(flows) == 1
    there, back = flows[0]
    assert min(there["packets"], back["packets"]) >= 5, flows

    # Teardown: elements and conntrack entries go; nothing is forwarded any more.
    assert f"dport={port_a}" in world.relay.conntrack()
    world.relay.call(op="gone", node="node-a")
    assert not world.relay.keys("bound")
    assert "elements" not in world.relay.nft_set("to_peer", "map")
    left = world.relay.conntrack()
    assert f"dport={port_a}" not in left, left
    assert f"dport={ask_b['relay_port']}" not in left, left
    assert not ping(world.a, world.b)
    print(f"\nudp relay: hard<->hard first ping {first_ping_s:.2f} s after the binds started")


def test_a_killed_relays_elements_time_out_and_forwarding_stops(world: World) -> None:
    # The allocation lives TTL s from the ask: long enough for the binds and a first ping on a
    # loaded machine (CI's mutation gate saw a 4 s one lapse before the kill), short enough to
    # watch it lapse.
    ask_a, ask_b = _allocate(world, KILLED_TTL_S)
    _connect(world, ask_a, ask_b)
    wait_for("A pings B through the relay", lambda: ping(world.a, world.b), 20, interval=0.0)
    world.relay.proc.send_signal(signal.SIGKILL)
    world.relay.proc.wait(10)
    assert "elements" in world.relay.nft_set("bound")  # nobody cleaned up
    wait_for(
        "the elements time out",
        lambda: "elements" not in world.relay.nft_set("bound"),
        KILLED_TTL_S + 4,
    )
    assert "elements" not in world.relay.nft_set("to_peer", "map")
    assert not ping(world.a, world.b)


@pytest.mark.parametrize("world", ["userspace"], indirect=True)
def test_the_userspace_fallback_forwards_batched_without_any_nft_rule(world: World) -> None:
    """Without the kernel path (no table, no ip_forward needed) the relay's threads forward
    between the bound sources; forgeries change nothing; teardown stops forwarding."""
    world.relay_host.ns.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    ask_a, ask_b = _allocate(world, 60)
    a_bind = _connect(world, ask_a, ask_b)
    wait_for("A pings B through the relay", lambda: ping(world.a, world.b), 20, interval=0.0)
    assert "rustynet" not in world.relay_host.ns.run("nft", "list", "tables").stdout
    port_a = int(str(ask_a["relay_port"]))
    wrong = bind_packet(b"k" * 32, UdpGrant.from_message(ask_a).allocation_id, port_a, 99)
    for packet in (wrong, a_bind, b"\x04\0\0\0" + bytes(28)):
        send(world.mallory, "-", world.relay_host, port_a, packet)
    done = world.a.host.ns.run("ping", "-c", "5", "-i", "0.2", "-W", "1", world.b.overlay)
    assert done.returncode == 0
    counters = world.relay.call(op="counters")
    udp, forwarded = counters["udp"], counters["forwarded"]
    assert isinstance(udp, dict)
    assert isinstance(forwarded, list)
    assert udp["refused_binds"] == 2, counters
    assert min(forwarded[0]) >= 5, counters
    world.relay.call(op="gone", node="node-a")
    assert not ping(world.a, world.b)
