"""UDP relay benchmark (issue 16 "Numbers", relay side): TCP throughput, relay CPU per Gbit and
RTT through a UDP relay session (kernel forwarding and the userspace fallback) vs a direct
path, in one run, with plain wireguard-go; then 1,000 concurrent allocations on a real relay.

Run as root from the repository root (not part of the test suite):

    .venv/bin/python -m bench.bench_relay_udp
    .venv/bin/python -m bench.bench_relay_udp --seconds 10 --rounds 5 --pings 200 --pairs 0

The lab is tests/natlab.py (everything removed at the end, even on failure):

1. Direct: easy↔easy, wireguard-go peered directly (each with the other's router address);
   `iperf3 -c B_overlay -t SECONDS -J` from A to `iperf3 -s -1` in B. Both hosts sit behind
   EASY NATs (endpoint-independent mapping keeping the port), so the direct path crosses as
   many NAT routers as the relayed one.
2. Relayed (kernel, then the userspace fallback in a second relay namespace with
   ip_forward off): two hosts behind HARD NATs and a relay host on the internet running the relay's
   UDP side (tests/e2e/udp_relay_helper.py: allocation, bind sockets, nftables forwarding;
   no process in the data path); both sides ask, bind from their tunnel ports, and point
   wireguard-go at their relay address. The same iperf3 runs, plus the time from the binds
   to the first ping through the relay.
3. RTT: `ping -c PINGS -i 0.05` over each path in interleaved chunks (one per round): median
   and p95, and what each relay mode adds to the direct path's.
4. Relay CPU per Gbit moved (`CPU_METHOD`): the whole machine's system + softirq jiffies
   from /proc/stat over each run minus an idle baseline measured at the start of this
   invocation (kernel forwarding has no process to account; the figure includes both
   wireguard-go peers and iperf3, so the direct path's is printed beside it), and the relay
   process's utime + stime (the userspace fallback's cost; ~0 for kernel forwarding).
5. PAIRS concurrent allocations on a real rustynet-relay (bench/bench_relay_alloc.py, in a
   lab of its own after the first one is gone): relay memory, nft elements and rules, set-up
   and teardown rates.

The three paths are set up first, then measured in ROUNDS interleaved rounds (direct, kernel,
userspace, direct, ...): each path's throughput is the median of its rounds and the ratio is
the median of the per-round ratios (runs next to each other in time), because the machine is
shared and its load moves.

Results: JSON to bench/results/relay_udp.json and a markdown table (printed and written
next to it), each figure next to its budget from bench/budgets.toml [relay_udp].
Exit codes: 0 every budget met, 1 a budget missed or a figure not achieved, 2 cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.bench_relay_alloc import ALLOCATION_CHECKS, allocation_figures, allocations, summary
from bench.lab import process_cpu
from tests.e2e.harness import wait_for
from tests.e2e.udp_relay_lab import (
    TUNNEL_PORT,
    Peer,
    RelayProcess,
    bind,
    peer_with,
    ping,
    reaped,
    wireguard,
)
from tests.natlab import Host, NatKind, NatLab

BENCH_DIR: Final = Path(__file__).parent
OUTPUT: Final = BENCH_DIR / "results" / "relay_udp.json"
IPERF_PORT: Final = 5201


CPU_METHOD: Final = (
    "whole machine: system + softirq jiffies of /proc/stat's cpu line over each iperf3 run, "
    "minus the idle rate measured at the start of this invocation times the run's wall time, "
    "per Gbit received; relay process: utime + stime of /proc/PID/stat over the same runs"
)


def kernel_jiffies() -> float:
    """System + softirq jiffies of the whole machine (/proc/stat `cpu` line)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    values = [float(v) for v in fields]
    return values[2] + values[6]  # system, softirq


def iperf(
    client: Host, server: Host, address: str, seconds: int, relay_pid: int | None = None
) -> dict[str, Any]:
    """TCP client → server's `address` (a one-off `iperf3 -s -1`); kernel CPU over the run,
    and the relay process's CPU when `relay_pid` is given."""
    listener = server.ns.popen("iperf3", "-s", "-1", "-p", str(IPERF_PORT))
    try:
        time.sleep(0.5)
        relay_before = process_cpu(relay_pid) if relay_pid else 0.0
        before, started = kernel_jiffies(), time.monotonic()
        argv = ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
        done = client.ns.run(*argv, check=False, timeout=seconds + 30)
        wall = time.monotonic() - started
        jiffies = kernel_jiffies() - before
        relay_cpu = process_cpu(relay_pid) - relay_before if relay_pid else None
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait(10)
    try:
        end = json.loads(done.stdout)["end"]
    except (ValueError, KeyError):
        return {"error": f"iperf3 exit {done.returncode}: {done.stderr.strip()[:300]}"}
    received = end["sum_received"]
    return {
        "mbit_s": round(received["bits_per_second"] / 1e6, 1),
        "bytes": int(received["bytes"]),
        "kernel_cpu_s": round(jiffies / os.sysconf("SC_CLK_TCK"), 2),
        "relay_cpu_s": None if relay_cpu is None else round(relay_cpu, 2),
        "wall_s": round(wall, 2),
    }


