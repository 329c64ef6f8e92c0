"""Relay benchmark (issue 5 "Numbers"): relay vs direct path throughput between the same two
namespaces in one run, relay CPU per Gbit/s, time to fall over to the relay and to fail back.

Run as root from the repository root (not part of the test suite; `nox -s bench` runs it):

    .venv/bin/python -m bench.bench_relay
    .venv/bin/python -m bench.bench_relay --seconds 5 --failover-runs 1
    .venv/bin/python -m bench.bench_relay --py-spy bench/results/relay-profile

The lab is `tests/e2e/harness.py`'s Mesh (control plane, `rustynet-relay` listed in control.toml,
daemons in network namespaces on one bridge; everything removed at the end, even on failure):

1. A and B join with the switch open; both report path `direct`.
   Underlay: `iperf3 -c B_underlay` from A (no tunnel, context). Direct: `iperf3 -c B_overlay
   -t SECONDS -J` from A's namespace to `iperf3 -s -1` in B's.
2. Direct UDP between A and B is dropped on the switch (nftables `bridge` table). The daemon
   only notices a dead direct session after its 190 s session timeout, so both daemons are
   restarted (state kept: same keys, same namespaces); they come up, the direct attempt times
   out and both report `relay`. The same iperf3 run over the relay path. CPU seconds of the
   `rustynet-relay` process (utime + stime from /proc/PID/stat) during that run / Gbit moved
   (iperf3's received bytes) = CPU-seconds per Gbit; / wall seconds = % of a core. The daemons'
   process trees (rustynetd + wireguard-go) are measured too: the relay path runs through them
   (rustynetd's CPU per Gbit on each end is reported: the bridges), and so are the UDP drops
   of each socket in both namespaces (/proc/net/udp: which socket overflowed).
3. Fail back: the block is removed; time until both report `direct` and A pings B (polled up to
   --failback-timeout; "not achieved" is reported, not raised).
4. Fall over: fresh node pairs joined with their direct UDP already blocked; time from both
   joined to the first ping through the relay (as tests/e2e/test_relay.py), --failover-runs
   times; p50 and max.

Results: JSON to bench/results/relay.json and a markdown table (printed and written to
bench/results/relay.md), each figure next to its budget from bench/budgets.toml [relay].
With --py-spy PREFIX the relay and both daemons are sampled during the relay iperf3 run
(collapsed stacks in PREFIX.<name>.txt) and the top functions by own time are printed; sampling
slows them down, so the throughput of such a run is not the figure to quote.

Exit codes: 0 every budget met, 1 a budget missed or a figure not achieved, 2 cannot run here.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

from bench.lab import (
    finish,
    iperf,
    lab_run,
    machine_busy,
    preflight,
    process_cpu,
    program_pid,
    tree_cpu,
)
from bench.report import RESULTS, budgets_of, start_py_spy, write_results
from tests.e2e.harness import (
    ALLOW_ALL_POLICY,
    PYTHON,
    RELAY_BIN,
    LabError,
    Mesh,
    Node,
    Relay,
    block_direct,
    run_in,
    start_control_with_relay,
    unblock_direct,
    wait_for,
)

PATH_TIMEOUT: Final = 40.0  # a restarted pair: direct_timeout 6 s + relay_timeout 11 s, margin
RELAY_UP_S: Final = 30.0  # as tests/e2e/test_relay.py: first ping through the relay


@contextmanager
def cpu_window(trees: dict[str, int], relay_pid: int | None) -> Iterator[dict[str, Any]]:
    """CPU used while the block runs: per process tree (by process), the relay, the machine."""
    out: dict[str, Any] = {}
    before = {name: tree_cpu(pid) for name, pid in trees.items()}
    relay_before = process_cpu(relay_pid) if relay_pid else 0.0
    busy0, total0 = machine_busy()
    started = time.monotonic()
    yield out
    wall = time.monotonic() - started
    busy1, total1 = machine_busy()
    out["wall_s"] = round(wall, 3)
    out["machine_busy_cores"] = round(
        (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1), 2
    )
    if relay_pid:
        out["relay_cpu_s"] = round(process_cpu(relay_pid) - relay_before, 3)
    for name, pid in trees.items():
        after = tree_cpu(pid)
        used = {p: round(s - before[name].get(p, 0.0), 3) for p, s in after.items()}
        out[f"{name}_cpu_s"] = {p: s for p, s in used.items() if s > 0}


def udp_counters(node: Node) -> dict[str, int]:
    """The `Udp:` counters of the node's namespace (/proc/net/snmp): where datagrams are lost."""
    lines = [ln.split() for ln in run_in(node.ns, "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = (ln[1:] for ln in lines if ln and ln[0] == "Udp:")
    return {n: int(v) for n, v in zip(names, values, strict=True)}


def socket_drops(node: Node) -> dict[str, int]:
    """Drops per UDP socket of the node's namespace (/proc/net/udp `drops`), keyed by the
    socket's local address:port: which socket overflowed (wireguard-go's or a bridge's)."""
    out: dict[str, int] = {}
    for line in run_in(node.ns, "cat", "/proc/net/udp").stdout.splitlines()[1:]:
        fields = line.split()
        address, port = fields[1].split(":")
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
        out[f"{ip}:{int(port, 16)}"] = int(fields[-1])
    return out


@contextmanager
def udp_window(nodes: Sequence[Node]) -> Iterator[dict[str, dict[str, int]]]:
    """UDP error counters that moved in each node's namespace while the block runs, and the
    drops per socket (`drops:ADDRESS:PORT`)."""
    out: dict[str, dict[str, int]] = {}
    before = {n.name: udp_counters(n) for n in nodes}
    drops_before = {n.name: socket_drops(n) for n in nodes}
    yield out
    for node in nodes:
        after = udp_counters(node)
        moved = {k: v - before[node.name][k] for k, v in after.items() if "Errors" in k}
        old = drops_before[node.name]
        drops = {f"drops:{k}": v - old.get(k, 0) for k, v in socket_drops(node).items()}
        out[node.name] = {k: v for k, v in (moved | drops).items() if v}


# --- the relay's own counters --------------------------------------------------------------------

_METRICS_SNIPPET: Final = r"""
import ssl, sys, urllib.request
url, cafile = sys.argv[1:3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False  # self-signed, pinned by being the only trusted certificate
with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
    sys.stdout.write(resp.read().decode())
"""


def relay_metrics(relay: Relay) -> dict[str, float]:
    """`GET /metrics` of the relay (trusting only its own certificate): sample → value."""
    config = tomllib.loads(relay.config.read_text())
    cert = relay.config.parent / config["tls"]["certificate"]
    url = f"https://{config['relay']['listen']}/metrics"
    done = run_in(relay.mesh.control_ns, PYTHON, "-c", _METRICS_SNIPPET, url, str(cert))
    if done.returncode != 0:
        raise LabError(f"relay /metrics failed:\n{done.stderr}")
    lines = [ln for ln in done.stdout.splitlines() if ln and not ln.startswith("#")]
    return {name: float(value) for name, value in (ln.rsplit(" ", 1) for ln in lines)}


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters that moved between two scrapes."""
    moved = {k: after[k] - before.get(k, 0.0) for k in after if "_total" in k}
    return {k.removeprefix("rustynet_relay_"): v for k, v in moved.items() if v}


# --- py-spy ---------------------------------------------------------------------------------------


def top_functions(collapsed: Path, limit: int = 15) -> list[tuple[str, float, float]]:
    """(function, % own samples, % inclusive samples) from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return []
    return [
        (name, 100 * n / total, 100 * inclusive[name] / total) for name, n in own.most_common(limit)
    ]


# --- the phases ----------------------------------------------------------------------------------


def both_report(a: Node, b: Node, path: str) -> bool:
    """Do A and B each report `path` for the other?"""
    return a.path_to(b) == path and b.path_to(a) == path


def restart(node: Node) -> None:
    """Stop the daemon (SIGTERM) and start it again on the same state directory."""
    node.program.stop()
    node.start()


def failover_runs(mesh: Mesh, runs: int) -> list[float]:
    """Fresh pairs joined with direct UDP already blocked: both joined → first relayed ping."""
    samples = []
    for i in range(runs):
        c, d = mesh.add_node(f"fo{i}a"), mesh.add_node(f"fo{i}b")
        block_direct(mesh, c, d, table=f"benchfo{i}")
        mesh.join(c)
        mesh.join(d)
        started = time.monotonic()
        wait_for("a relayed ping", partial(c.ping, d), RELAY_UP_S, interval=0.0)
        samples.append(time.monotonic() - started)
        print(f"  fall over #{i + 1}: {samples[-1]:.2f} s (paths {c.path_to(d)}/{d.path_to(c)})")
        for node in (c, d):  # idle daemons still tick: keep the machine quiet for the next run
            node.program.stop()
    return samples


def failback(mesh: Mesh, a: Node, b: Node, timeout: float) -> dict[str, Any]:
    """Unblock; seconds until both report `direct` and A pings B (None if not within timeout)."""
    unblock_direct(mesh)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if both_report(a, b, "direct") and a.ping(b):
            return {"seconds": round(time.monotonic() - started, 2), "achieved": True}
        time.sleep(0.2)
    return {
        "seconds": None,
        "achieved": False,
        "paths_at_timeout": {"a": a.path_to(b), "b": b.path_to(a)},
        "polled_s": timeout,
    }


def run(args: argparse.Namespace, mesh: Mesh, results: dict[str, Any]) -> None:
    """Every phase, filling `results` as it goes (a failure keeps what was measured)."""
    relay = start_control_with_relay(mesh)
    mesh.control.set_policy(ALLOW_ALL_POLICY, mesh.workdir)
    a, b = mesh.add_node("a"), mesh.add_node("b")
    mesh.join(a)
    mesh.join(b)
    wait_for("A pings B directly", lambda: a.ping(b), RELAY_UP_S, interval=0.0)
    wait_for("A and B report direct", lambda: both_report(a, b, "direct"), PATH_TIMEOUT)
    results["limits"] = tomllib.loads(relay.config.read_text())["limits"]

    print(f"underlay TCP A→B ({args.underlay_seconds} s) ...")
    results["underlay"] = iperf(mesh, a, b, b.underlay_ip, args.underlay_seconds)
    print(f"  {results['underlay']}")
    print(f"direct path TCP A→B over the overlay ({args.seconds} s) ...")
    daemons = {"daemon_a": program_pid(a.program), "daemon_b": program_pid(b.program)}
    with cpu_window(daemons, None) as cpu, udp_window((a, b)) as udp:
        results["direct"] = iperf(mesh, a, b, b.overlay_ip, args.seconds)
    results["direct"] |= {"cpu": cpu, "udp_errors": udp}
    print(f"  {results['direct']}")

    print("blocking direct UDP A↔B, restarting both daemons ...")
    block_direct(mesh, a, b)
    for node in (a, b):
        restart(node)
    _, waited = wait_for("A and B report relay", lambda: both_report(a, b, "relay"), PATH_TIMEOUT)
    wait_for("A pings B through the relay", lambda: a.ping(b), RELAY_UP_S, interval=0.0)
    results["relay_path_up_after_restart_s"] = round(waited, 2)
    print(f"  both report relay {waited:.1f} s after the restart")

    relay_run(args, relay, (a, b), results)

    print(f"unblocking direct UDP: fail back (polled up to {args.failback_timeout:.0f} s) ...")
    results["failback"] = failback(mesh, a, b, args.failback_timeout)
    print(f"  {results['failback']}")

    print(f"fall over: {args.failover_runs} fresh pairs joined with direct UDP blocked ...")
    samples = failover_runs(mesh, args.failover_runs)
    results["failover"] = {
        "runs": len(samples),
        "samples_s": [round(s, 2) for s in samples],
        "p50_s": round(statistics.median(samples), 2),
        "max_s": round(max(samples), 2),
    }


def relay_run(
    args: argparse.Namespace,
    relay: Relay,
    pair: tuple[Node, Node],
    results: dict[str, Any],
) -> None:
    """iperf3 over the relay path with CPU accounting, relay counters and optional py-spy."""
    a, b = pair
    mesh, relay_pid = relay.mesh, program_pid(relay.program)
    print(f"relay path TCP A→B over the overlay ({args.seconds} s) ...")
    daemons = {"daemon_a": program_pid(a.program), "daemon_b": program_pid(b.program)}
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    if args.py_spy is not None:
        args.py_spy.parent.mkdir(parents=True, exist_ok=True)
        for name, pid in {"relay": relay_pid, **daemons}.items():
            out = args.py_spy.with_name(f"{args.py_spy.name}.{name}.txt")
            spies[name] = (start_py_spy(pid, out), out)
        time.sleep(1.0)  # py-spy attaches
    try:
        metrics_before = relay_metrics(relay)
        with cpu_window(daemons, relay_pid) as cpu, udp_window((a, b)) as udp:
            results["relay"] = iperf(mesh, a, b, b.overlay_ip, args.seconds)
        results["relay"] |= {"cpu": cpu, "udp_errors": udp}
        results["relay"]["relay_counters"] = metrics_delta(metrics_before, relay_metrics(relay))
    finally:
        for spy, _ in spies.values():
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy, _ in spies.values():
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
    print(f"  {results['relay']}")
    if spies:
        results["profile"] = {}
        for name, (_, out) in spies.items():
            top = top_functions(out) if out.exists() else []
            results["profile"][name] = [
                {"function": f, "own_percent": round(o, 1), "inclusive_percent": round(i, 1)}
                for f, o, i in top
            ]


# --- figures, budgets and the report -------------------------------------------------------------


def derive(results: dict[str, Any]) -> None:
    """Ratio and relay CPU per Gbit from the raw runs (in place)."""
    direct, relayed = results.get("direct", {}), results.get("relay", {})
    if direct.get("mbit_s") and relayed.get("mbit_s") is not None:
        results["relay_direct_ratio"] = round(relayed["mbit_s"] / direct["mbit_s"], 3)
    if relayed.get("bytes"):
        gbit = relayed["bytes"] * 8 / 1e9
        cpu = relayed["cpu"]
        results["relay_cpu"] = {
            "cpu_s": cpu["relay_cpu_s"],
            "gbit_moved": round(gbit, 3),
            "cpu_s_per_gbit": round(cpu["relay_cpu_s"] / gbit, 2),
            "percent_of_a_core": round(100 * cpu["relay_cpu_s"] / cpu["wall_s"], 1),
        }
        # The daemons' own Python (rustynetd, not its wireguard-go): the bridges on both ends.
        for side in ("a", "b"):
            used = cpu.get(f"daemon_{side}_cpu_s", {})
            own = sum(v for k, v in used.items() if k.startswith("rustynetd["))
            results["relay_cpu"][f"daemon_{side}_cpu_s_per_gbit"] = round(own / gbit, 2)


def verdicts(results: dict[str, Any], budgets: dict[str, float]) -> dict[str, str]:
    """ "ok" / "MISS" / "not achieved" per budgeted figure."""

    def check(value: float | None, ok: Callable[[float], bool]) -> str:
        if value is None:
            return "not achieved"
        return "ok" if ok(value) else "MISS"

    failover = results.get("failover", {})
    return {
        "relay_throughput_ratio": check(
            results.get("relay_direct_ratio"), lambda v: v >= budgets["relay_throughput_ratio_min"]
        ),
        "relay_cpu_per_gbit": check(
            results.get("relay_cpu", {}).get("cpu_s_per_gbit"),
            lambda v: v <= budgets["relay_cpu_s_per_gbit_max"],
        ),
        "failover": check(failover.get("max_s"), lambda v: v <= budgets["failover_max_s"]),
        "failback": check(
            results.get("failback", {}).get("seconds"), lambda v: v <= budgets["failback_max_s"]
        ),
    }


def table(results: dict[str, Any], budgets: dict[str, float], verdict: dict[str, str]) -> str:
    """The markdown report: figure | measured | target | verdict."""

    def mbit(run: dict[str, Any]) -> str:
        if "mbit_s" not in run:
            return f"failed: {run['error']}" if "error" in run else "not run"
        return f"{run['mbit_s']:,.0f} Mbit/s"

    ratio = results.get("relay_direct_ratio")
    cpu = results.get("relay_cpu", {})
    failover = results.get("failover", {})
    back = results.get("failback", {})
    back_text = "not run" if not back else "not achieved"
    if back.get("achieved"):
        back_text = f"{back['seconds']:.1f} s"
    runs = failover.get("runs", 0)
    rows = [
        ("underlay TCP A→B (veth, no tunnel)", mbit(results.get("underlay", {})), "context", ""),
        ("direct path TCP A→B (overlay)", mbit(results.get("direct", {})), "baseline", ""),
        ("relay path TCP A→B (overlay)", mbit(results.get("relay", {})), "", ""),
        (
            "relay / direct throughput",
            "—" if ratio is None else f"{ratio:.2f}x",
            f"≥ {budgets['relay_throughput_ratio_min']}x",
            verdict["relay_throughput_ratio"],
        ),
        (
            "relay CPU per Gbit moved (WSS)",
            f"{cpu['cpu_s_per_gbit']:.2f} CPU-s/Gbit" if cpu else "—",
            f"≤ {budgets['relay_cpu_s_per_gbit_max']} CPU-s/Gbit",
            verdict["relay_cpu_per_gbit"],
        ),
        (
            "rustynetd CPU per Gbit moved, sender / receiver (the bridges)",
            (
                f"{cpu['daemon_a_cpu_s_per_gbit']:.2f} / {cpu['daemon_b_cpu_s_per_gbit']:.2f}"
                " CPU-s/Gbit"
            )
            if cpu
            else "—",
            "report",
            "",
        ),
        (
            "relay CPU at the measured rate",
            f"{cpu['percent_of_a_core']:.0f} % of a core" if cpu else "—",
            "report",
            "",
        ),
        (
            f"fall over: joined, direct blocked → relayed ping (p50 / max of {runs})",
            f"{failover['p50_s']:.1f} s / {failover['max_s']:.1f} s" if failover else "not run",
            f"max ≤ {budgets['failover_max_s']:.0f} s",
            verdict["failover"],
        ),
        (
            "fail back: unblocked → both direct + ping",
            back_text,
            f"≤ {budgets['failback_max_s']:.0f} s",
            verdict["failback"],
        ),
    ]
    lines = ["| figure | measured | target | |", "|---|---|---|---|"]
    lines += [f"| {f} | {m} | {t} | {v} |" for f, m, t, v in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10, help="each overlay iperf3 run")
    parser.add_argument("--underlay-seconds", type=int, default=5)
    parser.add_argument("--failover-runs", type=int, default=3)
    parser.add_argument("--failback-timeout", type=float, default=60.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "relay.json")
    parser.add_argument(
        "--py-spy", type=Path, metavar="PREFIX", help="sample relay + daemons in the relay run"
    )
    args = parser.parse_args(argv)
    problem = preflight(RELAY_BIN)
    if problem is not None:
        print(f"bench_relay: {problem}", file=sys.stderr)
        return 2
    budgets = budgets_of("relay")
    results, failed = lab_run("relay", args, run, budgets)
    derive(results)
    verdict = verdicts(results, budgets)
    results["verdicts"] = verdict
    report = table(results, budgets, verdict)
    write_results(args.output, results, report)
    print(f"\n{report}")
    for name, top in results.get("profile", {}).items():
        print(f"py-spy {name}: top functions by own samples (own % / inclusive %)")
        for row in top:
            print(f"  {row['own_percent']:5.1f} {row['inclusive_percent']:5.1f}  {row['function']}")
    return finish("relay", args.output, results, verdict, failed)


if __name__ == "__main__":
    sys.exit(main())
