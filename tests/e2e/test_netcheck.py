"""`rustynet netcheck` through a running rustynetd: the daemon measures with its signed peer
map's STUN servers (the control host's two ports) and times the control plane, the CLI prints
where it measured; standalone beside it says it measured an ephemeral port."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.harness import CONTROL_IP, CONTROL_PORT, Mesh

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_netcheck_through_the_daemon(mesh: Mesh) -> None:
    """A node on the lab's flat underlay: `netcheck --json` goes to the daemon (GET
    /netcheck), which asks both STUN ports of the control host from the peer map and is seen
    as itself (public), and reaches the control plane's HTTPS port; the text form names the
    port it measured. The daemon has no tunnel-port probe yet, so: an ephemeral port."""
    mesh.start_control()
    node = mesh.add_node("ncd")
    mesh.join(node)
    start = time.monotonic()
    doc = json.loads(node.cli_ok("netcheck", "--json"))
    elapsed = time.monotonic() - start
    v4 = doc["ipv4"]
    assert [s["server"] for s in v4["servers"]] == [f"{CONTROL_IP}:3478", f"{CONTROL_IP}:3479"]
    assert v4["nat"] == "public", doc
    assert v4["reflexive"] == [f"{node.underlay_ip}:{doc['local_port']}"]
    assert doc["measured"] == "ephemeral-port"
    [control] = [t for t in doc["latency"] if t["kind"] == "control"]
    assert control["target"] == f"{CONTROL_IP}:{CONTROL_PORT}"
    assert control["rtt_ms"] is not None
    assert elapsed < 5, elapsed
    text = node.cli_ok("netcheck")
    assert text.startswith("measured:       an ephemeral port")
    assert "mapping:        public:" in text
