"""The e2e mesh inside the NAT lab: a control plane (and maybe a relay) on the lab's internet,
`rustynetd` nodes behind NAT routers of every kind, real programs throughout.

`NatMesh` is a `Mesh` (same control plane, node and relay helpers, same clean-up) whose bridge
is the NAT lab's internet (203.0.113.0/24) and whose nodes live in NAT lab hosts
(`tests/natlab.py`): `add(name, host)` configures a node in `host`'s namespace. Pairs are timed
concurrently by `time_pair`: from the moment both nodes of a pair are enrolled to the first
overlay ping and to `status` showing the pair `direct` on both sides.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.e2e.harness import (
    NODE_UNDERLAY_PORT,
    RELAY_PORT,
    ControlPlane,
    LabError,
    Mesh,
    Node,
    dig,
    run_in,
    start_control_with_relay,
    wait_for,
)
from tests.natlab import INTERNET, SITE_PREFIX_LEN, Host, NatKind, NatLab, Site
from tests.netns import Namespace, unique_name


class NatMesh(Mesh):
    """A `Mesh` on a `NatLab`: control on an internet host, nodes behind the lab's routers."""

    def __init__(self, nat: NatLab, workdir: Path) -> None:  # noqa: super().__init__ builds a bridge
        self.nat = nat
        self.lab = nat.netlab
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_host = nat.internet_host()
        self.control_ns = self.control_host.ns
        self.control = ControlPlane(self.control_ns, workdir, address=self.control_host.address)
        self.nodes: dict[str, Node] = {}
        self.servers = []
        self.hosts: dict[str, Host] = {}
        self.errors: dict[str, str] = {}

    def add(self, name: str, host: Host, endpoints: Sequence[str] = ()) -> Node:
        """A node in `host`'s namespace; `endpoints` become its `underlay_endpoints` (none: it
        gathers its own candidates)."""
        node = Node(name, host.ns, host.address, self.lab.interface_name(), self.workdir)
        lines = [ln for ln in node.config_text().splitlines() if "underlay_endpoints" not in ln]
        if endpoints:
            listed = ", ".join(f'"{e}"' for e in endpoints)
            lines.append(f"underlay_endpoints = [{listed}]")
        node.config.write_text("\n".join(lines) + "\n")
        self.nodes[name] = node
        self.hosts[name] = host
        return node

    def join_all(self, tags: Mapping[str, Iterable[str]]) -> dict[str, threading.Event]:
        """Start and enroll every node at once, in the background; per node, an event set
        once its `up` ended (`errors` then holds why, for those that failed)."""
        done = {name: threading.Event() for name in self.nodes}

        def one(node: Node) -> None:
            try:
                self.join(node, tuple(tags.get(node.name, ())))
            except (LabError, OSError) as exc:
                self.errors[node.name] = str(exc)
            finally:
                done[node.name].set()

        for node in self.nodes.values():
            threading.Thread(target=one, args=(node,), daemon=True).start()
        return done

    def overlay_of(self, node: Node) -> str:
        """The node's overlay address (read again from `status` if `up` could not read it:
        a `status` call can time out while ten daemons start at once)."""
        if not node.overlay_ip:
            address, _ = wait_for(
                f"{node.name}'s overlay address",
                lambda: _text(dig(node.status(), "node", "overlay_ip")),
                20,
                interval=0.5,
            )
            node.overlay_ip = address
        return node.overlay_ip

    def block_tcp_from(
        self, addresses: Iterable[str], port: int, ns: Namespace | None = None
    ) -> None:
        """Drop TCP from `addresses` to `port` in namespace `ns` (default control's): the relay
        there unreachable for them."""
        rules = "\n".join(f"    ip saddr {a} tcp dport {port} drop" for a in addresses)
        ruleset = (
            "table ip natmesh {\n  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"{rules}\n  }}\n}}\n"
        )
        done = run_in(ns or self.control_ns, "nft", "-f", "-", stdin=ruleset)
        if done.returncode != 0:
            raise LabError(f"nft in the control namespace failed:\n{done.stderr}")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def wan_endpoint(host: Host) -> str:
    """`<router WAN>:<tunnel port>`: where an endpoint-independent NAT that keeps the port maps
    the host's tunnel port (the address a reflexive candidate would carry)."""
    assert host.site is not None
    return f"{host.site.router.wan_address}:{NODE_UNDERLAY_PORT}"


@dataclass
class PairTiming:
    """How one pair came up: both paths as `status` ended, and the times from both enrolled."""

    pair: str
    paths: tuple[str, str]
    first_ping: float | None
    direct: float | None
    endpoint_kinds: tuple[str, str]


def _peer(node: Node, other: Node) -> dict[str, object]:
    return node.peers().get(other.name, {})


