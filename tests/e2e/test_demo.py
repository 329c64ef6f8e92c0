"""The newcomer's main job (`nox -s demo`, i.e. `python -m tools.demo`) works and cleans up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.startswith("rn")}


@pytest.mark.usefixtures("lab_programs")
def test_demo_check_brings_up_three_nodes_and_removes_them() -> None:
    """`tools/demo.py --check`: statuses and an all-ok ping matrix, exit 0, nothing left."""
    done = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("state:    running") == 3
    assert "FAIL" not in done.stdout
    assert done.stdout.count("ok") >= 6
    # Only the demo's own namespaces are checked: other labs may run on this machine meanwhile.
    made = set(re.findall(r"namespace (rn[0-9a-z]+)", done.stdout))
    assert len(made) == 4, done.stdout  # control plane + three nodes, as printed
    assert not made & _lab_namespaces()
