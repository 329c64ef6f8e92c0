"""Candidate gathering end to end: a node without `underlay_endpoints` reports the addresses of
its interfaces as `local` candidates (not an excluded prefix, not the tunnel), the control plane
shows them to admins and signs them into its peer's map, and the peer reaches it with them."""

from __future__ import annotations

import json

import pytest

from rustynet.domain.signed import SignedEnvelope
from tests.e2e.harness import ALLOW_ALL_POLICY, NODE_UNDERLAY_PORT, Mesh, Node, run_in, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

SECOND = "203.0.113.77"  # a second interface of node a
EXCLUDED = "203.0.113.200"  # on that interface too, inside the excluded prefix


def _ip(node: Node, *args: str) -> None:
    done = run_in(node.ns, "ip", *args)
    assert done.returncode == 0, done.stderr


def _map_candidates(holder: Node, peer_name: str) -> list[tuple[str, str]]:
    """The candidates of `peer_name` in the peer map `holder` last applied (its state file)."""
    state = json.loads((holder.state_dir / "node-state.json").read_text())
    if not state.get("last_peer_map"):
        return []
    payload = json.loads(SignedEnvelope.from_text(state["last_peer_map"]).payload)
    entries = [p for p in payload["peers"] if p["name"] == peer_name]
    return [(c["endpoint"], c["kind"]) for e in entries for c in e["candidates"]]


def test_two_interfaces_become_local_candidates_in_the_peers_map(mesh: Mesh) -> None:
    """Node a (two interfaces, no underlay_endpoints, one prefix excluded) reports both
    interface addresses as `local` candidates with its tunnel port; admins see them with their
    kind and time; node b's signed map carries them; b reaches a directly over them."""
    mesh.start_control()
    mesh.control.set_policy(ALLOW_ALL_POLICY, mesh.workdir)
    a = mesh.add_node("canda")
    _ip(a, "link", "add", "rncand0", "type", "veth", "peer", "name", "rncand1")
    _ip(a, "addr", "add", f"{SECOND}/32", "dev", "rncand0")
    _ip(a, "addr", "add", f"{EXCLUDED}/32", "dev", "rncand0")
    _ip(a, "link", "set", "rncand0", "up")
    config = [line for line in a.config_text().splitlines() if "underlay_endpoints" not in line]
    config += ["[candidates]", 'exclude = ["203.0.113.128/25"]']
    a.config.write_text("\n".join(config) + "\n")
    b = mesh.add_node("candb")
    mesh.join(a)
    mesh.join(b)
    expected = [
        (f"{a.underlay_ip}:{NODE_UNDERLAY_PORT}", "local"),
        (f"{SECOND}:{NODE_UNDERLAY_PORT}", "local"),
    ]

    def shown() -> bool:
        nodes = mesh.control.admin_json("nodes", "list")
        assert isinstance(nodes, list)
        node = next(n for n in nodes if n["name"] == "canda")
        return [(c["endpoint"], c["kind"]) for c in node["candidates"]] == expected

    wait_for("a's candidates at control", shown, 15, interval=0.5)

    def classified() -> dict[str, object] | None:
        node = mesh.control.admin_json("nodes", "show", "canda")
        assert isinstance(node, dict)
        return node if node["nat_classification"] is not None else None

    node, _ = wait_for("a's NAT classification at control", classified, 15, interval=0.2)
    assert node["candidates_updated_at"] is not None
    assert node["nat_classification"] == "public"  # the lab's LAN: STUN sees a's own address
    wait_for("b's map to carry a's candidates", lambda: _map_candidates(b, "canda") == expected, 15)
    assert wait_for("b to ping a", lambda: b.ping(a), 15)[0]
