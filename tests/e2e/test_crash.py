"""Issue 11 item 1: a daemon killed with SIGKILL fails closed, and its restart starts clean.

Real `rustynet-control`, three `rustynetd` with wireguard-go and nftables in namespaces. C is
made hostile first: its daemon is frozen (SIGSTOP), so C never tears its own tunnel down, and
a ping stream keeps C's wireguard-go sending to A. Then A's daemon is killed with SIGKILL and
C is revoked; a capture on A's underlay interface shows that A sends C no datagram from then
on (C's attempts are seen, so the capture works), through A's restart, which comes back with
the same identity, pings B, and never lists C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.harness import (
    ALLOW_ALL_POLICY,
    CONTROL_IP,
    PYTHON,
    Mesh,
    Node,
    dig,
    run_in,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

MESH_UP_S = 10.0
GONE_S = 3.0
CAPTURE_S = 16.0
HOLD_S = 3.0
CUT_TABLE = "e2ecut"
KEPT_TABLE = "rustynet-killswitch"
_IPV4, _UDP = b"\x08\x00", 17


def _underlay_link(node: Node) -> str:
    links = [name for name in node.ns.links() if name not in ("lo", node.interface)]
    assert len(links) == 1, links
    return links[0]


def _sniff(node: Node, interface: str, out: Path) -> subprocess.Popen[bytes]:
    capture = ("-m", "tests.e2e.sniff", interface, str(CAPTURE_S), str(out))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", node.ns.name, PYTHON, *capture],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"capturing"
    return proc


def _ipv4_packets(capture: bytes, src: str, dst: str) -> list[tuple[int, bytes]]:
    """(IP protocol, first 4 payload bytes) of every IPv4 packet from `src` to `dst`."""
    wanted = (bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    found, offset = [], 0
    while offset < len(capture):
        length = int.from_bytes(capture[offset : offset + 4], "big")
        frame = capture[offset + 4 : offset + 4 + length]
        offset += 4 + length
        if frame[12:14] != _IPV4:
            continue
        ip = frame[14:]
        if (ip[12:16], ip[16:20]) == wanted:
            header = (ip[0] & 0x0F) * 4
            found.append((ip[9], ip[header : header + 4]))
    return found


def _cut(mesh: Mesh, node: Node, address: str) -> None:
    """The switch drops everything between `node` and `address` (until CUT_TABLE goes)."""
    pair = f"ip saddr {node.underlay_ip} ip daddr {address}"
    back = f"ip saddr {address} ip daddr {node.underlay_ip}"
    rules = (
        f"table bridge {CUT_TABLE} {{\n  chain forward {{\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"    {pair} drop\n    {back} drop\n  }}\n}}\n"
    )
    done = run_in(mesh.lab.bridge(), "nft", "-f", "-", stdin=rules)
    assert done.returncode == 0, done.stderr


def _pid(node: Node) -> int:
    assert node.program.proc is not None
    return node.program.proc.pid  # `ip netns exec` execs: this is rustynetd itself


def test_kill_9_fails_closed_keeps_a_revoked_peer_out_and_restarts_clean(mesh: Mesh) -> None:
    """kill -9 A's daemon: wireguard-go and A's tunnel interface go with it; C is revoked
    while A is down; A sends C no datagram from the kill on; restarted, A keeps its identity,
    pings B, and C's key never returns to A's tunnel."""
    mesh.start_control()
    mesh.control.set_policy(ALLOW_ALL_POLICY, mesh.workdir)
    a, b, c = (mesh.add_node(name) for name in ("a", "b", "c"))
    for node in (a, b, c):
        mesh.join(node)
    mesh.wait_all_ping(MESH_UP_S)
    identity, a_key, c_key = dig(a.status(), "node"), a.tunnel_key(), c.tunnel_key()
    c_id = mesh.control.node_id("c")
    c_ping = ["ip", "netns", "exec", c.ns.name, "ping", "-n", "-i", "0.2", a.overlay_ip]
    os.kill(_pid(c), signal.SIGSTOP)  # C ignores its revocation from now on
    pinger = subprocess.Popen(c_ping, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for("C's ping stream reaches A", lambda: c.ping(a), 5)[0]
        # A table of someone else's (a future kill switch) must survive crash and restart.
        assert run_in(a.ns, "nft", "add", "table", "inet", KEPT_TABLE).returncode == 0
        os.kill(_pid(a), signal.SIGKILL)
        assert a.program.proc is not None
        a.program.proc.wait(5)
        sniffer = _sniff(a, _underlay_link(a), mesh.workdir / "a-underlay.cap")
        wait_for("A's tunnel to vanish", lambda: a.interface not in a.ns.links(), GONE_S)
        status, _ = mesh.control.rest("POST", f"/v1/admin/nodes/{c_id}/revoke")
        assert status == 200
        # What the crash left: the UAPI socket, the local API socket, the nftables table.
        assert Path("/var/run/wireguard", f"{a.interface}.sock").exists()
        assert a.socket.exists()
        table = ["nft", "list", "table", "inet", f"rustynet-{a.interface}"]
        assert run_in(a.ns, *table).returncode == 0

        # A restarts while it cannot reach control (shorter than the stored-map fallback):
        # its saved map still lists C, yet A configures no peer at all until control speaks.
        _cut(mesh, a, CONTROL_IP)
        a.start()
        waiting = str(dig(a.status(), "peermap_source"))
        assert waiting.startswith("none (waiting for the control plane"), waiting
        held_until = time.monotonic() + HOLD_S
        while time.monotonic() < held_until:
            assert a.tunnel_peer_keys() == set(), "a peer configured before control spoke"
            time.sleep(0.05)
        run_in(mesh.lab.bridge(), "nft", "delete", "table", "bridge", CUT_TABLE)
        wait_for("A pings B after the restart", lambda: a.ping(b), MESH_UP_S, interval=0.0)
        assert dig(a.status(), "node") == identity
        assert a.tunnel_key() == a_key
        assert set(a.peers()) == {"b"}
        assert dig(a.status(), "peermap_source") == "control"
        assert c_key not in a.tunnel_peer_keys()
        assert c.overlay_ip not in run_in(a.ns, *table).stdout
        assert not c.ping(a)
        assert run_in(a.ns, "nft", "list", "table", "inet", KEPT_TABLE).returncode == 0
        sniffer.wait(CAPTURE_S + 10)
        assert sniffer.stdout is not None
        sniffer.stdout.close()
    finally:
        pinger.kill()
        pinger.wait(5)
        os.kill(_pid(c), signal.SIGCONT)
    capture = (mesh.workdir / "a-underlay.cap").read_bytes()
    from_c = _ipv4_packets(capture, c.underlay_ip, a.underlay_ip)
    assert any(proto == _UDP for proto, _ in from_c), "C's tunnel never tried A (capture broken?)"
    to_c = _ipv4_packets(capture, a.underlay_ip, c.underlay_ip)
    # Only the kernel's "port unreachable" (ICMP type 3) while no wireguard-go listened.
    assert [p for p in to_c if p[0] != 1 or p[1][0] != 3] == [], to_c
    assert c_key not in a.tunnel_peer_keys()
