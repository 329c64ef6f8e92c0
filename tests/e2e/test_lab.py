"""The e2e lab itself: namespaces on a bridge, the real control plane in its own namespace,
reachable from a node namespace through the bridge and from nowhere else; cleanup is total."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.harness import CONTROL_IP, Mesh, run_in

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_control_plane_answers_healthz_from_a_node_namespace(control_mesh: Mesh) -> None:
    """A node namespace reaches the control plane's /healthz over TLS through the bridge."""
    control_mesh.start_control()
    node = control_mesh.add_node("probe")
    status, body = control_mesh.control.rest("GET", "/healthz", admin=False, from_ns=node.ns)
    assert (status, body) == (200, {"status": "ok"})


def test_lab_has_no_route_to_the_outside(control_mesh: Mesh) -> None:
    """Lab namespaces route only the lab's underlay: nothing can leave the machine."""
    node = control_mesh.add_node("probe")
    routes = node.ns.ip("route", "show")
    assert "default" not in routes
    assert "198.51.100.0/24" in routes
    assert run_in(node.ns, "ping", "-c1", "-W1", "192.0.2.1").returncode != 0
    assert run_in(node.ns, "ping", "-c1", "-W1", CONTROL_IP).returncode == 0


def test_close_removes_namespaces_and_processes(control_mesh: Mesh) -> None:
    """After close() no namespace of the lab is left and the control process is gone."""
    control_mesh.start_control()
    names = [ns.name for ns in control_mesh.lab.namespaces]
    proc = control_mesh.control.program.proc
    assert proc is not None
    control_mesh.close()
    listed = subprocess.run(
        ["ip", "netns", "list"], check=True, capture_output=True, text=True
    ).stdout
    assert not [n for n in names if n in listed]
    assert proc.poll() is not None