def log_time(node: Node, event: str, **fields: object) -> float | None:
    """The wall-clock time (epoch s) of the first `event` with `fields` in `node`'s log."""
    for line in node.program.log_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") == event and all(v == record.get(k) for k, v in fields.items()):
            return datetime.fromisoformat(record["timestamp"]).timestamp()
    return None


def first_ping_at(a: Node, b: Node, timeout: float) -> float | None:
    """Epoch time of the first overlay echo reply a→b (pings every 0.1 s, `ping -D`)."""
    done = run_in(
        a.ns,
        "ping",
        "-n",
        "-D",
        "-i",
        "0.1",
        "-c",
        "1",
        "-w",
        str(int(timeout)),
        b.overlay_ip,
        timeout=timeout + 5,
    )
    for line in done.stdout.splitlines():
        if line.startswith("[") and "bytes from" in line:
            return float(line[1 : line.index("]")])
    return None


def time_pair(label: str, a: Node, b: Node, want: str, timeout: float) -> PairTiming:
    """From the moment both nodes hold each other in an applied map (the later of the two
    `peer_map.applied` with peers, in the daemons' logs): the first overlay ping a→b, and
    both daemons confirming the other's endpoint by a handshake (`path.confirmed`, for
    `want` = direct), or both `status` showing `want`."""
    ping = first_ping_at(a, b, timeout)
    deadline = time.time() + timeout
    while time.time() < deadline and not (a.path_to(b) == want and b.path_to(a) == want):
        time.sleep(0.1)
    ends = (a, b)
    known = [log_time(n, "peer_map.applied", peers=_Positive()) for n in ends]
    assert None not in known, f"{label}: no map with peers\n{a.program.tail()}"
    start = max(t for t in known if t is not None)
    if want == "direct":
        seen = [log_time(x, "path.confirmed", peer=y.name) for x, y in (ends, ends[::-1])]
    else:
        seen = [
            log_time(x, "path.changed", peer=y.name, to_path=want) for x, y in (ends, ends[::-1])
        ]
    reached = None if None in seen else max(t for t in seen if t is not None) - start
    pa, pb = _peer(a, b), _peer(b, a)
    return PairTiming(
        pair=label,
        paths=(str(pa.get("path")), str(pb.get("path"))),
        first_ping=None if ping is None else ping - start,
        direct=reached,
        endpoint_kinds=(str(pa.get("endpoint_kind")), str(pb.get("endpoint_kind"))),
    )


class _Positive:
    """Matches a positive count in a log record."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and other > 0

    __hash__ = None  # type: ignore[assignment]


def table(rows: Sequence[PairTiming]) -> str:
    """The matrix as text: pair → final path → time to first ping → time to the final path."""

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    head = f"{'pair':<22} {'path (a/b)':<16} {'kinds (a/b)':<26} {'first ping':>10} {'path':>9}"
    body = [
        f"{r.pair:<22} {'/'.join(r.paths):<16} {'/'.join(r.endpoint_kinds):<26} "
        f"{secs(r.first_ping):>10} {secs(r.direct):>9}"
        for r in rows
    ]
    return "\n".join([head, *body])


def new_nat_mesh(workdir: Path) -> NatMesh:
    """A NatMesh on a fresh NatLab (the caller closes it)."""
    nat = NatLab()
    try:
        return NatMesh(nat, workdir / unique_name("natmesh", 14))
    except BaseException:
        nat.close()
        raise


def move(nat: NatLab, host: Host, site: Site) -> str:
    """Unplug `host` from its site and plug it into `site` (a new LAN address, routed through
    the new router), as a laptop moving to another network would be; its new address."""
    base = int(site.network.rsplit(".", 1)[1])
    address = f"198.51.100.{base + 2 + len(site.hosts)}"
    host.ns.ip("link", "del", "eth0")
    nat.link_to_lan(host.ns, f"{address}/{SITE_PREFIX_LEN}", site.router)
    host.ns.ip("route", "add", INTERNET, "via", site.router.lan_address)
    site.hosts.append(Host(host.ns, address, site))
    host.address, host.site = address, site
    return address


def block_udp_between(mesh: NatMesh, a: str, b: str, table: str = "natblock") -> None:
    """Drop UDP between public addresses `a` and `b` on the lab's internet (its bridge)."""
    rules = (
        f"table bridge {table} {{\n  chain forward {{\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"    ip saddr {a} ip daddr {b} meta l4proto udp drop\n"
        f"    ip saddr {b} ip daddr {a} meta l4proto udp drop\n"
        "  }\n}\n"
    )
    done = run_in(mesh.lab.bridge(), "nft", "-f", "-", stdin=rules)
    if done.returncode != 0:
        raise LabError(f"nft on the internet bridge failed:\n{done.stderr}")


def unblock(mesh: NatMesh, table: str = "natblock") -> None:
    """Remove a `block_udp_between` table."""
    done = run_in(mesh.lab.bridge(), "nft", "delete", "table", "bridge", table)
    if done.returncode != 0:
        raise LabError(f"nft on the internet bridge failed:\n{done.stderr}")


