"""Node benchmark (issue 6, bench/ items 1-3): the daemon against its baselines, all measured in
ONE invocation between the same two namespaces.

Run as root from the repository root (not part of the test suite; `nox -s bench` runs it):

    .venv/bin/python -m bench.bench_node
    .venv/bin/python -m bench.bench_node --quick        # 5 s iperf3, 5 start runs, 20 s idle
    .venv/bin/python -m bench.bench_node --py-spy bench/results/node-profile  # + a profiled start

The lab is `tests/e2e/harness.py`'s Mesh: a control plane and two enrolled `rustynetd` (userspace
backend: wireguard-go) in namespaces A and B on one bridge. Beside them, in the SAME namespaces:

- baseline 1: hand-configured wireguard-go (`wireguard-go -f IF`, keys from `wg genkey`, `wg set`,
  `ip addr/link`; overlay 100.127.0.1 ↔ .2, UDP 51820);
- baseline 2: Nebula 1.6 from Debian (`nebula-cert ca/sign`, no lighthouse, a static_host_map
  with both hosts, `punchy` off; overlay 100.126.0.1 ↔ .2, UDP 4242).

Figures:
1. Direct-path throughput: `iperf3 -c PEER -t SECONDS -J` from A to `iperf3 -s -1` in B over the
   Rustynet overlay and over baseline 1, alternating (ours, baseline) `--rounds` times; ratio of
   the medians. Target ≥ 0.95x.
2. Start → first ping: with B up, A's program is started (process spawn = t0) while an ICMP
   prober in A's namespace sends an echo to B's overlay address every 10 ms (raw socket, send
   errors ignored: before the interface and route exist) and stamps the first echo reply
   (CLOCK_MONOTONIC is shared by all namespaces). rustynetd (enrolled: its saved peer map, keys
   unlocked from the Argon2id file key store) and Nebula alternate, `--start-runs` times each;
   p50 / max. Target ≤ 1 s for us (checked on p50 and on max); Nebula is reported beside it.
3. Idle: every program left running (rustynetd A and B with their wireguard-go, baseline 1's
   wireguard-go, Nebula A and B), nobody sending, for `--idle-seconds` (60; 20 with --quick):
   RSS (VmRSS, sampled each second: last and max) and CPU (utime + stime from /proc, in % of one
   core over the window). Targets for rustynetd itself: ≤ 50 MB, ≤ 0.5 % of a core.

First the rustynet package is byte-compiled where it is imported from (as `pip install` does on
a deployed node) and PYTHONDONTWRITEBYTECODE is dropped for the programs started: a daemon that
compiles its modules from source at every start is not what a node runs.
With --py-spy PREFIX one more start of A's daemon runs under `py-spy record` (collapsed stacks in
PREFIX.start.txt; the top functions by inclusive share are printed): the start-up profile.

Results: JSON to bench/results/node.json and a markdown table (printed and written to
bench/results/node.md), each figure next to its baseline and budget (bench/budgets.toml [node]).
If Nebula is not installed the Nebula figures say so and the run still measures ours.

Exit codes: 0 every budget met, 1 a budget missed or a figure not achieved, 2 cannot run here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from bench.lab import (
    alternate_iperf,
    finish,
    lab_run,
    machine_busy,
    preflight,
    process_cpu,
    program_pid,
    tree_cpu,
)
from bench.report import RESULTS, budgets_of, write_results
from tests.e2e.harness import (
    ALLOW_ALL_POLICY,
    BIN,
    PYTHON,
    LabError,
    Mesh,
    Node,
    Program,
    run_in,
    wait_for,
)
from tests.netns import Namespace

PAGE: Final = os.sysconf("SC_PAGE_SIZE")
MB: Final = 1024 * 1024
WG_PORT: Final = 51820
WG_OVERLAY: Final = ("100.127.0.1", "100.127.0.2")
NEBULA_PORT: Final = 4242
NEBULA_OVERLAY: Final = ("100.126.0.1", "100.126.0.2")
NEBULA_PREFIX: Final = 16
FIRST_PING_TIMEOUT: Final = 20.0
DAEMON_READY: Final = "rustynetd: ready;"
NEBULA_READY: Final = "Nebula interface is active"

# Runs inside a namespace: ICMP echo to argv[1] every 10 ms until a reply (or argv[2] seconds);
# prints `ready` once its socket is open and `reply <CLOCK_MONOTONIC>` at the first reply.
_PROBER: Final = r"""
import os, select, socket, struct, sys, time
dst, limit = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def echo(seq):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"rustynet-bench"
    total = sum(struct.unpack(f"!{len(body) // 2}H", body))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]
