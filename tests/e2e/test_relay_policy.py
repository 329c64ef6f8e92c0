"""Issue 5: policy and the firewall apply identically on the relay path.

The data-path filter is an nftables table on the tunnel interface, so it sees decrypted
packets whichever path (direct or relay) carried them; this test proves it end to end with
the direct path blocked on the switch and the pair relayed.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import Mesh, block_direct, start_control_with_relay, wait_for
from tests.e2e.test_mesh import TAGGED_POLICY

pytestmark = [pytest.mark.root, pytest.mark.slow]

RELAY_UP_S = 30.0  # direct_timeout 6 s + relay session + a handshake retry (5 s), with margin


def test_policy_holds_on_the_relay_path(mesh: Mesh) -> None:
    """A→B:22/tcp only, with A↔B relayed: A reaches B's port 22 through the relay, B cannot
    open A's port 22, and ICMP is dropped both ways."""
    start_control_with_relay(mesh)
    mesh.control.set_policy(TAGGED_POLICY, mesh.workdir)
    a, b = mesh.add_node("a"), mesh.add_node("b")
    block_direct(mesh, a, b)
    mesh.join(a, ["tag:client"])
    mesh.join(b, ["tag:server"])
    for node in (a, b):
        mesh.serve_tcp(node, 22)
    wait_for("A → B:22 through the relay", lambda: a.tcp_connect(b, 22) == "ok", RELAY_UP_S)
    wait_for("A reports relay for B", lambda: a.path_to(b) == "relay", 10)
    assert b.path_to(a) == "relay"
    assert b.tcp_connect(a, 22) == "timeout"  # crosses the relay, dropped by A's table
    assert not a.ping(b)
    assert not b.ping(a)