def ping_times(peer: Peer, other: Peer, count: int) -> list[float]:
    """`ping -c COUNT -i 0.05` over the tunnel: the RTTs of the replies, ms."""
    out = peer.host.ns.run(
        "ping", "-c", str(count), "-i", "0.05", "-W", "1", other.overlay,
        check=False, timeout=count * 0.05 + 30,
    ).stdout  # fmt: skip
    return [float(w[5:]) for w in out.split() if w.startswith("time=")]


def rtt_ms(times: list[float], sent: int) -> dict[str, Any]:
    """Median and p95 of the RTTs (ms), replies out of `sent`."""
    if len(times) < 2:
        return {"replies": len(times), "sent": sent}
    p95 = statistics.quantiles(times, n=20, method="inclusive")[18]
    median = statistics.median(times)
    return {"median": round(median, 3), "p95": round(p95, 3), "replies": len(times), "sent": sent}


def idle_kernel_cpu(seconds: float) -> float:
    """Kernel CPU seconds of the idle machine over `seconds`."""
    before = kernel_jiffies()
    time.sleep(seconds)
    return (kernel_jiffies() - before) / os.sysconf("SC_CLK_TCK")


def direct_path(nat: NatLab, workdir: Path) -> tuple[Peer, Peer, dict[str, Any]]:
    """Two hosts behind EASY NATs (the routers keep the tunnel port), wireguard-go peered
    with each other's router address at the same moment: WireGuard's own handshakes punch."""
    c_host, d_host = nat.host(NatKind.EASY), nat.host(NatKind.EASY)
    c = wireguard(nat, c_host, "100.64.78.1", workdir)
    d = wireguard(nat, d_host, "100.64.78.2", workdir)
    assert c_host.site is not None
    assert d_host.site is not None
    peer_with(c, d, f"{d_host.site.router.wan_address}:{TUNNEL_PORT}")
    peer_with(d, c, f"{c_host.site.router.wan_address}:{TUNNEL_PORT}")
    wait_for("direct ping", lambda: ping(c, d), 20, interval=0.0)
    return c, d, {}


def relayed_path(
    nat: NatLab, workdir: Path, mode: str, stack: contextlib.ExitStack
) -> tuple[Peer, Peer, dict[str, Any]]:
    """Two hosts behind hard NATs through a UDP relay session (`mode`: kernel or userspace);
    the relay lives until `stack` closes."""
    relay_host = nat.internet_host()
    relay_host.ns.run("sysctl", "-qw", f"net.ipv4.ip_forward={int(mode == 'kernel')}")
    base = 77 if mode == "kernel" else 79
    a = wireguard(nat, nat.host(NatKind.HARD), f"100.64.{base}.1", workdir)
    b = wireguard(nat, nat.host(NatKind.HARD), f"100.64.{base}.2", workdir)
    relay = RelayProcess(relay_host, mode)
    stack.callback(relay.close)
    ask_a = relay.call(op="ask", node="node-a", peer="node-b", ttl=3600)
    ask_b = relay.call(op="ask", node="node-b", peer="node-a", ttl=3600)
    started = time.monotonic()
    bind(a, relay_host, ask_a, 1)
    bind(b, relay_host, ask_b, 1)
    peer_with(a, b, f"{relay_host.address}:{ask_a['relay_port']}")
    peer_with(b, a, f"{relay_host.address}:{ask_b['relay_port']}")
    wait_for("relayed ping", lambda: ping(a, b), 20, interval=0.0)
    first_ping = round(time.monotonic() - started, 2)
    return a, b, {"bind_to_first_ping_s": first_ping, "relay_pid": relay.proc.pid}


def summarize(info: dict[str, Any], runs: list[dict[str, Any]], idle_per_s: float) -> None:
    """Median throughput of the rounds; kernel CPU per Gbit over all of them minus idle, and
    the relay process's CPU per Gbit."""
    good = [r for r in runs if "mbit_s" in r]
    info["runs_mbit_s"] = [r.get("mbit_s") for r in runs]
    if not good:
        info["error"] = runs[0].get("error") if runs else "no run"
        return
    info["mbit_s"] = round(statistics.median(r["mbit_s"] for r in good), 1)
    gbit = sum(r["bytes"] for r in good) * 8 / 1e9
    busy = sum(r["kernel_cpu_s"] - idle_per_s * r["wall_s"] for r in good)
    info["kernel_cpu_s_per_gbit"] = round(busy / gbit, 3)
    if all(r["relay_cpu_s"] is not None for r in good):
        info["relay_cpu_s_per_gbit"] = round(sum(r["relay_cpu_s"] for r in good) / gbit, 3)


