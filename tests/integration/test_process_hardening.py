"""Every entry point turns core dumps off before it handles a secret."""

from __future__ import annotations

import subprocess
import sys

from rustynet.bootstrap import process


def test_entry_point_disables_core_dumps() -> None:
    """After rustynet_main starts, RLIMIT_CORE is 0 and the process is not dumpable."""
    code = (
        "import resource, sys\n"
        "from rustynet.bootstrap import entrypoints, process\n"
        "assert process.is_dumpable()\n"
        "entrypoints.rustynet_main(['doctor', '--json', '--state-dir', sys.argv[1]])\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE), process.is_dumpable())\n"
    )
    # The child starts from this interpreter's import path (the mutation gate checks that path
    # through this import) and dumpable, so the entry point is what turns dumps off.
    assert process.is_dumpable()
    out = subprocess.run(
        [sys.executable, "-c", code, "/nonexistent-rustynet-state"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.stdout.strip().splitlines()[-1] == "(0, 0) False", out.stderr
