"""Operator paper cuts of issue 11, end to end with the real console scripts over real TLS:
`rustynet-control show` prints the root fingerprint that `rustynet-relay init` needs, and
SIGHUP makes control.toml's relays live — enrolled nodes get a new signed peer map at once.

One control plane (init + serve subprocess) serves the module; tests run in file order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rustynet.adapters.control_client import ControlClient, NodeAuth

from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.netmap import PeerMapAcceptor
from rustynet.ports.control_api import ControlRejected
from tests.integration.test_control_cli import (
    CONTROL,
    Plane,
    _enroll,
    _free_port,
    _start,
    _stop,
    run,
)

RELAY = [
    sys.executable,
    "-c",
    "from rustynet.bootstrap.relay import relay_main; raise SystemExit(relay_main())",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    data_dir = tmp_path_factory.mktemp("control-ops") / "data"
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    done = run(CONTROL, "init", "--data-dir", str(data_dir), "--url", url, "--keystore", "file")
    assert done.returncode == 0, done.stderr
    started = _start(data_dir, port)
    yield started
    _stop(started)


def _show(plane: Plane) -> dict[str, object]:
    done = run(CONTROL, "show", "--data-dir", str(plane.data_dir), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert isinstance(doc, dict)
    return doc


def _relay_init(tmp: Path, control_url: str, fingerprint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - callers assert on returncode
        [
            *RELAY,
            "init",
            "--config",
            str(tmp / "relay.toml"),
            "--url",
            "wss://127.0.0.1:9443/v1/relay",
            "--control-url",
            control_url,
            "--root-fingerprint",
            fingerprint,
            "--id",
            "relay-live",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _next_map(
    plane: Plane, auth: NodeAuth, acceptor: PeerMapAcceptor, wait: int
) -> tuple[str, ...] | None:
    """Long-poll (`wait` s) after the acceptor's watermark: the new map's relay ids, or None."""
    async with ControlClient(plane.url, plane.pin()) as client:
        response = await client.peer_map(
            auth, after=acceptor.watermark, wait=wait, timeout=wait + 10
        )
    if response is None:
        return None
    envelope = response["envelope"]
    assert isinstance(envelope, str)
    return tuple(r.id for r in acceptor.accept(envelope, datetime.now(UTC)).relays)


async def _relay_token(plane: Plane, auth: NodeAuth, relay_id: str) -> object:
    async with ControlClient(plane.url, plane.pin()) as client:
        return await client.relay_token(auth, relay_id=relay_id)


def _wait_log(plane: Plane, needle: str, after: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(needle in line for line in list(plane.log)[after:]):
        assert time.monotonic() < deadline, f"no {needle!r} in the log:\n" + "".join(plane.log)
        time.sleep(0.05)


def test_show_prints_the_root_fingerprint_relay_init_accepts(plane: Plane, tmp_path: Path) -> None:
    """`show` prints url, pin and the root fingerprint every join token carries, and the
    relay init line; the printed value is accepted by `rustynet-relay init`."""
    doc = _show(plane)
    token = plane.admin("keys", "create").stdout.strip()
    fingerprint = JoinToken.parse(token).root_fingerprint.to_text()
    assert doc["root_fingerprint"] == fingerprint
    assert doc["url"] == plane.url
    assert doc["tls_spki_pin"] == plane.pin().to_text()
    assert doc["relays"] == []
    human = run(CONTROL, "show", "--data-dir", str(plane.data_dir))
    assert human.returncode == 0, human.stderr
    assert f"--root-fingerprint {fingerprint}" in human.stdout
    assert "keystore.pass" not in human.stdout  # public values only
    init = _relay_init(tmp_path, plane.url, fingerprint)
    assert init.returncode == 0, init.stderr
    assert f'root_fingerprint = "{fingerprint}"' in (tmp_path / "relay.toml").read_text()


def test_show_of_a_missing_data_dir_fails_cleanly(tmp_path: Path) -> None:
    """No control.toml: exit 1 with a message, no traceback."""
    done = run(CONTROL, "show", "--data-dir", str(tmp_path / "nothing"))
    assert done.returncode == 1
    assert "rustynet-control show:" in done.stderr
    assert "Traceback" not in done.stderr


def test_sighup_makes_a_new_relay_live_for_enrolled_nodes(plane: Plane, tmp_path: Path) -> None:
    """A node holds its map; a relay is added to control.toml; SIGHUP → the node's parked
    long poll answers with a new signed map listing the relay, relay tokens for it are
    issued, `show` lists it and the audit log records `relays.replaced`. A broken control.toml
    on SIGHUP changes nothing and the server keeps serving."""
    join = plane.admin("keys", "create").stdout.strip()
    node_id, auth, acceptor = asyncio.run(_enroll(join, "hup1"))
    assert asyncio.run(_next_map(plane, auth, acceptor, wait=5)) == ()
    with pytest.raises(ControlRejected) as unknown:
        asyncio.run(_relay_token(plane, auth, "relay-live"))
    assert unknown.value.status == 404

    fingerprint = str(_show(plane)["root_fingerprint"])
    init = _relay_init(tmp_path, plane.url, fingerprint)
    assert init.returncode == 0, init.stderr
    block = init.stdout[init.stdout.index("[[relays]]") :]
    toml = plane.data_dir / "control.toml"
    original = toml.read_text()

    # Negative first: a control.toml that does not parse is refused, nothing moves.
    toml.write_text(original + "\n[[relays]]\nid = 'BAD ID'\n")
    mark = len(plane.log)
    plane.proc.send_signal(signal.SIGHUP)
    _wait_log(plane, "config.reload_failed", mark)
    assert asyncio.run(_next_map(plane, auth, acceptor, wait=1)) is None  # no new map
    assert plane.proc.poll() is None

    toml.write_text(original + "\n" + block)
    mark = len(plane.log)
    started = time.monotonic()
    plane.proc.send_signal(signal.SIGHUP)
    assert asyncio.run(_next_map(plane, auth, acceptor, wait=10)) == ("relay-live",)
    assert time.monotonic() - started < 10
    _wait_log(plane, "config.reloaded", mark)
    grant = asyncio.run(_relay_token(plane, auth, "relay-live"))
    assert isinstance(grant, dict)
    assert isinstance(grant.get("token"), str)
    relays = _show(plane)["relays"]
    assert isinstance(relays, list)
    assert [r["id"] for r in relays] == ["relay-live"]
    audit = plane.admin_json("audit", "list")
    assert isinstance(audit, dict)
    entries = audit["entries"]
    assert isinstance(entries, list)
    replaced = [e for e in entries if e["action"] == "relays.replaced"]
    assert len(replaced) == 1
    assert replaced[0]["actor"] == "config:control.toml"
    assert replaced[0]["details"]["relays"] == ["relay-live"]

    # The same file again: no change, no new serial, no second audit entry.
    mark = len(plane.log)
    plane.proc.send_signal(signal.SIGHUP)
    _wait_log(plane, "config.reloaded", mark)
    assert asyncio.run(_next_map(plane, auth, acceptor, wait=1)) is None
    assert node_id