def derive(results: dict[str, Any]) -> None:
    """Ratios: medians, and the median of each round's ratio (runs next to each other); RTT
    and kernel CPU each relay mode adds to the direct path."""
    direct = results["direct"]
    for name, key in (("relayed", "throughput_ratio"), ("userspace", "userspace_ratio")):
        other = results[name]
        rounds = [
            o / d
            for o, d in zip(other["runs_mbit_s"], direct["runs_mbit_s"], strict=True)
            if o and d
        ]
        if rounds:
            results[key] = round(statistics.median(rounds), 3)
            results[f"{key}_rounds"] = [round(r, 3) for r in rounds]
        for stat in ("median", "p95"):
            mine, base = other["rtt_ms"].get(stat), direct["rtt_ms"].get(stat)
            if mine is not None and base is not None:
                other[f"rtt_added_{stat}_ms"] = round(mine - base, 3)
        mine, base = other.get("kernel_cpu_s_per_gbit"), direct.get("kernel_cpu_s_per_gbit")
        if mine is not None and base is not None:
            other["kernel_cpu_s_per_gbit_added"] = round(mine - base, 3)


# (figure, where in the results, budget key, "max" or "min"); a missing figure misses.
Check = tuple[str, tuple[str, ...], str, str]
CHECKS: Final[tuple[Check, ...]] = (
    ("TCP ratio kernel relay / direct", ("throughput_ratio",), "throughput_ratio_min", "min"),
    ("binds → first relayed ping s", ("relayed", "bind_to_first_ping_s"), "first_ping_max_s",
     "max"),
    ("kernel relay: machine kernel CPU s/Gbit", ("relayed", "kernel_cpu_s_per_gbit"),
     "kernel_cpu_s_per_gbit_max", "max"),
    ("userspace relay: relay process CPU s/Gbit", ("userspace", "relay_cpu_s_per_gbit"),
     "userspace_relay_cpu_s_per_gbit_max", "max"),
    ("userspace relay: machine kernel CPU s/Gbit", ("userspace", "kernel_cpu_s_per_gbit"),
     "userspace_kernel_cpu_s_per_gbit_max", "max"),
    ("RTT added median ms, kernel relay", ("relayed", "rtt_added_median_ms"),
     "rtt_added_median_max_ms", "max"),
    ("RTT added p95 ms, kernel relay", ("relayed", "rtt_added_p95_ms"),
     "rtt_added_p95_max_ms", "max"),
    ("RTT added median ms, userspace relay", ("userspace", "rtt_added_median_ms"),
     "userspace_rtt_added_median_max_ms", "max"),
    ("RTT added p95 ms, userspace relay", ("userspace", "rtt_added_p95_ms"),
     "userspace_rtt_added_p95_max_ms", "max"),
    *ALLOCATION_CHECKS,
)  # fmt: skip


