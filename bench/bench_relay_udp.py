"""UDP relay benchmark (issue 16 "Numbers", relay side): TCP throughput through a
kernel-forwarded UDP relay session vs a direct path, in one run, with plain wireguard-go.

Run as root from the repository root (not part of the test suite):

    .venv/bin/python -m bench.bench_relay_udp
    .venv/bin/python -m bench.bench_relay_udp --seconds 10 --rounds 5

The lab is tests/natlab.py (everything removed at the end, even on failure):

1. Direct: easy↔easy, wireguard-go peered directly (each with the other's router address);
   `iperf3 -c B_overlay -t SECONDS -J` from A to `iperf3 -s -1` in B; ping RTT (median of 20).
   Both hosts sit behind EASY NATs (endpoint-independent mapping keeping the port), so the
   direct path crosses as many NAT routers as the relayed one.
2. Relayed (kernel, then the userspace fallback in a second relay namespace with
   ip_forward off): two hosts behind HARD NATs and a relay host on the internet running the relay's
   UDP side (tests/e2e/udp_relay_helper.py: allocation, bind sockets, nftables forwarding;
   no process in the data path); both sides ask, bind from their tunnel ports, and point
   wireguard-go at their relay address. The same iperf3 run and pings, plus the time from the
   binds to the first ping through the relay.
3. Kernel CPU of the machine (system + softirq jiffies from /proc/stat) per Gbit moved during
   each run, minus an idle baseline of the same length: the forwarding cost shows as the
   difference between the two runs (the machine also runs both wireguard-go and iperf3).

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


def kernel_jiffies() -> float:
    """System + softirq + irq jiffies of the whole machine (/proc/stat `cpu` line)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    values = [float(v) for v in fields]
    return values[2] + values[5] + values[6]  # system, irq, softirq


def iperf(client: Host, server: Host, address: str, seconds: int) -> dict[str, Any]:
    """TCP client → server's `address` (a one-off `iperf3 -s -1`); kernel CPU over the run."""
    listener = server.ns.popen("iperf3", "-s", "-1", "-p", str(IPERF_PORT))
    try:
        time.sleep(0.5)
        before, started = kernel_jiffies(), time.monotonic()
        argv = ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
        done = client.ns.run(*argv, check=False, timeout=seconds + 30)
        wall = time.monotonic() - started
        jiffies = kernel_jiffies() - before
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
        "wall_s": round(wall, 2),
    }


def rtt_ms(peer: Peer, other: Peer) -> float | None:
    """Median of 20 pings over the tunnel, in ms."""
    out = peer.host.ns.run(
        "ping", "-c", "20", "-i", "0.05", "-W", "1", other.overlay, check=False
    ).stdout
    times = [float(w[5:]) for w in out.split() if w.startswith("time=")]
    return round(statistics.median(times), 3) if times else None


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
    return c, d, {"rtt_ms": rtt_ms(c, d)}


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
    return a, b, {"bind_to_first_ping_s": first_ping, "rtt_ms": rtt_ms(a, b)}


def summarize(info: dict[str, Any], runs: list[dict[str, Any]], idle_per_s: float) -> None:
    """Median throughput of the rounds; kernel CPU per Gbit over all of them minus idle."""
    good = [r for r in runs if "mbit_s" in r]
    info["runs_mbit_s"] = [r.get("mbit_s") for r in runs]
    if not good:
        info["error"] = runs[0].get("error") if runs else "no run"
        return
    info["mbit_s"] = round(statistics.median(r["mbit_s"] for r in good), 1)
    gbit = sum(r["bytes"] for r in good) * 8 / 1e9
    busy = sum(r["kernel_cpu_s"] - idle_per_s * r["wall_s"] for r in good)
    info["kernel_cpu_s_per_gbit"] = round(busy / gbit, 3)


def derive(results: dict[str, Any]) -> None:
    """Ratios: medians, and the median of each round's ratio (runs next to each other)."""
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
    if direct.get("rtt_ms") and results["relayed"].get("rtt_ms"):
        results["rtt_added_ms"] = round(results["relayed"]["rtt_ms"] - direct["rtt_ms"], 3)


def table(results: dict[str, Any], budgets: dict[str, float]) -> tuple[str, list[str]]:
    """The markdown table and the budgets missed."""
    direct, relayed, user = results["direct"], results["relayed"], results["userspace"]
    ratio = results.get("throughput_ratio")
    first = relayed.get("bind_to_first_ping_s")
    misses = []
    if ratio is None or ratio < budgets["throughput_ratio_min"]:
        misses.append("throughput_ratio_min")
    if first is None or first > budgets["first_ping_max_s"]:
        misses.append("first_ping_max_s")
    rows = [
        "| figure | direct (easy↔easy) | relay-udp kernel (hard↔hard) | relay-udp userspace "
        "fallback | budget |",
        "|---|---|---|---|---|",
        f"| iperf3 TCP Mbit/s (median) | {direct.get('mbit_s')} | {relayed.get('mbit_s')} "
        f"| {user.get('mbit_s')} | |",
        f"| ratio relay/direct (median of rounds) | | {ratio} | {results.get('userspace_ratio')} "
        f"| kernel ≥ {budgets['throughput_ratio_min']} |",
        f"| ping RTT median ms | {direct.get('rtt_ms')} | {relayed.get('rtt_ms')} "
        f"| {user.get('rtt_ms')} | |",
        f"| RTT added ms (kernel) | | {results.get('rtt_added_ms')} | | |",
        f"| kernel CPU s/Gbit (minus idle) | {direct.get('kernel_cpu_s_per_gbit')} "
        f"| {relayed.get('kernel_cpu_s_per_gbit')} | {user.get('kernel_cpu_s_per_gbit')} | |",
        f"| binds → first relayed ping s | | {first} | {user.get('bind_to_first_ping_s')} "
        f"| kernel ≤ {budgets['first_ping_max_s']} |",
    ]
    return "\n".join(rows) + "\n", misses


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; see the module docstring."""
    parser = argparse.ArgumentParser(prog="bench_relay_udp")
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per path")
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
        "idle_kernel_cpu_s": round(idle_kernel_cpu(args.seconds), 2),
    }
    idle_per_s = results["idle_kernel_cpu_s"] / args.seconds
    workdir = Path(tempfile.mkdtemp(prefix="rustynet-bench-relay-udp-"))
    try:
        with reaped(), NatLab() as nat, contextlib.ExitStack() as stack:
            paths = {
                "direct": direct_path(nat, workdir),
                "relayed": relayed_path(nat, workdir, "kernel", stack),
                "userspace": relayed_path(nat, workdir, "userspace", stack),
            }
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
            for _ in range(args.rounds):  # interleaved: the machine's load hits every path
                for name, (client, server, _info) in paths.items():
                    runs[name].append(iperf(client.host, server.host, server.overlay, args.seconds))
            for name, (_, _, info) in paths.items():
                summarize(info, runs[name], idle_per_s)
                results[name] = info
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    derive(results)
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
