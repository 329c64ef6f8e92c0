"""What the lab benchmarks share: the run skeleton, /proc accounting, iperf3.

The node and relay benches (`bench/bench_node.py`, `bench/bench_relay.py`) each build a lab
with `tests/e2e/harness.py`'s Mesh, measure, and report figures next to their budgets in
`bench/budgets.toml`. The steps around the measuring are the same for both and live here:
`lab_run` (a fresh lab, the results header, Ctrl-C and SIGTERM through the cleanup, the error
with the programs' logs, the duration) and `finish` (the exit status from the verdicts).
Where results and budgets live: `bench/report.py`. Exit codes: 0 every budget met, 1 a budget
missed or a figure not achieved, 2 cannot run here (`preflight`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from tests.e2e.harness import (
    LabError,
    Mesh,
    Node,
    Program,
    missing_programs,
    new_mesh,
    run_in,
)

TICK: Final = os.sysconf("SC_CLK_TCK")
IPERF_PORT: Final = 5201

Run = Callable[[argparse.Namespace, Mesh, dict[str, Any]], None]


# --- the run skeleton ----------------------------------------------------------------------------


def preflight(*programs: str) -> str | None:
    """Why a lab bench cannot run here (root, the lab's tools, iperf3, `programs`), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, wireguard-go)"
    missing = missing_programs() + [p for p in ("iperf3",) if shutil.which(p) is None]
    missing += [Path(p).name for p in programs if not Path(p).exists()]
    return f"missing programs: {', '.join(missing)}" if missing else None


def lab_run(
    name: str,
    args: argparse.Namespace,
    run: Run,
    budgets: Mapping[str, float],
    extra: Mapping[str, object] | None = None,
    *,
    make: Callable[[Path], Mesh] = new_mesh,
) -> tuple[dict[str, Any], bool]:
    """Run `run` in a fresh lab (`make`, default the one-bridge `Mesh`), removed even on
    failure; (results, whether the run failed).

    The results start with the command, the time, the host, the budgets and `extra`; a
    `LabError` or Ctrl-C ends the run with its error (and the programs' logs on stderr)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"rustynet-bench-{name}-"))
    mesh = make(workdir)
    for signum in (signal.SIGINT, signal.SIGTERM):  # end through the cleanup below
        signal.signal(signum, signal.default_int_handler)
    results: dict[str, Any] = {
        "command": " ".join(
            [Path(sys.executable).name, "-m", f"bench.bench_{name}", *sys.argv[1:]]
        ),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "budgets": dict(budgets),
        **(extra or {}),
    }
    started = time.monotonic()
    failed = False
    try:
        run(args, mesh, results)
    except (LabError, KeyboardInterrupt) as exc:
        failed = True
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"bench_{name}: {results['error']}\n{mesh.logs()}", file=sys.stderr)
    finally:
        mesh.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = round(time.monotonic() - started, 1)
    return results, failed


def finish(
    name: str, output: Path, results: Mapping[str, Any], verdict: Mapping[str, str], failed: bool
) -> int:
    """Say where the results went; 1 when a budget was missed or the run failed, else 0."""
    misses = [k for k, v in verdict.items() if v != "ok"]
    print(f"wrote {output} and {output.with_suffix('.md')} ({results['duration_s']} s)")
    if misses or failed:
        print(f"bench_{name}: budget missed or not achieved: {', '.join(misses) or 'run failed'}")
        return 1
    return 0


def program_pid(program: Program) -> int:
    """The running program's PID (`ip netns exec` execs: it is the program's own)."""
    if program.proc is None or program.proc.poll() is not None:
        raise LabError(f"{program.argv[0]} is not running:\n{program.tail()}")
    return program.proc.pid


# --- /proc accounting ----------------------------------------------------------------------------


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(comm, parent PID, CPU seconds) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def process_cpu(pid: int) -> float:
    """utime + stime of one process, seconds."""
    found = _stat(str(pid))
    if found is None:
        raise LabError(f"process {pid} is gone")
    return found[2]


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds of `root` and every live descendant, keyed `comm[pid]` (rustynetd starts
    wireguard-go in a session of its own, so process groups would miss it)."""
    table = {int(e.name): _stat(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()}
    live = {pid: found for pid, found in table.items() if found is not None}
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in live.items():
        children.setdefault(parent, []).append(pid)
    out: dict[str, float] = {}
    pending = [root] if root in live else []
    while pending:
        pid = pending.pop()
        comm, _, seconds = live[pid]
        out[f"{comm}[{pid}]"] = seconds
        pending += children.get(pid, [])
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat (busy = total - idle - iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = float(sum(values[:8]))
    return total - values[3] - values[4], total


# --- iperf3 --------------------------------------------------------------------------------------


def iperf(mesh: Mesh, client: Node, server: Node, address: str, seconds: int) -> dict[str, Any]:
    """TCP throughput client → server's `address`: a one-off `iperf3 -s -1` in the server's
    namespace, `iperf3 -c ADDRESS -t SECONDS -J` in the client's. Failures are recorded."""
    listener = Program(
        server.ns,
        ["iperf3", "-s", "-1", "-p", str(IPERF_PORT), "--forceflush"],
        mesh.workdir / f"iperf3-{server.name}-{time.monotonic_ns()}.log",  # a fresh marker
    )
    mesh.servers.append(listener)
    listener.start()
    try:
        listener.wait_log("Server listening", timeout=10)
        argv = ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
        argv += ["--connect-timeout", "5000"]
        try:
            done = run_in(client.ns, *argv, timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            return {"error": f"iperf3 did not finish within {seconds + 30} s"}
        try:
            report = json.loads(done.stdout)
        except json.JSONDecodeError:
            return {"error": f"iperf3 exit {done.returncode}: {done.stderr.strip()[:300]}"}
        if "error" in report:
            return {"error": str(report["error"])}
        end = report["end"]
        received, sent = end["sum_received"], end["sum_sent"]
        return {
            "mbit_s": round(received["bits_per_second"] / 1e6, 1),
            "bytes": int(received["bytes"]),
            "seconds": round(received["seconds"], 3),
            "retransmits": sent.get("retransmits"),
            "client_cpu_percent": round(end["cpu_utilization_percent"]["host_total"], 1),
        }
    finally:
        listener.kill()


def alternate_iperf(
    mesh: Mesh,
    client: Node,
    server: Node,
    targets: Mapping[str, str],
    *,
    rounds: int,
    seconds: int,
) -> dict[str, list[dict[str, Any]]]:
    """`rounds` rounds of one `iperf` run per target (name → address), alternating, so that
    drift of a noisy machine hits every target alike; the runs by name (printed as they end)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, address in targets.items():
            sample = iperf(mesh, client, server, address, seconds)
            runs[name].append(sample)
            print(f"  {name}: {sample}")
    return runs
