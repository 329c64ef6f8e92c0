"""Direct connections across NATs (issue 15 "Numbers"): per NAT pair the time to the first ping
and to a confirmed direct path, and the throughput of a punched path against hand-configured
wireguard-go across the same NAT pair, in one run.

Run as root from the repository root (not part of the test suite):

    .venv/bin/python -m bench.bench_punch
    .venv/bin/python -m bench.bench_punch --seconds 5 --rounds 3

1. The NAT matrix of `tests/e2e/natmesh.py::run_matrix` (the e2e test's lab: control plane and
   relay on the lab's internet, `rustynetd` + wireguard-go behind every kind of NAT, eight
   pairs opened by one policy change): per pair the path on both sides, the endpoint kinds,
   the time from both holding each other in their maps to the first ping and to the path.
2. Throughput across the easy↔easy pair (two home routers): iperf3 over the overlay (the
   punched path) and over a second, hand-configured wireguard-go pair in the same two
   namespaces, punched the same way by hand (each end's endpoint set to the other router's
   WAN and the tunnel port, which the lab's easy NAT keeps), `--rounds` alternating runs of
   `--seconds` each; the ratio of the medians (`[punch] throughput_ratio_min`).

Results: JSON to bench/results/punch.json and a markdown table beside it (printed too), each
figure next to its budget from bench/budgets.toml [punch]. Exit codes: 0 every budget met,
1 a budget missed or the run failed, 2 cannot run here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Final

from bench.lab import alternate_iperf, finish, lab_run, preflight
from bench.report import RESULTS, budgets_of, write_results
from tests.e2e.harness import (
    CONTROL_BIN,
    RUSTYNETD_BIN,
    LabError,
    Mesh,
    Node,
    Program,
    run_in,
    wait_for,
)
from tests.e2e.natmesh import NatMesh, new_nat_mesh, run_matrix, table

WG_PORT: Final = 51820
WG_OVERLAY: Final = ("10.199.0.1", "10.199.0.2")  # the hand-made pair's own addresses


def hand_punched(mesh: NatMesh, a: Node, b: Node) -> None:
    """wireguard-go in A and B set up by hand, each pointed at the other's router WAN:WG_PORT
    (both at once, keepalive on: the handshakes punch both NATs)."""
    keys: dict[str, tuple[Path, str]] = {}
    names = {n.name: mesh.lab.interface_name() for n in (a, b)}
    for node in (a, b):
        private = mesh.workdir / f"wg-{node.name}.key"
        private.write_text(run_in(node.ns, "wg", "genkey").stdout.strip() + "\n")
        private.chmod(0o600)
        public = run_in(node.ns, "wg", "pubkey", stdin=private.read_text()).stdout.strip()
        keys[node.name] = (private, public)
        program = Program(
            node.ns, ["wireguard-go", "-f", names[node.name]], mesh.workdir / f"wg-{node.name}.log"
        )
        mesh.servers.append(program)
        program.start()
        sock = Path(f"/var/run/wireguard/{names[node.name]}.sock")
        wait_for(f"wireguard-go {names[node.name]} UAPI socket", sock.exists, 10)
    ends = ((a, WG_OVERLAY[0]), (b, WG_OVERLAY[1]))
    for (node, address), (peer, peer_address) in (ends, ends[::-1]):
        site = mesh.hosts[peer.name].site
        assert site is not None
        iface = names[node.name]
        for argv in (
            ("ip", "addr", "add", f"{address}/32", "dev", iface),
            ("ip", "link", "set", iface, "up"),
            ("ip", "route", "add", f"{peer_address}/32", "dev", iface),
        ):
            run_in(node.ns, *argv)
    for (node, _), (peer, peer_address) in (ends, ends[::-1]):
        site = mesh.hosts[peer.name].site
        assert site is not None
        done = run_in(
            node.ns, "wg", "set", names[node.name],
            "private-key", str(keys[node.name][0]),
            "listen-port", str(WG_PORT),
            "peer", keys[peer.name][1],
            "allowed-ips", f"{peer_address}/32",
            "endpoint", f"{site.router.wan_address}:{WG_PORT}",
            "persistent-keepalive", "5",
        )  # fmt: skip
        if done.returncode != 0:
            raise LabError(f"wg set failed: {done.stderr}")

    def pings() -> bool:
        return run_in(a.ns, "ping", "-c1", "-W1", "-n", WG_OVERLAY[1]).returncode == 0

    wait_for("A pings B over the hand-punched wireguard-go pair", pings, 20, interval=0.2)


def run(args: argparse.Namespace, mesh: Mesh, results: dict[str, Any]) -> None:
    """The matrix, then the throughput comparison across easy↔easy."""
    if not isinstance(mesh, NatMesh):
        raise LabError("bench_punch runs in the NAT lab (lab_run(..., make=new_nat_mesh))")
    rows = run_matrix(mesh)
    print("NAT matrix (times from both nodes holding each other in their maps)")
    print(table(rows))
    results["matrix"] = [
        {
            "pair": r.pair,
            "paths": list(r.paths),
            "endpoint_kinds": list(r.endpoint_kinds),
            "first_ping_s": None if r.first_ping is None else round(r.first_ping, 3),
            "path_s": None if r.direct is None else round(r.direct, 3),
        }
        for r in rows
    ]
    a, b = mesh.nodes["e1"], mesh.nodes["e2"]
    hand_punched(mesh, a, b)
    print(f"throughput e1→e2: {args.rounds} x (rustynet, wireguard-go), {args.seconds} s each")
    targets = {"rustynet": b.overlay_ip, "wireguard_go": WG_OVERLAY[1]}
    runs = alternate_iperf(mesh, a, b, targets, rounds=args.rounds, seconds=args.seconds)
    results["throughput"] = runs
    medians = {
        name: statistics.median(s["mbit_s"] for s in samples if "mbit_s" in s)
        for name, samples in runs.items()
        if any("mbit_s" in s for s in samples)
    }
    results["throughput_median_mbit_s"] = medians
    if medians.get("wireguard_go") and "rustynet" in medians:
        results["throughput_ratio"] = round(medians["rustynet"] / medians["wireguard_go"], 3)


def verdicts(results: dict[str, Any], budgets: dict[str, float]) -> dict[str, str]:
    """ok / missed / not measured per budget."""
    out: dict[str, str] = {}
    ratio = results.get("throughput_ratio")
    out["throughput_ratio_min"] = (
        "not measured"
        if ratio is None
        else "ok"
        if ratio >= budgets["throughput_ratio_min"]
        else "missed"
    )
    easy = next((r for r in results.get("matrix", []) if r["pair"] == "easy-easy"), None)
    took = None if easy is None else easy["path_s"]
    out["easy_easy_direct_max_s"] = (
        "not measured"
        if took is None
        else "ok"
        if took <= budgets["easy_easy_direct_max_s"]
        else "missed"
    )
    return out


def markdown(results: dict[str, Any], verdict: dict[str, str]) -> str:
    """The report: the matrix table, the throughput figures, the budgets."""
    lines = [f"# bench_punch ({results['started_at']}, `{results['command']}`)", ""]
    lines += [
        "| pair | path (a/b) | endpoint kinds (a/b) | first ping | path |",
        "|---|---|---|---|---|",
    ]
    for r in results.get("matrix", []):
        first = "-" if r["first_ping_s"] is None else f"{r['first_ping_s']:.2f} s"
        path = "-" if r["path_s"] is None else f"{r['path_s']:.2f} s"
        lines.append(
            f"| {r['pair']} | {'/'.join(r['paths'])} | {'/'.join(r['endpoint_kinds'])} "
            f"| {first} | {path} |"
        )
    medians = results.get("throughput_median_mbit_s", {})
    lines += ["", "| figure | value | budget | verdict |", "|---|---|---|---|"]
    lines.append(
        f"| easy↔easy TCP, punched path (median) | {medians.get('rustynet', '-')} Mbit/s | | |"
    )
    lines.append(
        f"| same NAT pair, hand-configured wireguard-go (median) "
        f"| {medians.get('wireguard_go', '-')} Mbit/s | | |"
    )
    budgets = results["budgets"]
    lines.append(
        f"| ratio | {results.get('throughput_ratio', '-')} | >= {budgets['throughput_ratio_min']} "
        f"| {verdict['throughput_ratio_min']} |"
    )
    lines.append(
        f"| easy↔easy to direct | see the table | <= {budgets['easy_easy_direct_max_s']} s "
        f"| {verdict['easy_easy_direct_max_s']} |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_punch", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="each iperf3 run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS / "punch.json")
    args = parser.parse_args(argv)
    why = preflight(CONTROL_BIN, RUSTYNETD_BIN)
    if why is not None:
        print(f"bench_punch: cannot run: {why}", file=sys.stderr)
        return 2
    budgets = budgets_of("punch")
    results, failed = lab_run("punch", args, run, budgets, make=new_nat_mesh)
    verdict = verdicts(results, budgets)
    results["verdicts"] = verdict
    write_results(args.output, results, markdown(results, verdict))
    print(markdown(results, verdict))
    return finish("punch", args.output, results, verdict, failed)


if __name__ == "__main__":
    sys.exit(main())
