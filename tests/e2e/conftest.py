"""Fixtures for the end-to-end scenarios: a fresh `Mesh` lab per test, removed even on failure.

`control_mesh` needs root, the network tools and the control plane; `mesh` also needs
`rustynetd`. Either skips with the reason printed when something is missing. When a test
fails, the tails of every program's log are printed with the report.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.harness import CONTROL_BIN, RUSTYNETD_BIN, TOOLS, Mesh, new_mesh
from tests.e2e.natmesh import NatMesh, new_nat_mesh

_FAILED = pytest.StashKey[bool]()
M = TypeVar("M", bound=Mesh)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test body failed (the fixture prints logs then)."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


def _require(*programs: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("e2e needs root (network namespaces, nftables, wireguard-go)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    missing += [Path(p).name for p in programs if not Path(p).exists()]
    if missing:
        pytest.skip(f"e2e: missing programs: {', '.join(missing)}")


def _mesh(request: pytest.FixtureRequest, tmp_path: Path, make: Callable[[Path], M]) -> Iterator[M]:
    mesh = make(tmp_path)
    try:
        yield mesh
    finally:
        if request.node.stash.get(_FAILED, False):
            print(f"\n=== e2e logs ({request.node.name}) ===\n{mesh.logs()}")
        mesh.close()


@pytest.fixture
def lab_programs() -> None:
    """Skip (reason printed) unless root and every program the lab runs is installed."""
    _require(CONTROL_BIN, RUSTYNETD_BIN)


@pytest.fixture
def control_mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    """A lab with the bridge and the control namespace (nodes added by the test)."""
    _require(CONTROL_BIN)
    yield from _mesh(request, tmp_path, new_mesh)


@pytest.fixture
def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    """Like `control_mesh`, and `rustynetd` must be installed."""
    _require(CONTROL_BIN, RUSTYNETD_BIN)
    yield from _mesh(request, tmp_path, new_mesh)


@pytest.fixture
def nat_mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NatMesh]:
    """The NAT lab with a control plane on its internet (nodes added by the test)."""
    _require(CONTROL_BIN, RUSTYNETD_BIN)
    yield from _mesh(request, tmp_path, new_nat_mesh)