# --- the NAT matrix (tests/e2e/test_nat_matrix.py, bench/bench_punch.py) ---------------------

RELAY_BOUND = 30.0  # direct attempt (6 s) + relay session + a handshake through it, loaded

NODES = {  # name → NAT kind (None: the shared site of s1 and s2); reaches the relay?
    "pub": (NatKind.PUBLIC, False),
    "e1": (NatKind.EASY, False),
    "e2": (NatKind.EASY, False),
    "f1": (NatKind.FULL_CONE, False),
    "c1": (NatKind.CGNAT, False),
    "s1": (None, False),
    "s2": (None, False),
    "h1": (NatKind.HARD, True),
    "e3": (NatKind.EASY, True),
    "h2": (NatKind.HARD, True),
}
PAIRS = (  # label, a, b, the path both must end on
    ("public-easy", "pub", "e1", "direct"),
    ("easy-easy", "e1", "e2", "direct"),
    ("easy-fullcone", "e1", "f1", "direct"),
    ("fullcone-hard", "f1", "h1", "direct"),
    ("one-nat", "s1", "s2", "direct"),
    ("easy-cgnat", "e1", "c1", "direct"),
    ("easy-hard", "e3", "h1", "relay"),
    ("hard-hard", "h1", "h2", "relay"),
)


def matrix_policy(*, acls: bool = True) -> dict[str, object]:
    """Each pair's tag sees only itself (`acls=False`: the tags exist, no one sees anyone)."""
    tags = [f"tag:{label}" for label, *_ in PAIRS]
    rules = [{"action": "accept", "src": [t], "dst": [f"{t}:*"]} for t in tags]
    return {"tagOwners": {t: [] for t in tags}, "acls": rules if acls else []}


def _matrix_hosts(mesh: NatMesh) -> dict[str, Host]:
    shared = mesh.nat.site(NatKind.EASY)
    hosts: dict[str, Host] = {}
    for name, (kind, _) in NODES.items():
        hosts[name] = shared.host() if kind is None else mesh.nat.host(kind)
    return hosts


def public_address(host: Host) -> str:
    """The address the internet sees the host at (its router's, or the carrier's, WAN)."""
    if host.site is None:
        return host.address
    if host.site.kind is NatKind.CGNAT:
        return host.site.lab.carrier().wan_address
    return host.site.router.wan_address


def run_matrix(mesh: NatMesh) -> list[PairTiming]:
    """Build the matrix in `mesh` (control with a relay the direct pairs cannot reach), enroll
    every node seeing no one, open every pair with one policy change, time each pair."""
    hosts = _matrix_hosts(mesh)
    for name, host in hosts.items():
        mesh.add(name, host)  # no underlay_endpoints: candidates are discovered
    # The relay on a host of its own: nodes never probe STUN at an address their tunnel
    # talks to (the relay's included), so a relay beside control would hide control's STUN.
    relay_host = mesh.nat.internet_host()
    start_control_with_relay(mesh, relay_host.ns, relay_host.address)
    unreachable = {public_address(hosts[n]) for n, (_, reach) in NODES.items() if not reach}
    mesh.block_tcp_from(sorted(unreachable), RELAY_PORT, relay_host.ns)
    # Everyone enrolls first, seeing no one; then one policy change opens every pair at once,
    # so each pair's two nodes learn of each other from the same long-poll wake-up.
    mesh.control.set_policy(matrix_policy(acls=False), mesh.workdir)
    tags = {n: [f"tag:{label}" for label, a, b, _ in PAIRS if n in (a, b)] for n in NODES}
    up = mesh.join_all(tags)
    for name, event in up.items():
        if not event.wait(90):
            raise LabError(f"{name} did not come up\n{mesh.logs()}")
    for node in mesh.nodes.values():
        if node.name in mesh.errors and not node.program.running:
            raise LabError(f"{node.name}: {mesh.errors[node.name]}\n{mesh.logs()}")
        mesh.overlay_of(node)
    mesh.control.set_policy(matrix_policy(), mesh.workdir)

    def timed(pair: tuple[str, str, str, str]) -> PairTiming:
        label, a, b, want = pair
        return time_pair(label, mesh.nodes[a], mesh.nodes[b], want, RELAY_BOUND)

    with ThreadPoolExecutor(max_workers=len(PAIRS)) as pool:
        return list(pool.map(timed, PAIRS))


__all__ = [
    "NODES",
    "PAIRS",
    "NatMesh",
    "PairTiming",
    "block_udp_between",
    "matrix_policy",
    "move",
    "new_nat_mesh",
    "public_address",
    "run_matrix",
    "table",
    "time_pair",
    "unblock",
    "wan_endpoint",
]
