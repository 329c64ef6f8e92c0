"""Supply-chain gate: known-vulnerability audit of the locked dependencies, and an SBOM.

The one rule: an audit that did not happen never reads as a pass. pip-audit reports
"No known vulnerabilities found" and exits 0 even when the advisory service answered nothing
useful (a registry mirror that serves packages but not PyPI's JSON API answers 404 for every
package, and pip-audit just skips them). So this tool reads pip-audit's JSON report itself:

- every locked dependency audited, no advisories -> exit 0;
- any advisory -> exit 1, always (also without `--strict`);
- the advisory service cannot be reached (connection, DNS, proxy or HTTP errors), or it knew
  none of our dependencies -> prints "advisory service unreachable: vulnerability audit NOT
  performed" and exits 0, or 2 with `--strict`;
- some dependencies not audited -> "vulnerability audit INCOMPLETE ..." and the same exit rule;
- any other failure (missing lock, hash mismatch, SBOM error) -> exit 3.

Safety (`tools/audit_safety.py`) is the second advisory source, run over the same lock after
pip-audit with the same rules: its advisories exit 1; when its database cannot be reached it
prints "safety: advisory database unreachable: safety check NOT performed" and exits 0, or 2
with `--strict`; any other Safety failure exits 3. `--no-safety` skips it.

Inputs: `requirements.lock` (hash-pinned, made by tools/lock.sh), audited with
`pip-audit -r requirements.lock --require-hashes --disable-pip` (no resolution, so the audited
set is exactly the lock). `--service auto` asks PyPI first, then OSV if PyPI cannot be reached.

The SBOM is CycloneDX 1.6 JSON from `cyclonedx-py requirements` over the same lock with the
root component from pyproject.toml; it needs no network and is written first, to
`reports/sbom.cdx.json` (reports/ is gitignored); pip-audit's own report goes to
`reports/pip-audit.json`.

CLI: `python -m tools.audit [--strict] [--service auto|pypi|osv] [--osv-url URL]
[--lock PATH] [--sbom PATH | --no-sbom] [--timeout S]`. Network settings come from the usual
environment (HTTPS_PROXY etc.); tests make the service unreachable through it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tools.audit_safety import SAFETY_UNREACHABLE, SafetyToolError, run_safety

ROOT: Final = Path(__file__).resolve().parents[1]
REPORTS: Final = ROOT / "reports"
UNREACHABLE: Final = "advisory service unreachable: vulnerability audit NOT performed"

EXIT_OK: Final = 0
EXIT_VULNERABLE: Final = 1
EXIT_NOT_PERFORMED: Final = 2
EXIT_ERROR: Final = 3

# Exceptions pip-audit dies with when the service cannot be used; anything else is a real error.
_NETWORK_ERRORS: Final = (
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "SSLError",
    "NameResolutionError",
    "Max retries exceeded",
    "ServiceError",
    "Could not connect",
)


@dataclass
class AuditResult:
    """What one pip-audit run established."""

    service: str
    reachable: bool
    audited: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    vulnerabilities: list[str] = field(default_factory=list)
    detail: str = ""


class AuditToolError(Exception):
    """pip-audit or cyclonedx-py failed for a reason other than the network."""


def write_sbom(lock: Path, out: Path) -> int:
    """Write a CycloneDX JSON SBOM of `lock` to `out`; return the number of components."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-W",
        "ignore::UserWarning",  # "dependency graph incomplete": a lock file has no graph
        "-m",
        "cyclonedx_py",
        "requirements",
        str(lock),
        "--pyproject",
        str(ROOT / "pyproject.toml"),
        "--output-reproducible",
        "--of",
        "JSON",
        "-o",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AuditToolError(f"cyclonedx-py failed:\n{done.stderr.strip()}")
    components = json.loads(out.read_text(encoding="utf-8")).get("components", [])
    return len(components)


