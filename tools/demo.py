"""The main job for a newcomer: a control plane and three nodes in network namespaces.

    tools/setup.sh && .venv/bin/nox -s demo            # stays up until Ctrl-C
    .venv/bin/nox -s demo -- --check                     # verify every pair pings, exit (CI)

Runs as root on a Debian machine. It builds the e2e lab (`tests/e2e/harness.py`): a bridge
namespace, `rustynet-control` in its own namespace on 198.51.100.1, and `rustynetd` for alice,
bob and carol on 198.51.100.11-13, each joined with a one-time token under an allow-all policy.
Then it prints each node's `rustynet status` and the overlay ping matrix. Everything it made
(namespaces, processes, sockets, files) is removed on exit, also after Ctrl-C or a failure.
Exit codes: 0 ok, 1 the mesh did not come up (logs printed), 2 cannot run here (says why).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.e2e.harness import (
    ALLOW_ALL_POLICY,
    LabError,
    Mesh,
    missing_programs,
    new_mesh,
)

NODES = ("alice", "bob", "carol")
# Debian packages providing each system program the lab runs (tools/setup.sh installs them).
PACKAGES = {
    "ip": "iproute2",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "nft": "nftables",
    "ping": "iputils-ping",
}


def _preflight() -> str | None:
    """Why the demo cannot run here, or None."""
    if os.geteuid() != 0:
        return "the demo needs root (it creates network namespaces): run it as root"
    missing = missing_programs()
    if not missing:
        return None
    packages = sorted({PACKAGES[m] for m in missing if m in PACKAGES})
    ours = [m for m in missing if m not in PACKAGES]
    lines = [f"missing: {', '.join(Path(m).name for m in missing)}"]
    if packages:
        lines.append(f"install with: apt-get install -y {' '.join(packages)}")
    if ours:
        lines.append("run tools/setup.sh to install rustynet into .venv")
    return "\n".join(lines)


def _matrix(mesh: Mesh) -> tuple[str, bool]:
    """The ping matrix as a table, and whether every pair answered."""
    result = mesh.ping_matrix()
    corner = "from \\ to"
    first = max(len(corner), *(len(n) for n in NODES)) + 2
    width = max(len(n) for n in NODES) + 2
    rows = [corner.ljust(first) + "".join(n.ljust(width) for n in NODES)]
    for src in NODES:
        cells = ["-" if src == dst else ("ok" if result[(src, dst)] else "FAIL") for dst in NODES]
        rows.append(src.ljust(first) + "".join(c.ljust(width) for c in cells))
    return "\n".join(rows), all(result.values())


def _show(mesh: Mesh, started: float) -> bool:
    """Wait for the mesh, print statuses and the matrix; True when every pair pings."""
    try:
        waited = mesh.wait_all_ping(timeout=30)
        total = time.monotonic() - started
        print(f"\nall {len(mesh.pairs())} pairs ping after {waited:.2f} s (total {total:.1f} s)")
    except LabError as exc:
        print(f"\nthe mesh did not fully come up: {str(exc).splitlines()[0]}")
    for node in mesh.nodes.values():
        print(f"\n$ rustynet status   # on {node.name} ({node.underlay_ip})")
        print(node.cli("status").stdout.rstrip())
    table, ok = _matrix(mesh)
    print(f"\noverlay ping matrix:\n{table}")
    if not ok:
        print(f"\n{mesh.logs()}")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Build the lab, show it, stay up until Ctrl-C (or exit after `--check`)."""
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify every pair pings, then exit")
    args = parser.parse_args(argv)
    problem = _preflight()
    if problem is not None:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="rustynet-demo-"))
    mesh = new_mesh(workdir)
    # Ctrl-C and SIGTERM end the demo through the cleanup below (also when started in the
    # background, where a shell leaves SIGINT ignored).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        started = time.monotonic()
        print(f"control plane: rustynet-control in namespace {mesh.control_ns.name}")
        mesh.start_control()
        mesh.control.set_policy(ALLOW_ALL_POLICY, workdir)
        print(f"  {mesh.control.url} ready; policy: allow all")
        for name in NODES:
            node = mesh.add_node(name)
            mesh.join(node)
            print(
                f"node {name}: namespace {node.ns.name}, interface {node.interface}, "
                f"overlay {node.overlay_ip}"
            )
        ok = _show(mesh, started)
        if args.check:
            return 0 if ok else 1
        print(
            "\nthe mesh stays up; try e.g.\n"
            f"  ip netns exec {mesh.nodes['alice'].ns.name} "
            f"{Path(sys.executable).parent / 'rustynet'} --socket "
            f"{mesh.nodes['alice'].socket} peers\n"
            "Ctrl-C removes everything."
        )
        signal.pause()
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    except LabError as exc:
        print(f"demo failed: {exc}\n{mesh.logs()}", file=sys.stderr)
        return 1
    finally:
        mesh.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
