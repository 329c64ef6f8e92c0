"""The second advisory source of `tools.audit`: Safety (`safety check`), with the same honesty.

Safety 3 talks to its platform before it does anything: even `safety check --help`, and
`safety check --db DIR` with a local database, first probe https://platform.safetycli.com and
die with a traceback and exit 1 when it cannot be reached (exit 1 is also what Safety 2 used
for "vulnerabilities found"). `safety scan` needs an account or `SAFETY_API_KEY`; `safety check`
(deprecated, still shipped) fetches the free or the commercial database. So the exit status
alone proves nothing; this module classifies a run by what it printed:

- a JSON report (`--output json`) -> the packages it scanned and the advisories it lists;
- no report and a network error on stderr -> not reachable: the check was NOT performed;
- no report for any other reason (auth refused, database errors, a crash) -> a tool error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

SAFETY_UNREACHABLE: Final = "safety: advisory database unreachable: safety check NOT performed"

# What Safety (httpx / requests underneath) dies with when its service cannot be used.
_NETWORK_ERRORS: Final = (
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "SSLError",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Max retries exceeded",
    "NetworkConnectionError",
    "RequestError",
)
# Safety's documented exit codes for "could not get the database" (68) and "network" (auth).
_EXIT_FETCH_FAILED: Final = 68


@dataclass
class SafetyResult:
    """What one `safety check` run established."""

    reachable: bool
    scanned: int = 0
    vulnerabilities: list[str] = field(default_factory=list)
    detail: str = ""


class SafetyToolError(Exception):
    """Safety failed for a reason other than the network (auth, database, crash)."""


def classify_safety_report(data: dict[str, Any]) -> SafetyResult:
    """What a `safety check --output json` report establishes."""
    scanned = data.get("scanned_packages") or {}
    result = SafetyResult(reachable=True, scanned=len(scanned))
    for vuln in data.get("vulnerabilities") or []:
        fixes = ", ".join(vuln.get("fixed_versions") or []) or "no fixed version"
        result.vulnerabilities.append(
            f"{vuln.get('package_name')}=={vuln.get('analyzed_version')}: "
            f"safety {vuln.get('vulnerability_id')} (fixed in: {fixes})"
        )
    if not result.scanned:
        result.reachable = False
        result.detail = "the report scanned no package"
    return result


def _report_of(stdout: str) -> dict[str, Any] | None:
    start = stdout.find("{")
    if start < 0:
        return None
    try:
        data = json.loads(stdout[start:])
    except ValueError:
        return None
    return data if isinstance(data, dict) and "scanned_packages" in data else None


def run_safety(lock: Path, *, timeout: int, cwd: Path) -> SafetyResult:
    """Run `safety check` on `lock` once and classify what came back."""
    command = [
        sys.executable,
        "-W",
        "ignore",  # Safety's own dependency deprecation warnings
        "-m",
        "safety",
        "--disable-optional-telemetry",
        "check",
        "-r",
        str(lock),
        "--output",
        "json",
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=cwd, timeout=timeout * 6
        )
    except subprocess.TimeoutExpired:
        return SafetyResult(reachable=False, detail=f"no answer within {timeout * 6} s")
    report = _report_of(done.stdout)
    if report is not None:
        return classify_safety_report(report)
    output = done.stderr + done.stdout
    last = output.strip().splitlines()[-1:] or ["(no output)"]
    if done.returncode == _EXIT_FETCH_FAILED or any(m in output for m in _NETWORK_ERRORS):
        return SafetyResult(reachable=False, detail=last[0])
    raise SafetyToolError(f"safety failed (exit {done.returncode}): {last[0]}")
