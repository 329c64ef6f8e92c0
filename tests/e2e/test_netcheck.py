"""`rustynet netcheck` through a running rustynetd: the daemon measures with its signed peer
map's STUN servers (the control host's two ports) and times the control plane, the CLI prints
where it measured. Once on the lab's flat underlay, once behind an easy NAT of the NAT lab
(tests/natlab.py) with the control plane on the lab's internet."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.harness import (
    CONTROL_IP,
    CONTROL_PORT,
    NODE_UNDERLAY_PORT,
    ControlPlane,
    Mesh,
    Node,
)
from tests.natlab import NatKind, NatLab

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_netcheck_through_the_daemon(mesh: Mesh) -> None:
    """A node on the lab's flat underlay: `netcheck --json` goes to the daemon (GET
    /netcheck), which asks both STUN ports of the control host from the peer map and is seen
    as itself (public) on its tunnel port, and reaches the control plane's HTTPS port; the
    text form names the port it measured."""
    mesh.start_control()
    node = mesh.add_node("ncd")
    mesh.join(node)
    start = time.monotonic()
    doc = json.loads(node.cli_ok("netcheck", "--json"))
    elapsed = time.monotonic() - start
    v4 = doc["ipv4"]
    assert [s["server"] for s in v4["servers"]] == [f"{CONTROL_IP}:3478", f"{CONTROL_IP}:3479"]
    assert v4["nat"] == "public", doc
    assert v4["reflexive"] == [f"{node.underlay_ip}:{NODE_UNDERLAY_PORT}"]
    assert (doc["measured"], doc["local_port"], doc["skipped"]) == (
        "tunnel-port",
        NODE_UNDERLAY_PORT,
        [],
    )
    [control] = [t for t in doc["latency"] if t["kind"] == "control"]
    assert control["target"] == f"{CONTROL_IP}:{CONTROL_PORT}"
    assert control["rtt_ms"] is not None
    assert elapsed < 5, elapsed
    text = node.cli_ok("netcheck")
    assert text.startswith(f"measured:       the tunnel port {NODE_UNDERLAY_PORT} (through")
    assert "mapping:        public:" in text


@pytest.mark.usefixtures("lab_programs")
def test_netcheck_through_the_daemon_behind_an_easy_nat(tmp_path: Path) -> None:
    """rustynetd on a host behind an easy NAT, rustynet-control (and its STUN service) on the
    lab's internet: netcheck through the daemon measures the tunnel port as the router maps
    it: the router's WAN address with the tunnel port (easy NAT keeps it),
    eim-port-preserving."""
    with NatLab() as nat:
        server = nat.internet_host()
        control = ControlPlane(server.ns, tmp_path, address=server.address)
        control.init()
        control.start()
        try:
            host = nat.host(NatKind.EASY)
            node = Node("ncnat", host.ns, host.address, nat.netlab.interface_name(), tmp_path)
            try:
                node.start()
                node.up(control.join_token())
                doc = json.loads(node.cli_ok("netcheck", "--json"))
            finally:
                node.program.stop()
        finally:
            control.program.stop()
    assert host.site is not None
    v4 = doc["ipv4"]
    assert [s["server"] for s in v4["servers"]] == [
        f"{server.address}:3478",
        f"{server.address}:3479",
    ]
    assert v4["nat"] == "eim-port-preserving", doc
    assert v4["reflexive"] == [f"{host.site.router.wan_address}:{NODE_UNDERLAY_PORT}"]
    assert (doc["measured"], doc["local_port"]) == ("tunnel-port", NODE_UNDERLAY_PORT)