print("ready", flush=True)
end, seq = time.monotonic() + limit, 0
while time.monotonic() < end:
    seq = (seq + 1) & 0xFFFF
    try:
        sock.sendto(echo(seq), (dst, 0))
    except OSError:
        pass
    ready, _, _ = select.select([sock], [], [], 0.01)
    while ready:
        data, (src, _) = sock.recvfrom(2048)
        at = time.monotonic()
        head = (data[0] & 0x0F) * 4
        if src == dst and data[head] == 0 and data[head + 4 : head + 6] == struct.pack("!H", ident):
            print(f"reply {at:.6f} seq {seq}", flush=True)
            sys.exit(0)
        ready, _, _ = select.select([sock], [], [], 0)
print("timeout", flush=True)
sys.exit(1)
"""


# --- /proc ---------------------------------------------------------------------------------------


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of one process, MiB (VmRSS; RssAnon / RssFile for its two parts)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LabError(f"no {field} for {pid}")


def children_named(root: int, comm: str) -> list[int]:
    """Live descendants of `root` whose comm is `comm` (rustynetd's wireguard-go)."""
    return [int(k.split("[")[1][:-1]) for k in tree_cpu(root) if k.split("[")[0] == comm]


# --- baseline 1: hand-configured wireguard-go ----------------------------------------------------


class WgGoPair:
    """wireguard-go in A and B configured by hand: the throughput and idle baseline."""

    def __init__(self, mesh: Mesh, a: Node, b: Node) -> None:
        self.mesh = mesh
        self.ends = ((a, WG_OVERLAY[0]), (b, WG_OVERLAY[1]))
        self.interfaces = {a.name: mesh.lab.interface_name(), b.name: mesh.lab.interface_name()}
        self.programs: dict[str, Program] = {}

    def start(self) -> None:
        keys: dict[str, tuple[Path, str]] = {}
        for node, _ in self.ends:
            private = self.mesh.workdir / f"wg-{node.name}.key"
            private.write_text(_ok(run_in(node.ns, "wg", "genkey")).strip() + "\n")
            private.chmod(0o600)
            public = _ok(run_in(node.ns, "wg", "pubkey", stdin=private.read_text())).strip()
            keys[node.name] = (private, public)
            iface = self.interfaces[node.name]
            program = Program(
                node.ns, ["wireguard-go", "-f", iface], self.mesh.workdir / f"wg-{node.name}.log"
            )
            self.mesh.servers.append(program)
            program.start()
            self.programs[node.name] = program
            sock = Path(f"/var/run/wireguard/{iface}.sock")
            wait_for(f"wireguard-go {iface} UAPI socket", sock.exists, 10)
        for (node, address), (peer, peer_address) in (self.ends, self.ends[::-1]):
            iface = self.interfaces[node.name]
            _ok(
                run_in(
                    node.ns, "wg", "set", iface,
                    "private-key", str(keys[node.name][0]),
                    "listen-port", str(WG_PORT),
                    "peer", keys[peer.name][1],
                    "allowed-ips", f"{peer_address}/32",
                    "endpoint", f"{peer.underlay_ip}:{WG_PORT}",
                )
            )  # fmt: skip
            _ok(run_in(node.ns, "ip", "addr", "add", f"{address}/32", "dev", iface))
            _ok(run_in(node.ns, "ip", "link", "set", iface, "up"))
            _ok(run_in(node.ns, "ip", "route", "add", f"{peer_address}/32", "dev", iface))
        a = self.ends[0][0]
        wait_for(
            "A pings B over hand-configured wireguard-go", partial_ping(a.ns, WG_OVERLAY[1]), 10
        )

    def pid(self, node: Node) -> int:
        return program_pid(self.programs[node.name])


# --- baseline 2: Nebula --------------------------------------------------------------------------


class NebulaPair:
    """Nebula hosts in A and B: no lighthouse, static_host_map with both hosts, punchy off."""

    def __init__(self, mesh: Mesh, a: Node, b: Node) -> None:
        self.mesh = mesh
        self.dir = mesh.workdir / "nebula"
        self.dir.mkdir()
        self.ends = ((a, NEBULA_OVERLAY[0]), (b, NEBULA_OVERLAY[1]))
        self.programs: dict[str, Program] = {}

    def configure(self) -> None:
        d = self.dir
        _ok_local(["nebula-cert", "ca", "-name", "rustynet-bench", "-out-crt", str(d / "ca.crt"),
                   "-out-key", str(d / "ca.key")])  # fmt: skip
        static_map = {ip: [f"{n.underlay_ip}:{NEBULA_PORT}"] for n, ip in self.ends}
        for node, address in self.ends:
            crt, key = d / f"{node.name}.crt", d / f"{node.name}.key"
            _ok_local(["nebula-cert", "sign", "-name", node.name,
                       "-ip", f"{address}/{NEBULA_PREFIX}",
                       "-ca-crt", str(d / "ca.crt"), "-ca-key", str(d / "ca.key"),
                       "-out-crt", str(crt), "-out-key", str(key)])  # fmt: skip
            config = {
                "pki": {"ca": str(d / "ca.crt"), "cert": str(crt), "key": str(key)},
                "static_host_map": static_map,
                "lighthouse": {"am_lighthouse": False, "interval": 60, "hosts": []},
                "listen": {"host": "0.0.0.0", "port": NEBULA_PORT},
                "punchy": {"punch": False},
                "relay": {"am_relay": False, "use_relays": False},
                "tun": {"disabled": False, "dev": self.mesh.lab.interface_name()},
                "logging": {"level": "info", "format": "text"},
                "firewall": {
                    "outbound": [{"port": "any", "proto": "any", "host": "any"}],
                    "inbound": [{"port": "any", "proto": "any", "host": "any"}],
                },
            }
            # JSON is YAML: Nebula reads it as its config.
            (d / f"{node.name}.yml").write_text(json.dumps(config, indent=2) + "\n")
            program = Program(
                node.ns,
                ["nebula", "-config", str(d / f"{node.name}.yml")],
                self.mesh.workdir / f"nebula-{node.name}.log",
            )
            self.mesh.servers.append(program)
            self.programs[node.name] = program

    def program(self, node: Node) -> Program:
        return self.programs[node.name]


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    if done.returncode != 0:
        raise LabError(f"{done.args[4:]} → {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _ok_local(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{argv[:2]} → {done.returncode}: {done.stderr.strip()}")


def partial_ping(ns: Namespace, address: str) -> Callable[[], bool]:
    """One ICMP echo (1 s wait) from `ns` to `address`."""

    def probe() -> bool:
        return run_in(ns, "ping", "-c1", "-n", "-W1", address).returncode == 0

    return probe


# --- start → first ping --------------------------------------------------------------------------


def start_to_ping(
    mesh: Mesh, ns: Namespace, program: Program, target: str, ready_marker: str
) -> dict[str, Any]:
    """Start `program` (stopped) with a prober in `ns` aimed at `target`: seconds from the spawn
    to the first echo reply, and to the program's `ready_marker` log line (polled every 10 ms)."""
    log = mesh.workdir / f"prober-{time.monotonic_ns()}.log"
    prober = Program(ns, [PYTHON, "-c", _PROBER, target, str(FIRST_PING_TIMEOUT)], log)
    mesh.servers.append(prober)
    prober.start()
    prober.wait_log("ready", timeout=10)
    readies = program.log_text().count(ready_marker)
    ready_at: list[float] = []
    started = time.monotonic()
    program.start()

    def probe() -> str | None:
        if not ready_at and program.log_text().count(ready_marker) > readies:
            ready_at.append(time.monotonic())
        line = next((ln for ln in prober.log_text().splitlines() if ln.startswith("reply")), None)
        return line or (None if prober.running else "exit")

    try:
        line, _ = wait_for(f"first ping to {target}", probe, FIRST_PING_TIMEOUT + 5, interval=0.01)
    finally:
        prober.kill()
    ready = {"ready_s": round(ready_at[0] - started, 3)} if ready_at else {}
    if line == "exit":
        return {"seconds": None, "error": prober.tail(3)} | ready
    return {"seconds": round(float(line.split()[1]) - started, 3)} | ready


def start_runs(
    mesh: Mesh, a: Node, b: Node, nebula: NebulaPair | None, runs: int
) -> dict[str, list[dict[str, Any]]]:
    """A's daemon (enrolled, B up) and A's Nebula (B's up) started in turn, `runs` times each."""
    out: dict[str, list[dict[str, Any]]] = {"rustynetd": [], "nebula": []}
    if nebula is not None:
        nebula.program(b).start()
        nebula.program(b).wait_log(NEBULA_READY, timeout=10)
    for i in range(runs):
        a.program.stop()
        time.sleep(0.5)  # let B's machine settle after A's teardown
        ours = start_to_ping(mesh, a.ns, a.program, b.overlay_ip, DAEMON_READY)
        out["rustynetd"].append(ours)
        line = f"  run {i + 1}: rustynetd {_fmt_s(ours.get('seconds'))}"
        line += f" (ready {_fmt_ready(ours)})"
        if nebula is not None:
            program = nebula.program(a)
            program.stop()
            time.sleep(0.5)
            theirs = start_to_ping(mesh, a.ns, program, NEBULA_OVERLAY[1], NEBULA_READY)
            out["nebula"].append(theirs)
            line += f", nebula {_fmt_s(theirs.get('seconds'))}"
            line += f" (ready {_fmt_ready(theirs)})"
        print(line)
    wait_for("A's daemon answers", lambda: a.cli("status", "--json").returncode == 0, 10)
    return out


def _fmt_s(value: float | None) -> str:
    return "no ping" if value is None else f"{value * 1000:.0f} ms"


def _fmt_ready(run: dict[str, Any]) -> str:
    ready = run.get("ready_s")
    return "after the ping" if ready is None else f"{ready * 1000:.0f} ms"


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 / max over the runs that pinged; how many did not."""
    values = [s["seconds"] for s in samples if s.get("seconds") is not None]
    if not values:
        return {"runs": len(samples), "failed": len(samples)}
    readies = [s["ready_s"] for s in samples if s.get("ready_s") is not None]
    return {
        "runs": len(samples),
        "failed": len(samples) - len(values),
        "samples_s": values,
        "p50_s": round(statistics.median(values), 3),
        "max_s": round(max(values), 3),
        "ready_p50_s": round(statistics.median(readies), 3) if readies else None,
    }


# --- a profiled start ----------------------------------------------------------------------------


def profile_start(mesh: Mesh, a: Node, b: Node, prefix: Path) -> dict[str, Any]:
    """One more start of A's daemon under `py-spy record` (CPU samples, all threads, 250 Hz):
    collapsed stacks in PREFIX.start.txt and the top functions by inclusive share. Sampling
    slows the daemon down: this start's time is not a figure to quote."""
    a.program.stop()
    time.sleep(0.5)
    out = prefix.with_name(f"{prefix.name}.start.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    argv = [spy, "record", "--format", "raw", "--rate", "250", "-o", str(out), "--"]
    program = Program(a.ns, [*argv, *a.program.argv], mesh.workdir / "a-py-spy.log")
    mesh.servers.append(program)
    timing = start_to_ping(mesh, a.ns, program, b.overlay_ip, DAEMON_READY)
    time.sleep(0.5)
    program.signal(signal.SIGINT)  # the daemon stops; py-spy writes its file
    if program.proc is not None:
        try:
            program.proc.wait(30)
        except subprocess.TimeoutExpired:
            program.kill()
    a.program.start()
    top = inclusive_top(out) if out.exists() else []
    return {"timing": timing, "collapsed_stacks": str(out), "top_inclusive": top}


def inclusive_top(collapsed: Path, limit: int = 40) -> list[dict[str, Any]]:
    """Functions by share of all samples with them on the stack (py-spy collapsed stacks)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return [
        {
            "function": name,
            "inclusive_percent": round(100 * n / total, 1),
            "own_percent": round(100 * own[name] / total, 1),
            "samples": n,
        }
        for name, n in inclusive.most_common(limit)
    ]


# --- idle ----------------------------------------------------------------------------------------


def idle_window(processes: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """RSS (last, max; MiB) and CPU (% of one core) of each process over `seconds` of idling."""
    cpu0 = {name: process_cpu(pid) for name, pid in processes.items()}
    peak = {name: rss_mb(pid) for name, pid in processes.items()}
    busy0, total0 = machine_busy()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        for name, pid in processes.items():
            peak[name] = max(peak[name], rss_mb(pid))
    wall = time.monotonic() - started
    busy1, total1 = machine_busy()
    out: dict[str, dict[str, float]] = {}
    for name, pid in processes.items():
        used = process_cpu(pid) - cpu0[name]
        out[name] = {
            "rss_mb": round(rss_mb(pid), 1),
            "rss_anon_mb": round(rss_mb(pid, "RssAnon"), 1),
            "rss_file_mb": round(rss_mb(pid, "RssFile"), 1),
            "threads": len(list(Path(f"/proc/{pid}/task").iterdir())),
            "rss_max_mb": round(peak[name], 1),
            "cpu_s": round(used, 2),
            "cpu_percent": round(100 * used / wall, 2),
        }
    out["_window"] = {
        "seconds": round(wall, 1),
        "machine_busy_cores": round((busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1), 2),
    }
    return out


# --- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, mesh: Mesh, results: dict[str, Any]) -> None:
    """Every phase, filling `results` as it goes (a failure keeps what was measured)."""
    mesh.start_control()
    mesh.control.set_policy(ALLOW_ALL_POLICY, mesh.workdir)
    a, b = mesh.add_node("a"), mesh.add_node("b")
    mesh.join(a)
    mesh.join(b)
    wait_for("A pings B over Rustynet", lambda: a.ping(b), 30, interval=0.0)
    wg = WgGoPair(mesh, a, b)
    wg.start()

    print(f"throughput A→B: {args.rounds} x (rustynet, wireguard-go), {args.seconds} s each ...")
    targets = {"rustynet": b.overlay_ip, "wireguard_go": WG_OVERLAY[1]}
    results["throughput"] = alternate_iperf(
        mesh, a, b, targets, rounds=args.rounds, seconds=args.seconds
    )

    nebula = None
    if shutil.which("nebula") and shutil.which("nebula-cert"):
        nebula = NebulaPair(mesh, a, b)
        nebula.configure()
    else:
        results["nebula_missing"] = "nebula / nebula-cert not installed (apt-get install nebula)"
        print(f"  {results['nebula_missing']}: reporting rustynetd alone")
    print(f"start → first ping A→B: {args.start_runs} runs each ...")
    started = start_runs(mesh, a, b, nebula, args.start_runs)
    results["start_to_ping"] = {k: summarize(v) for k, v in started.items() if v}
    results["start_to_ping_raw"] = started
    if args.py_spy is not None:
        print(f"one more start of A under py-spy → {args.py_spy}.start.txt ...")
        results["start_profile"] = profile_start(mesh, a, b, args.py_spy)
        wait_for("A's daemon answers", lambda: a.cli("status", "--json").returncode == 0, 10)

    processes = {
        "rustynetd_a": program_pid(a.program),
        "rustynetd_b": program_pid(b.program),
        "wireguard_go_a": wg.pid(a),
        "wireguard_go_b": wg.pid(b),
    }
    for node in (a, b):
        children = children_named(program_pid(node.program), "wireguard-go")
        if children:
            processes[f"rustynetd_{node.name}_wireguard_go"] = children[0]
    if nebula is not None:
        processes |= {f"nebula_{n.name}": program_pid(nebula.program(n)) for n in (a, b)}
    print(f"idle: {args.idle_seconds:.0f} s, nothing sent ...")
    time.sleep(2.0)  # the last start's own work (first map poll, probes) settles
    results["idle"] = idle_window(processes, args.idle_seconds)
    for name, figures in results["idle"].items():
        print(f"  {name}: {figures}")


# --- figures, budgets and the report -------------------------------------------------------------


def derive(results: dict[str, Any]) -> None:
    """Medians and the throughput ratio (in place)."""
    runs = results.get("throughput", {})
    medians = {}
    for name, samples in runs.items():
        values = [s["mbit_s"] for s in samples if "mbit_s" in s]
        if values and len(values) == len(samples):
            medians[name] = round(statistics.median(values), 1)
    results["throughput_median_mbit_s"] = medians
    if medians.get("wireguard_go") and "rustynet" in medians:
        results["throughput_ratio"] = round(medians["rustynet"] / medians["wireguard_go"], 3)
    idle = results.get("idle", {})
    daemons = [v for k, v in idle.items() if k in ("rustynetd_a", "rustynetd_b")]
    if daemons:
        results["rustynetd_idle"] = {
            "rss_max_mb": max(d["rss_max_mb"] for d in daemons),
            "cpu_percent": max(d["cpu_percent"] for d in daemons),
        }


def verdicts(results: dict[str, Any], budgets: dict[str, float]) -> dict[str, str]:
    """ "ok" / "MISS" / "not achieved" per budgeted figure."""

    def check(value: float | None, ok: Callable[[float], bool]) -> str:
        if value is None:
            return "not achieved"
        return "ok" if ok(value) else "MISS"

    ours = results.get("start_to_ping", {}).get("rustynetd", {})
    if ours.get("failed"):
        ours = {}
    idle = results.get("rustynetd_idle", {})
    return {
        "throughput_ratio": check(
            results.get("throughput_ratio"), lambda v: v >= budgets["throughput_ratio_min"]
        ),
        "start_to_ping_p50": check(
            ours.get("p50_s"), lambda v: v <= budgets["start_to_ping_max_s"]
        ),
        "start_to_ping_max": check(
            ours.get("max_s"), lambda v: v <= budgets["start_to_ping_max_s"]
        ),
        "idle_rss": check(idle.get("rss_max_mb"), lambda v: v <= budgets["idle_rss_max_mb"]),
        "idle_cpu": check(idle.get("cpu_percent"), lambda v: v <= budgets["idle_cpu_max_percent"]),
    }


def table(results: dict[str, Any], budgets: dict[str, float], verdict: dict[str, str]) -> str:
    """The markdown report: figure | rustynet | baseline | target | verdict."""
    medians = results.get("throughput_median_mbit_s", {})
    ratio = results.get("throughput_ratio")
    starts = results.get("start_to_ping", {})
    idle = results.get("idle", {})
    no_nebula = "not installed" if "nebula_missing" in results else "not run"

    def mbit(name: str) -> str:
        return f"{medians[name]:,.0f} Mbit/s" if name in medians else "failed / not run"

    def start(name: str) -> str:
        s = starts.get(name)
        if not s:
            return no_nebula if name == "nebula" else "not run"
        if "p50_s" not in s:
            return f"no ping in {s['runs']} runs"
        failed = f" ({s['failed']} without ping)" if s["failed"] else ""
        return f"{s['p50_s'] * 1000:.0f} / {s['max_s'] * 1000:.0f} ms{failed}"

    def mem(name: str) -> str:
        v = idle.get(name)
        return f"{v['rss_max_mb']:.1f} MiB" if v else "—"

    def cpu(name: str) -> str:
        v = idle.get(name)
        return f"{v['cpu_percent']:.2f} %" if v else "—"

    def both(fmt: Callable[[str], str], base: str) -> str:
        return " / ".join(fmt(f"{base}_{n}") for n in ("a", "b"))

    nebula_idle = "nebula_a" in idle
    ours_runs = starts.get("rustynetd", {}).get("runs", 0)
    seconds = idle.get("_window", {}).get("seconds", 0)
    rows = [
        (
            "direct-path TCP A→B, iperf3 (median of rounds)",
            mbit("rustynet"),
            f"wireguard-go by hand: {mbit('wireguard_go')}",
            "",
            "",
        ),
        (
            "throughput ratio rustynet / wireguard-go",
            "—" if ratio is None else f"{ratio:.2f}x",
            "1.00x",
            f"≥ {budgets['throughput_ratio_min']}x",
            verdict["throughput_ratio"],
        ),
        (
            f"start → first ping to a peer, p50 / max of {ours_runs}",
            start("rustynetd"),
            f"Nebula: {start('nebula')}",
            f"≤ {budgets['start_to_ping_max_s'] * 1000:.0f} ms (p50, max)",
            f"{verdict['start_to_ping_p50']}, {verdict['start_to_ping_max']}",
        ),
        (
            f"idle RSS (max over {seconds:.0f} s), A / B",
            both(mem, "rustynetd"),
            f"wireguard-go: {both(mem, 'wireguard_go')}"
            + (f"; Nebula: {both(mem, 'nebula')}" if nebula_idle else f"; Nebula: {no_nebula}"),
            f"≤ {budgets['idle_rss_max_mb']:.0f} MiB",
            verdict["idle_rss"],
        ),
        (
            f"idle CPU (% of a core over {seconds:.0f} s), A / B",
            both(cpu, "rustynetd"),
            f"wireguard-go: {both(cpu, 'wireguard_go')}"
            + (f"; Nebula: {both(cpu, 'nebula')}" if nebula_idle else ""),
            f"≤ {budgets['idle_cpu_max_percent']} %",
            verdict["idle_cpu"],
        ),
        (
            "rustynetd's own wireguard-go, idle RSS / CPU, A / B",
            " / ".join(
                f"{mem(f'rustynetd_{n}_wireguard_go')}, {cpu(f'rustynetd_{n}_wireguard_go')}"
                for n in ("a", "b")
            ),
            "context",
            "",
            "",
        ),
    ]
    lines = [
        "| figure | rustynet | baseline (same run) | target | |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {f} | {m} | {b} | {t} | {v} |" for f, m, b, t, v in rows]
    return "\n".join(lines) + "\n"


def compile_bytecode() -> str:
    """Byte-compile the rustynet package where it is imported from, as `pip install` does for a
    deployed node; else, with PYTHONDONTWRITEBYTECODE set (as in some shells), every daemon start
    compiles our modules from source (~13 % of a start's samples in a py-spy profile)."""
    import rustynet  # noqa: PLC0415 - only to find where it is imported from

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the programs we start may write theirs
    roots = [str(Path(p)) for p in rustynet.__path__]
    done = subprocess.run(
        [PYTHON, "-m", "compileall", "-q", *roots], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return f"compileall failed: {done.stdout.strip()[:300]} {done.stderr.strip()[:300]}"
    return f"compiled ahead: {', '.join(roots)}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options; --quick shortens the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 s iperf3, 5 starts, 20 s idle")
    parser.add_argument("--seconds", type=int, help="each iperf3 run (10; 5 with --quick)")
    parser.add_argument("--rounds", type=int, default=3, help="(rustynet, wireguard-go) pairs")
    parser.add_argument("--start-runs", type=int, help="starts of each program (7; 5 --quick)")
    parser.add_argument("--idle-seconds", type=float, help="idle window (60; 20 with --quick)")
    parser.add_argument("--output", type=Path, default=RESULTS / "node.json")
    parser.add_argument(
        "--py-spy", type=Path, metavar="PREFIX", help="profile one extra start of A's daemon"
    )
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (5 if args.quick else 10)
    args.start_runs = args.start_runs or (5 if args.quick else 7)
    args.idle_seconds = args.idle_seconds or (20.0 if args.quick else 60.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem is not None:
        print(f"bench_node: {problem}", file=sys.stderr)
        return 2
    budgets = budgets_of("node")
    extra = {
        "bytecode": compile_bytecode(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    results, failed = lab_run("node", args, run, budgets, extra)
    derive(results)
    verdict = verdicts(results, budgets)
    results["verdicts"] = verdict
    report = table(results, budgets, verdict)
    busy = results.get("idle", {}).get("_window", {}).get("machine_busy_cores")
    context = (
        f"`{results['command']}` ({results['started_at']}, {results['cpus']} CPUs, load average "
        f"at start {results['loadavg_at_start'][0]}, machine busy during the idle window: "
        f"{busy} cores). Start-up times grow with the load: compare with the baselines of the "
        "same run.\n\n"
    )
    write_results(args.output, results, context + report)
    print(f"\n{report}")
    profile = results.get("start_profile")
    if profile:
        print(f"py-spy, one start of rustynetd (timing under sampling: {profile['timing']})")
        print("  incl %  own %  function")
        for row in profile["top_inclusive"]:
            print(f"  {row['inclusive_percent']:6.1f} {row['own_percent']:6.1f}  {row['function']}")
    return finish("node", args.output, results, verdict, failed)


if __name__ == "__main__":
    sys.exit(main())
