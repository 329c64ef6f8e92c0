"""Policy compile benchmark: full compile and one-node changes at 1k and 10k nodes, 1k rules.

Run standalone (not part of the test suite):

    .venv/bin/python -m bench.bench_policy_compile                # 1k and 10k nodes
    .venv/bin/python -m bench.bench_policy_compile --nodes 10000 --profile full

Targets (docs/threat-model/performance-budgets.md, bench/budgets.toml
[policy_compile]): 10,000 nodes x 1,000 rules
<= 1 s full (index + every view), <= 10 ms per one-node change (the index update, p95 of each
kind; the update plus the woken views is reported beside it). Figures go to
bench/results/policy_compile.json and .md next to their budgets; exit status 1 on a miss.

Workload: a segmentation policy of the shape a large tailnet has. N/20 tags (each node 1-2),
100 groups (10 node names + 1 tag each), 50 hosts; 1,000 rules, most tag/group -> tag with
ports, a few host/CIDR and node-name selectors, plus the usual infrastructure rules that touch
every node (admins -> *:22, * -> tag:dns:53/udp, tag:monitoring -> *:9100). An all-to-all
rule (`* -> *:*`) makes every view hold every node: that output is N^2 and is measured
separately (`--all-to-all`).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import ipaddress
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import RESULTS, budgets_of, write_results

from rustynet.domain.policy import Policy, PolicyNode
from rustynet.domain.policy_compile import PolicyIndex, compile_policy
from rustynet.domain.scope import Tag

BASE = int(ipaddress.ip_address("100.64.0.0"))


def address(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(BASE + 1 + i)


def make_workload(
    n_nodes: int, n_rules: int, *, seed: int = 7, all_to_all: bool = False
) -> tuple[dict[str, Any], list[PolicyNode]]:
    rng = random.Random(seed)
    n_tags = max(50, n_nodes // 20)
    tags = [f"tag:t{i}" for i in range(n_tags)] + ["tag:dns", "tag:monitoring"]
    nodes = []
    for i in range(n_nodes):
        mine = {rng.choice(tags[:n_tags]) for _ in range(rng.choice((1, 1, 2)))}
        if i < 3:
            mine.add("tag:dns")
        elif i < 8:
            mine.add("tag:monitoring")
        nodes.append(
            PolicyNode(
                f"n{i}",
                f"node-{i}",
                frozenset(Tag(t) for t in mine),
                (address(i),),
            )
        )
    groups = {
        f"group:g{g}": [f"node-{rng.randrange(n_nodes)}" for _ in range(10)] + [rng.choice(tags)]
        for g in range(100)
    }
    groups["group:admins"] = [f"node-{i}" for i in range(10, 30)]
    hosts = {f"h{i}": f"{address(rng.randrange(n_nodes)).network_address}/32" for i in range(40)}
    hosts.update({f"net{i}": f"100.64.{i}.0/24" for i in range(10)})

    def src_sel() -> str:
        x = rng.random()
        if x < 0.6:
            return rng.choice(tags[:n_tags])
        if x < 0.9:
            return f"group:g{rng.randrange(100)}"
        return rng.choice(list(hosts))

    def dst_sel() -> str:
        x = rng.random()
        if x < 0.8:
            sel = rng.choice(tags[:n_tags])
        elif x < 0.9:
            sel = rng.choice(list(hosts))
        else:
            sel = f"node-{rng.randrange(n_nodes)}"
        ports = rng.choice(("22", "80,443", "5432", "8000-8100", "*"))
        return f"{sel}:{ports}"

    acls: list[dict[str, Any]] = [
        {"action": "accept", "src": ["group:admins"], "dst": ["*:22"], "proto": "tcp"},
        {"action": "accept", "src": ["*"], "dst": ["tag:dns:53"], "proto": "udp"},
        {"action": "accept", "src": ["tag:monitoring"], "dst": ["*:9100"], "proto": "tcp"},
    ]
    if all_to_all:
        acls.append({"action": "accept", "src": ["*"], "dst": ["*:*"]})
    while len(acls) < n_rules:
        acls.append(
            {
                "action": "accept",
                "src": [src_sel() for _ in range(rng.choice((1, 2)))],
                "dst": [dst_sel() for _ in range(rng.choice((1, 2)))],
                "proto": rng.choice(("tcp", "tcp", "udp", "any")),
            }
        )
    document = {
        "groups": groups,
        "tagOwners": {t: ["group:admins"] for t in tags},
        "hosts": hosts,
        "acls": acls,
    }
    return document, nodes


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"median {ms(statistics.median(ordered))}  p95 {ms(p95)}  max {ms(ordered[-1])}"


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[int(0.95 * (len(ordered) - 1))]


def one_node_changes(
    index: PolicyIndex, nodes: list[PolicyNode], rng: random.Random
) -> dict[str, float]:
    """Per change kind: p95 ms of the index update (the budgeted compile step) and of the update
    plus building every woken view (`<kind>+views`); prints the distributions."""
    tags = sorted({t for n in nodes for t in n.tags})
    results: dict[str, tuple[list[float], list[float], list[int]]] = {}

    def record(kind: str, change: Callable[[], frozenset[str]]) -> None:
        spent, woken = timed(change)
        build, _ = timed(lambda: [index.view(i) for i in woken if i in index])
        bucket = results.setdefault(kind, ([], [], []))
        bucket[0].append(spent)
        bucket[1].append(spent + build)
        bucket[2].append(len(woken))

    next_id = len(nodes)
    for _ in range(50):
        victim = index.node(f"n{rng.randrange(8, len(nodes))}")
        retagged = PolicyNode(
            victim.id, victim.name, frozenset({rng.choice(tags)}), victim.addresses
        )
        record("retag", lambda node=retagged: index.put(node))
        moved = PolicyNode(victim.id, victim.name, retagged.tags, (address(next_id),))
        next_id += 1
        record("readdress", lambda node=moved: index.put(node))
        fresh = PolicyNode(
            f"n{next_id}", f"node-{next_id}", frozenset({rng.choice(tags)}), (address(next_id),)
        )
        next_id += 1
        record("add", lambda node=fresh: index.put(node))
        record("remove", lambda node_id=fresh.id: index.remove(node_id))
    for kind, (compile_only, with_views, woken) in results.items():
        print(f"  one-node {kind:9s} index update: {summary(compile_only)}")
        print(f"  one-node {kind:9s} + woken views: {summary(with_views)}")
        print(f"  one-node {kind:9s} woken nodes:   median {statistics.median(woken):.0f}")
    out = {kind: round(p95(only) * 1000, 3) for kind, (only, _, _) in results.items()}
    out |= {f"{k}+views": round(p95(views) * 1000, 3) for k, (_, views, _) in results.items()}
    return out


def run(
    n_nodes: int, n_rules: int, *, all_to_all: bool, profile: str | None, freeze: bool
) -> dict[str, Any]:
    document, nodes = make_workload(n_nodes, n_rules, all_to_all=all_to_all)
    if freeze:  # what the control plane does after start-up: no gen-2 pauses
        gc.collect()
        gc.freeze()
    extra = (" + all-to-all" if all_to_all else "") + ("" if freeze else ", no gc.freeze")
    print(f"{n_nodes} nodes, {n_rules} rules{extra}:")
    spent, policy = timed(lambda: Policy.parse(document))
    print(f"  parse + validate document:      {ms(spent)}  ({len(policy.grants)} grants)")
    if profile == "full":
        profiler = cProfile.Profile()
        profiler.enable()
        compile_policy(policy, nodes).views()
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(15)
    spent, index = timed(lambda: compile_policy(policy, nodes))
    print(f"  full compile (index):           {ms(spent)}")
    built, views = timed(index.views)
    peers = statistics.mean(len(v.visible_peers) for v in views.values())
    rules = statistics.mean(len(v.inbound) for v in views.values())
    print(f"  + build every view:             {ms(built)}  total {ms(spent + built)}")
    print(f"  views: mean {peers:.0f} visible peers, {rules:.1f} inbound rules")
    rng = random.Random(11)
    if profile == "change":
        profiler = cProfile.Profile()
        profiler.enable()
        changes = one_node_changes(index, nodes, rng)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(15)
    else:
        changes = one_node_changes(index, nodes, rng)
    return {
        "nodes": n_nodes,
        "rules": n_rules,
        "full_compile_ms": round((spent + built) * 1000, 1),
        "mean_visible_peers": round(peers, 1),
        "one_node_change_p95_ms": changes,
    }


def verdicts(runs: list[dict[str, Any]], budgets: dict[str, float]) -> list[dict[str, Any]]:
    """Each budgeted figure (a node count without budget lines gets none)."""
    out = []
    for r in runs:
        n = r["nodes"]
        checks = [(f"full compile ms, N={n}", r["full_compile_ms"], f"full_compile_max_ms_{n}")]
        checks += [
            (f"one-node {kind} p95 ms, N={n}", value, f"one_node_change_max_ms_{n}")
            for kind, value in r["one_node_change_p95_ms"].items()
            if not kind.endswith("+views")  # reported, not budgeted: the fan-out builds these
        ]
        for figure, value, key in checks:
            target = budgets.get(key)
            verdict = "no budget" if target is None else "ok" if value <= target else "MISS"
            out.append({"figure": figure, "value": value, "target": target, "verdict": verdict})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, action="append")
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--all-to-all", action="store_true")
    parser.add_argument("--profile", choices=("full", "change"))
    parser.add_argument("--no-gc-freeze", action="store_true", help="leave the inventory to gc")
    parser.add_argument("--output", type=Path, default=RESULTS / "policy_compile.json")
    args = parser.parse_args()
    runs = [
        run(
            n,
            args.rules,
            all_to_all=args.all_to_all,
            profile=args.profile,
            freeze=not args.no_gc_freeze,
        )
        for n in args.nodes or [1000, 10000]
    ]
    budgets = budgets_of("policy_compile")
    if args.rules != 1000 or args.all_to_all:
        budgets = {}  # the budgets are for the 1,000-rule segmentation workload
    figures = verdicts(runs, budgets)
    lines = [
        "# Peer-map compile",
        "",
        f"`python -m bench.bench_policy_compile {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        "| figure | measured | target | verdict |",
        "|---|---|---|---|",
    ]
    for f in figures:
        target = "—" if f["target"] is None else f"<= {f['target']:g}"
        lines.append(f"| {f['figure']} | {f['value']:g} | {target} | {f['verdict']} |")
    report = "\n".join(lines) + "\n"
    write_results(args.output, {"runs": runs, "budgets": budgets, "figures": figures}, report)
    print(report)
    return 1 if any(f["verdict"] == "MISS" for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
