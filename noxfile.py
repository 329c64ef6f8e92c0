"""Quality gates. Every session runs in the project environment that tools/setup.sh builds
(`.venv`, installed from the hash-pinned lock), so gates run offline and identically in CI.

    nox -s ci          every gate that runs offline: lint, typecheck, arch, tests, mutants
    nox -s mutants     the mutation gate: every security mutation in tests/mutation/mutants.toml
                       must be killed by the tests the threat model names (`-- --only ID`)
    nox -s audit       pip-audit + safety against requirements.lock, CycloneDX SBOM (network;
                       `nox -s audit -- --strict` fails when the advisory service is unreachable)
    nox -s demo        the main job (root): a control plane and three nodes in namespaces,
                       up until Ctrl-C; `nox -s demo -- --check` verifies and exits
    nox -s bench       benchmarks (root), figures next to bench/budgets.toml; `-- node` for one
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.sessions = ["ci"]
nox.options.default_venv_backend = "none"

ROOT = Path(__file__).parent
# Sessions use the interpreter that runs nox (.venv/bin/nox): put its tools first on PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
CODE = ["src", "adapters", "tests", "tools", "noxfile.py"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.run("ruff", "check", *CODE)
    session.run("ruff", "format", "--check", *CODE)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the installed package, then on the tests and gate tools."""
    session.run("mypy", "-p", "rustynet")
    session.run("mypy", "tests", "tools")


@nox.session
def arch(session: nox.Session) -> None:
    """Hexagon contracts, WireGuard vocabulary outside the adapter, denied crypto APIs."""
    session.run("lint-imports", "--no-cache")
    # Without paths: domain, ports, application and schemas (vocabulary.DEFAULT_PATHS).
    session.run("python", "-m", "tools.gates.vocabulary")
    session.run("python", "-m", "tools.gates.crypto_scan", "src", "adapters")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (unit, property, contract, integration, e2e)."""
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def mutants(session: nox.Session) -> None:
    """The mutation gate (tools/mutants.py): each curated security mutation must be killed."""
    session.run("python", "-m", "tools.mutants", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: control plane + three nodes in namespaces (root); `-- --check` for CI."""
    session.run("python", "-m", "tools.demo", *session.posargs)


# Cheapest first; the root benches (node, relay) last: they miss budgets today.
BENCHES = ("policy_compile", "control", "node", "relay", "relay_udp", "punch")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (root), results in bench/results/; `-- relay` runs only the named ones.

    Each prints its figures with their targets, checks them against bench/budgets.toml and
    exits 1 on a miss. Every named bench runs; the session fails at the end if any of them
    failed."""
    failed = []
    for name in session.posargs or BENCHES:
        try:
            session.run("python", "-m", f"bench.bench_{name}")
        except CommandFailed:
            failed.append(name)
    if failed:
        session.error(f"benches with a missed budget or a failed run: {', '.join(failed)}")


@nox.session
def audit(session: nox.Session) -> None:
    """Known-vulnerability audit of the locked dependencies, and an SBOM."""
    strict = "--strict" in session.posargs
    session.run("python", "-m", "tools.audit", *(["--strict"] if strict else []))


@nox.session
def ci(session: nox.Session) -> None:
    """Every gate that runs offline, in order of cost."""
    os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
    lint(session)
    typecheck(session)
    arch(session)
    tests(session)
    mutants(session)