def _at(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = results
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def verdicts(results: dict[str, Any], budgets: dict[str, float]) -> list[tuple[str, Any, str]]:
    """(figure, value, "≤ budget ok" / "≥ budget MISSED") per check whose budget exists."""
    out = []
    for label, path, key, kind in CHECKS:
        if key not in budgets:
            continue
        value, bound = _at(results, path), budgets[key]
        met = isinstance(value, int | float) and (
            value <= bound if kind == "max" else value >= bound
        )
        out.append(
            (label, value, f"{'≤' if kind == 'max' else '≥'} {bound} {'ok' if met else 'MISSED'}")
        )
    return out


def table(results: dict[str, Any], budgets: dict[str, float]) -> tuple[str, list[str]]:
    """The markdown tables (the paths side by side, then every budgeted figure) and the
    budgets missed."""
    direct, relayed, user = results["direct"], results["relayed"], results["userspace"]
    paths = (direct, relayed, user)

    def row(label: str, key: str, *, sub: str | None = None) -> str:
        cells = [p.get(key, {}).get(sub) if sub else p.get(key) for p in paths]
        return f"| {label} | " + " | ".join(str(c) for c in cells) + " |"

    rows = [
        "| figure | direct (easy↔easy) | relay-udp kernel (hard↔hard) | relay-udp userspace "
        "fallback |",
        "|---|---|---|---|",
        row("iperf3 TCP Mbit/s (median)", "mbit_s"),
        f"| ratio relay/direct (median of rounds) | | {results.get('throughput_ratio')} "
        f"| {results.get('userspace_ratio')} |",
        row("ping RTT median ms", "rtt_ms", sub="median"),
        row("ping RTT p95 ms", "rtt_ms", sub="p95"),
        row("RTT added median ms", "rtt_added_median_ms"),
        row("RTT added p95 ms", "rtt_added_p95_ms"),
        row("machine kernel CPU s/Gbit (minus idle)", "kernel_cpu_s_per_gbit"),
        row("machine kernel CPU s/Gbit added vs direct", "kernel_cpu_s_per_gbit_added"),
        row("relay process CPU s/Gbit", "relay_cpu_s_per_gbit"),
        row("binds → first relayed ping s", "bind_to_first_ping_s"),
        "",
        f"CPU method: {results['cpu_method']}; idle: {results['idle_kernel_cpu_s']} s over "
        f"{results['idle_seconds']} s. RTT: `ping -c {results['pings']} -i 0.05` per path.",
        "",
        *([summary(results["allocations"]), ""] if "allocations" in results else []),
        "| budgeted figure | value | budget |",
        "|---|---|---|",
    ]
    checked = verdicts(results, budgets)
    rows += [f"| {label} | {value} | {verdict} |" for label, value, verdict in checked]
    misses = [label for label, _, verdict in checked if verdict.endswith("MISSED")]
    return "\n".join(rows) + "\n", misses


def measure_paths(args: argparse.Namespace, results: dict[str, Any], idle_per_s: float) -> None:
    """The three paths in one NAT lab: RTT, then interleaved iperf3 rounds."""
    workdir = Path(tempfile.mkdtemp(prefix="rustynet-bench-relay-udp-"))
    try:
        with reaped(), NatLab() as nat, contextlib.ExitStack() as stack:
            paths = {
                "direct": direct_path(nat, workdir),
                "relayed": relayed_path(nat, workdir, "kernel", stack),
                "userspace": relayed_path(nat, workdir, "userspace", stack),
            }
            # Pings in interleaved chunks too (a path measured alone sees the load of its moment).
            chunks = max(1, min(args.rounds, args.pings))
            times: dict[str, list[float]] = {name: [] for name in paths}
            for chunk in range(chunks):
                count = args.pings // chunks + (chunk < args.pings % chunks)
                for name, (client, server, _) in paths.items():
                    times[name] += ping_times(client, server, count)
            for name, (_, _, info) in paths.items():
                info["rtt_ms"] = rtt_ms(times[name], args.pings)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
            for _ in range(args.rounds):  # interleaved: the machine's load hits every path
                for name, (client, server, info) in paths.items():
                    sample = iperf(
                        client.host, server.host, server.overlay, args.seconds,
                        info.get("relay_pid"),
                    )  # fmt: skip
                    runs[name].append(sample)
                    print(f"  {name}: {sample}", flush=True)
            for name, (_, _, info) in paths.items():
                info.pop("relay_pid", None)
                summarize(info, runs[name], idle_per_s)
                results[name] = info
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; see the module docstring."""
    parser = argparse.ArgumentParser(prog="bench_relay_udp")
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per path")
    parser.add_argument("--pings", type=int, default=100, help="pings per path for the RTT")
    parser.add_argument(
        "--pairs", type=int, default=1000, help="concurrent allocations (0: skip that part)"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_relay_udp: needs root", file=sys.stderr)
        return 2
    missing = [
        p for p in ("iperf3", "wireguard-go", "wg", "nft", "conntrack") if not shutil.which(p)
    ]
    if missing:
        print(f"bench_relay_udp: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    budgets = tomllib.loads((BENCH_DIR / "budgets.toml").read_text())["relay_udp"]
    results: dict[str, Any] = {
        "command": " ".join(["python", "-m", "bench.bench_relay_udp", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "budgets": budgets,
        "cpu_method": CPU_METHOD,
        "pings": args.pings,
        "idle_seconds": args.seconds,
        "idle_kernel_cpu_s": round(idle_kernel_cpu(args.seconds), 2),
    }
    idle_per_s = results["idle_kernel_cpu_s"] / args.seconds
    measure_paths(args, results, idle_per_s)
    derive(results)
    if args.pairs:
        print(f"  {args.pairs} concurrent allocations ...", flush=True)
        results["allocations"] = allocation_figures(allocations(args.pairs))
    text, misses = table(results, budgets)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(f"`{results['command']}`\n\n{text}")
    print(text)
    print(f"wrote {args.output}")
    if misses:
        print(f"bench_relay_udp: budget missed: {', '.join(misses)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
