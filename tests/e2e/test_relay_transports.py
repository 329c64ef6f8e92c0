"""A relayed pair's transport, end to end: two `rustynetd` behind hard NATs (no direct path)
and a `rustynet-relay` with `[udp]` on the lab's internet. While UDP to the relay is blocked
(only its TCP port answers) the pair goes through the relay's WebSocket session (`relay-wss`);
once UDP gets through, both ends' tunnels move to the relay's kernel-forwarded UDP ports
(`relay-udp`: asked over the session, bound from the tunnel port, proven by the tunnels' own
packets) and pings flow with no relay process in the data path. A restarted relay is
re-allocated; a revoked node's allocation leaves the relay's kernel tables."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.e2e.harness import ALLOW_ALL_POLICY, Node, run_in, start_control_with_relay, wait_for
from tests.e2e.natmesh import NatMesh, block_udp_between, unblock
from tests.natlab import Host, NatKind
from tests.netns import require_in_ci, require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

RELAY_S = 30.0  # direct attempt (6 s) + relay session + a handshake through it, loaded
UDP_S = 75.0
"""A leg's next retry after failed trials (10, 20, then 40 s backoff; measured 2-34 s here),
its 1 s trial, and a relay link's reconnect backoff after a restart, on a loaded machine."""
PORTS = (40100, 40199)
FIRST_PING_S = 5.0
"""Issue 16: a pair that cannot go direct pings through the relay within ~1 s of its relay
session being up (here: the second node's join → its session → a handshake through it, loaded),
not after the 6 s direct attempt."""


def _transport(a: Node, b: Node) -> object:
    return a.peers().get(b.name, {}).get("relay_transport")


def _both(a: Node, b: Node, transport: str) -> bool:
    return all(
        x.path_to(y) == "relay" and _transport(x, y) == transport for x, y in ((a, b), (b, a))
    )


def _wg_endpoint(node: Node) -> str:
    done = run_in(node.ns, "wg", "show", node.interface, "endpoints")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_hard_nats_relay_over_wss_while_udp_is_blocked_then_over_udp(nat_mesh: NatMesh) -> None:
    require_in_ci("iperf3")
    require_root("iperf3")
    mesh = nat_mesh
    ha, hb = mesh.nat.host(NatKind.HARD), mesh.nat.host(NatKind.HARD)
    a, b = mesh.add("ta", ha), mesh.add("tb", hb)
    assert ha.site is not None
    assert hb.site is not None
    relay_host = mesh.nat.internet_host()
    relay_host.ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    for router in (ha.site.router, hb.site.router):  # only the relay's TCP port answers them
        block_udp_between(mesh, router.wan_address, relay_host.address, table="noudp")
    udp = f'[udp]\naddress = "{relay_host.address}"\nport_first = {PORTS[0]}\n'
    udp += f"port_last = {PORTS[1]}\ntotal = 50\n"
    relay = start_control_with_relay(mesh, relay_host.ns, relay_host.address, relay_toml=udp)
    mesh.control.set_policy(ALLOW_ALL_POLICY, mesh.workdir)
    mesh.join(a)
    mesh.join(b)
    joined = time.monotonic()
    # Both NATs are hard (each side's class and the other's, from the signed map): no direct
    # attempt to sit out, the pair takes the relay as soon as its session is up.
    assert wait_for("a ping through the relay's WebSocket", lambda: a.ping(b), RELAY_S)[0]
    first = time.monotonic() - joined
    print(f"\ne2e-timing hard<->hard both joined → first relayed ping: {first * 1000:.0f} ms")
    assert first < FIRST_PING_S, f"{first:.1f} s"
    wait_for("both on the relay", lambda: _both(a, b, "wss"), RELAY_S, interval=0.2)
    time.sleep(3)  # each leg's trial ran out with nothing through the UDP port: still wss
    assert _both(a, b, "wss")
    # A retried trial holds the tunnel's sends for its 1 s: a ping gets through around it.
    assert wait_for("a ping through the relay's WebSocket", lambda: a.ping(b), 5)[0]

    unblock(mesh, table="noudp")
    _, took = wait_for("both over the relay's UDP ports", lambda: _both(a, b, "udp"), UDP_S)
    print(f"\ne2e-timing UDP to the relay unblocked → both relay-udp: {took * 1000:.0f} ms")
    assert wait_for("a ping through the relay's UDP ports", lambda: a.ping(b), 5)[0]
    mbit = _iperf(a, b)
    print(f"e2e-timing iperf3 TCP through relay-udp (1 s, loaded lab): {mbit:.0f} Mbit/s")
    assert mbit > 0
    for node in (a, b):  # each tunnel sends straight to its relay port, not to a bridge
        host, port = _wg_endpoint(node).rsplit(":", 1)
        assert host == relay_host.address
        assert PORTS[0] <= int(port) <= PORTS[1]
    forwarded = [int(n) for n in re.findall(r"counter packets (\d+)", _set(relay_host, "flows"))]
    assert forwarded
    assert max(forwarded) > 0  # the relay's kernel carried the pings

    # A restarted relay: every session and allocation is gone; the nodes reconnect, ask again,
    # bind again, and the pair is back on relay-udp.
    relay.program.stop()
    relay.start()
    _, took = wait_for("both back on relay-udp", lambda: _both(a, b, "udp"), UDP_S)
    print(f"e2e-timing relay restarted → both relay-udp again: {took * 1000:.0f} ms")
    assert wait_for("a ping after the relay restart", lambda: a.ping(b), 5)[0]

    # Revocation reaches the kernel: the relay follows the signed revocation feed, closes the
    # node's session and removes its allocation's elements (no packet of it is forwarded).
    assert _elements(relay_host, "bound")
    status, _ = mesh.control.rest("POST", f"/v1/admin/nodes/{mesh.control.node_id(a.name)}/revoke")
    assert status == 200
    _, took = wait_for("no bound source left", lambda: not _elements(relay_host, "bound"), 10)
    print(f"e2e-timing node revoked → its relay-udp elements gone: {took * 1000:.0f} ms")
    assert not a.ping(b)


def _iperf(client: Node, server: Node) -> float:
    """TCP Mbit/s over the overlay for 1 s (iperf3; the ratio to direct is bench/'s job)."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", server.ns.name, "iperf3", "-s", "-1", "-p", "5399"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        argv = ["iperf3", "-c", server.overlay_ip, "-p", "5399", "-t", "1", "-J"]
        done = run_in(client.ns, *argv, "--connect-timeout", "3000", timeout=20)
        report = json.loads(done.stdout)
        assert "error" not in report, report.get("error")
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        listener.kill()
        listener.wait(5)


def _set(host: Host, name: str) -> str:
    done = run_in(host.ns, "nft", "list", "set", "ip", "rustynet-relay-udp", name)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _elements(host: Host, name: str) -> bool:
    """The relay's nft set `name` holds at least one element."""
    return "elements = {" in _set(host, name)
