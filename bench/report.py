"""Where every bench writes its figures and reads its budgets, and how it samples with py-spy.

Results go to `bench/results/` (ignored by git) as JSON plus a markdown table beside it; the
budgets are the bench's table of `bench/budgets.toml`
(docs/threat-model/performance-budgets.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
RESULTS: Final = HERE / "results"
BUDGETS: Final = HERE / "budgets.toml"
BIN: Final = Path(sys.executable).parent


def budgets_of(name: str) -> dict[str, float]:
    """The budgets of one bench: its table of `bench/budgets.toml`."""
    table: dict[str, float] = tomllib.loads(BUDGETS.read_text())[name]
    return table


def write_results(output: Path, results: Mapping[str, Any], markdown: str) -> None:
    """The results as JSON at `output` and the markdown report beside it (`.md`)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown)


def start_py_spy(
    pid: int, out: Path, *, rate: int = 100, gil: bool = True
) -> subprocess.Popen[bytes]:
    """py-spy (not in the lock: `pip install py-spy`) sampling `pid`; raw collapsed stacks.

    `gil`: only samples holding the GIL, i.e. Python (and uvloop) at work, not threads parked
    in waitpid or a thread-pool queue. py-spy writes its file on SIGINT."""
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    argv = [spy, "record", "--pid", str(pid), *(["--gil"] if gil else [])]
    argv += ["--format", "raw", "--rate", str(rate)]
    return subprocess.Popen(
        [*argv, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
