"""Reflexive discovery end to end in the NAT lab: real `rustynet-control` (STUN on its two
ports, advertised in the signed map) on the lab's internet, and one real `rustynetd`
(wireguard-go, no `underlay_endpoints`) behind each NAT kind. For each, the node's entry in an
observer's signed peer map carries the right reflexive endpoint (the router's WAN address and
the port it actually mapped for the tunnel port; none for public and hard) and the control
plane stores the right `nat_classification`. The time from daemon start to that entry being in
the observer's map is printed (`-s`): the NAT kind -> endpoint -> class -> time table.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rustynet.domain.signed import SignedEnvelope
from tests.e2e.harness import (
    ALLOW_ALL_POLICY,
    CONTROL_BIN,
    NODE_UNDERLAY_PORT,
    RUSTYNETD_BIN,
    ControlPlane,
    Node,
    run_in,
    wait_for,
)
from tests.natlab import Host, NatKind, NatLab
from tests.netns import require_in_ci, require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONTROL_PORT = 8443
DISCOVER_TIMEOUT = 20.0


@dataclass
class World:
    nat: NatLab
    control: ControlPlane
    observer: Node
    workdir: Path
    nodes: list[Node]

    def node(self, name: str, host: Host) -> Node:
        node = Node(name, host.ns, host.address, self.nat.netlab.interface_name(), self.workdir)
        lines = [ln for ln in node.config_text().splitlines() if "underlay_endpoints" not in ln]
        node.config.write_text("\n".join(lines) + "\n")
        self.nodes.append(node)
        return node


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_in_ci("conntrack")
    require_root("ip", "nft", "conntrack", "wireguard-go")
    for binary in (CONTROL_BIN, RUSTYNETD_BIN):
        if not Path(binary).exists():
            pytest.skip(f"missing {binary}")
    workdir = tmp_path_factory.mktemp("natdisc")
    with NatLab() as nat:
        host = nat.internet_host()
        control = ControlPlane(host.ns, workdir, CONTROL_PORT, address=host.address)
        world = World(nat, control, None, workdir, [])  # type: ignore[arg-type]
        try:
            control.init()
            control.start()
            control.set_policy(ALLOW_ALL_POLICY, workdir)
            world.observer = world.node("observer", nat.internet_host())
            world.observer.start()
            world.observer.up(control.join_token())
            yield world
        except BaseException:
            for node in world.nodes:
                print(f"\n=== {node.name} ===\n{node.program.tail()}")
            raise
        finally:
            programs = [n.program for n in world.nodes] + [control.program]
            for program in programs:
                program.signal(signal.SIGTERM)
            for program in programs:
                program.stop(timeout=5)


def _entry(observer: Node, name: str) -> list[tuple[str, str]] | None:
    """`name`'s candidates in the map `observer` last applied (None: not in it yet)."""
    state = json.loads((observer.state_dir / "node-state.json").read_text())
    if not state.get("last_peer_map"):
        return None
    payload = json.loads(SignedEnvelope.from_text(state["last_peer_map"]).payload)
    for peer in payload["peers"]:
        if peer["name"] == name:
            return [(c["endpoint"], c["kind"]) for c in peer["candidates"]]
    return None


def _discover(world: World, name: str, host: Host, nat_class: str) -> tuple[str | None, float]:
    """Start a node on `host`, wait until the observer's map shows its classification's
    outcome and control stores `nat_class`; (its reflexive endpoint, seconds from start)."""
    node = world.node(name, host)
    started = time.monotonic()
    node.start()
    node.up(world.control.join_token())

    def classified() -> dict[str, object] | None:
        shown = world.control.admin_json("nodes", "show", name)
        assert isinstance(shown, dict)
        return shown if shown["nat_classification"] is not None else None

    shown, _ = wait_for(f"{name} classified", classified, DISCOVER_TIMEOUT, 0.2)
    assert shown["nat_classification"] == nat_class, shown

    def in_map() -> list[tuple[str, str]] | None:
        entry = _entry(world.observer, name)
        if entry is None:
            return None
        reflexive = [e for e, kind in entry if kind == "reflexive"]
        wanted = nat_class in ("eim", "eim-port-preserving")
        return entry if bool(reflexive) == wanted and entry else None

    entry, _ = wait_for(f"{name} in the observer's map", in_map, DISCOVER_TIMEOUT, 0.05)
    took = time.monotonic() - started
    reflexive = [e for e, kind in entry if kind == "reflexive"]
    assert len(reflexive) <= 1, entry
    found = reflexive[0] if reflexive else None
    print(f"\n{name:<14} reflexive={found or 'none':<22} nat={nat_class:<20} t={took:.2f}s")
    return found, took


def _wan(host: Host) -> str:
    site = host.site
    assert site is not None
    if site.kind is NatKind.CGNAT:
        return site.lab.carrier().wan_address
    return site.router.wan_address


@pytest.mark.parametrize(
    ("kind", "nat_class"),
    [
        (NatKind.EASY, "eim-port-preserving"),
        (NatKind.FULL_CONE, "eim-port-preserving"),
        (NatKind.CGNAT, "eim-port-preserving"),
    ],
)
def test_behind_endpoint_independent_nat_the_map_carries_the_mapped_tunnel_port(
    world: World, kind: NatKind, nat_class: str
) -> None:
    host = world.nat.host(kind)
    found, _ = _discover(world, f"n-{kind.value}", host, nat_class)
    assert found == f"{_wan(host)}:{NODE_UNDERLAY_PORT}"


def test_public_and_hard_nodes_report_no_reflexive_candidate(world: World) -> None:
    """Public: the local candidate already is the public endpoint; hard: what STUN saw is not
    what a peer would get, so nothing is reported (a node never reports the unobserved)."""
    public = world.nat.internet_host()
    found, _ = _discover(world, "n-public", public, "public")
    assert found is None
    entry = _entry(world.observer, "n-public")
    assert entry is not None
    assert (f"{public.address}:{NODE_UNDERLAY_PORT}", "local") in entry
    found, _ = _discover(world, "n-hard", world.nat.host(NatKind.HARD), "hard")
    assert found is None


def test_two_nodes_behind_one_nat_get_their_own_mappings(world: World) -> None:
    site = world.nat.site(NatKind.EASY)
    first, _ = _discover(world, "n-two-1", site.host(), "eim-port-preserving")
    second, _ = _discover(world, "n-two-2", site.host(), "eim")
    assert first == f"{site.router.wan_address}:{NODE_UNDERLAY_PORT}"
    assert second is not None
    assert second.split(":")[0] == site.router.wan_address
    assert second != first


def test_an_address_change_is_reported_within_seconds(world: World) -> None:
    """`ip monitor` sees a new address: the node re-gathers at once (the timer is 30 s) and
    the observer's map carries the new local candidate within a few seconds."""
    host = world.nat.internet_host()
    _discover(world, "n-roam", host, "public")
    extra = "203.0.113.250"
    done = run_in(host.ns, "ip", "address", "add", f"{extra}/32", "dev", "lo")
    assert done.returncode == 0, done.stderr
    wanted = (f"{extra}:{NODE_UNDERLAY_PORT}", "local")

    def seen() -> bool:
        return wanted in (_entry(world.observer, "n-roam") or [])

    _, took = wait_for("the new address in the observer's map", seen, 10.0, 0.05)
    print(f"\naddress change -> observer's map: {took:.2f}s")
    assert took < 5.0