def run_pip_audit(
    lock: Path, *, service: str, osv_url: str | None, timeout: int, report: Path
) -> AuditResult:
    """Run pip-audit once against one service and classify what came back."""
    with tempfile.TemporaryDirectory(prefix="pip-audit-cache-") as cache:
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "-r",
            str(lock),
            "--require-hashes",
            "--disable-pip",
            "--progress-spinner",
            "off",
            "--vulnerability-service",
            service,
            "--timeout",
            str(timeout),
            "--cache-dir",  # a fresh cache: never pass on an answer from an earlier run
            cache,
            "--format",
            "json",
            "--output",
            str(report),
        ]
        if osv_url and service == "osv":
            command += ["--osv-url", osv_url]
        report.unlink(missing_ok=True)
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if not report.exists():
        last = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        if any(marker in done.stderr for marker in _NETWORK_ERRORS):
            return AuditResult(service, reachable=False, detail=last[0])
        raise AuditToolError(f"pip-audit failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return classify_report(service, json.loads(report.read_text(encoding="utf-8")))


def classify_report(service: str, data: dict[str, Any]) -> AuditResult:
    """What a pip-audit JSON report establishes: audited, skipped, advisories, reachable."""
    result = AuditResult(service, reachable=True)
    for dep in data.get("dependencies", []):
        name = f"{dep.get('name')}=={dep.get('version', '?')}"
        if "skip_reason" in dep:
            result.skipped.append(f"{dep.get('name')}: {dep['skip_reason']}")
            continue
        result.audited.append(name)
        for vuln in dep.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed version"
            result.vulnerabilities.append(f"{name}: {vuln.get('id')} (fixed in: {fixes})")
    if not result.audited and result.skipped:
        result.reachable = False
        result.detail = f"the service knew none of the {len(result.skipped)} dependencies"
    return result


def audit(
    lock: Path, *, service: str, osv_url: str | None, timeout: int, report: Path
) -> AuditResult:
    """Audit with `service`; with "auto", PyPI first and OSV when PyPI cannot be reached."""
    services = ["pypi", "osv"] if service == "auto" else [service]
    results = [
        run_pip_audit(lock, service=s, osv_url=osv_url, timeout=timeout, report=report)
        for s in services[:1]
    ]
    for fallback in services[1:]:
        if results[-1].reachable:
            break
        results.append(
            run_pip_audit(lock, service=fallback, osv_url=osv_url, timeout=timeout, report=report)
        )
    if not results[-1].reachable:
        results[-1].detail = "; ".join(f"{r.service}: {r.detail}" for r in results)
    return results[-1]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.audit", description="pip-audit of requirements.lock + SBOM"
    )
    parser.add_argument("--strict", action="store_true", help="fail when no audit was possible")
    parser.add_argument("--service", choices=["auto", "pypi", "osv"], default="auto")
    parser.add_argument("--osv-url", help="OSV query endpoint (default: api.osv.dev)")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--sbom", type=Path, default=REPORTS / "sbom.cdx.json")
    parser.add_argument("--no-sbom", action="store_true", help="skip the SBOM")
    parser.add_argument("--report", type=Path, default=REPORTS / "pip-audit.json")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per request")
    parser.add_argument("--no-safety", action="store_true", help="pip-audit only")
    args = parser.parse_args(argv)

    if not args.lock.is_file():
        print(f"audit: no lock file at {args.lock} (run tools/lock.sh)", file=sys.stderr)
        return EXIT_ERROR
    try:
        if not args.no_sbom:
            count = write_sbom(args.lock, args.sbom)
            print(f"SBOM: {args.sbom} (CycloneDX JSON, {count} components)")
        args.report.parent.mkdir(parents=True, exist_ok=True)
        result = audit(
            args.lock,
            service=args.service,
            osv_url=args.osv_url,
            timeout=args.timeout,
            report=args.report,
        )
    except AuditToolError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return EXIT_ERROR

    not_performed = EXIT_NOT_PERFORMED if args.strict else EXIT_OK
    status = _report_pip_audit(result, not_performed)
    if not args.no_safety:
        try:
            status = max(status, _report_safety(args.lock, args.timeout, not_performed))
        except SafetyToolError as exc:
            print(f"audit: {exc}", file=sys.stderr)
            return max(status, EXIT_ERROR)
    return status


def _report_pip_audit(result: AuditResult, not_performed: int) -> int:
    if result.vulnerabilities:
        print(
            f"KNOWN VULNERABILITIES in {len(result.vulnerabilities)} place(s) ({result.service}):"
        )
        for line in result.vulnerabilities:
            print(f"  {line}")
        return EXIT_VULNERABLE
    if not result.reachable:
        print(UNREACHABLE)
        print(f"  ({result.detail})")
        return not_performed
    if result.skipped:
        print(
            f"vulnerability audit INCOMPLETE: {len(result.skipped)} of "
            f"{len(result.skipped) + len(result.audited)} dependencies not audited"
        )
        for line in result.skipped:
            print(f"  {line}")
        return not_performed
    print(f"audit: {len(result.audited)} locked dependencies, no known vulnerabilities")
    return EXIT_OK


def _report_safety(lock: Path, timeout: int, not_performed: int) -> int:
    result = run_safety(lock, timeout=timeout, cwd=ROOT)
    if result.vulnerabilities:
        print(f"KNOWN VULNERABILITIES in {len(result.vulnerabilities)} place(s) (safety):")
        for line in result.vulnerabilities:
            print(f"  {line}")
        return EXIT_VULNERABLE
    if not result.reachable:
        print(SAFETY_UNREACHABLE)
        print(f"  ({result.detail})")
        return not_performed
    print(f"safety: {result.scanned} locked dependencies, no known vulnerabilities")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
