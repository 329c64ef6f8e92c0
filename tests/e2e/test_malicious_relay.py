"""End-to-end scenario 3 of issue 5: a malicious relay cannot make either side accept what it
forwards, and the relay only carries nodes holding a token for it.

The relay sees only ciphertext but controls every byte of it. `evil_relay.py` runs the real
`rustynet-relay serve` (same relay.toml, TLS key, pin, auth) with its forwarding replaced: in
`tamper` mode it inverts one byte in the middle of every forwarded tunnel packet, in `replay`
mode it forwards every frame a second time 50 ms later. Direct UDP between A and B is dropped on
the switch before they meet, so every packet between them crosses the evil relay:

- tampered: no ping gets through in either direction and neither tunnel records a handshake or
  a received byte from the other, while both sent and the relay altered frames from both; the
  honest relay on the same config then carries the pair (positive control);
- replayed: pings work through the relay and no echo reply arrives twice (`DUP!`), while the
  relay did forward a second copy of every frame of them.

Tokens: from A's namespace, `relay_probe.py` uses A's own identity, trust certificates and real
relay tokens from control with the product's relay client. A frame sent before authenticating
and a garbage token get the generic 4401; a genuine control token for ANOTHER relay listed in
control.toml is refused (RelayUnauthorized) while A's token for this relay, otherwise the same
attempt, is accepted; `/metrics` counts each refusal and the dropped frame.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Final

import pytest
from rustynet.adapters.tls_cert import spki_pin_of_pem_file

from tests.e2e.harness import (
    ALLOW_ALL_POLICY,
    CONTROL_IP,
    PYTHON,
    LabError,
    Mesh,
    Node,
    Program,
    Relay,
    block_direct,
    run_in,
    start_control_with_relay,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

EVIL: Final = Path(__file__).with_name("evil_relay.py")
PROBE: Final = Path(__file__).with_name("relay_probe.py")
RELAY_UP_S: Final = 30.0  # direct_timeout 6 s + relay session + a handshake retry, with margin
SESSION_UP_S: Final = 20.0
TAMPER_WINDOW_S: Final = 20
PINGS: Final = 20
OTHER_RELAY: Final = "relay-other"
OTHER_RELAY_PORT: Final = 8446


def _timing(what: str, seconds: float) -> None:
    print(f"e2e-timing {what}: {seconds * 1000:.0f} ms")


@pytest.fixture
def blocked(mesh: Mesh) -> tuple[Mesh, Relay, Node, Node]:
    """Control with the relay listed (the honest relay stopped again), nodes a and b added but
    not started, allow-all policy, UDP between a and b dropped on the switch."""
    relay = start_control_with_relay(mesh)
    relay.program.stop()
    mesh.control.set_policy(ALLOW_ALL_POLICY, mesh.workdir)
    a, b = mesh.add_node("a"), mesh.add_node("b")
    block_direct(mesh, a, b)
    return mesh, relay, a, b


def _start_evil(mesh: Mesh, relay: Relay, mode: str) -> Program:
    program = Program(
        mesh.control_ns,
        [PYTHON, str(EVIL), mode, "--config", str(relay.config)],
        mesh.workdir / f"evil-relay-{mode}.log",
    )
    mesh.servers.append(program)  # the mesh fixture kills it, whatever happens below
    program.start()
    program.wait_log("ready;")
    assert f"evil-relay: armed mode={mode}" in program.log_text(), program.tail()
    return program


def _restart(program: Program) -> None:
    """Start `program` again and wait for a NEW `ready;` line in its (appended) log."""
    before = program.log_text().count("ready;")
    program.start()

    def probe() -> bool:
        if not program.running:
            raise LabError(f"{program.argv[0]} exited on restart:\n{program.tail()}")
        return program.log_text().count("ready;") > before

    wait_for("relay ready after restart", probe, 30)


def _wait_sessions(program: Program, *node_ids: str) -> float:
    """Wait until the relay opened a session for each node (its `relay.session_opened` log)."""

    def probe() -> bool:
        opened = [line for line in program.log_text().splitlines() if "session_opened" in line]
        return all(any(node in line for line in opened) for node in node_ids)

    return wait_for(f"relay sessions of {node_ids}", probe, SESSION_UP_S)[1]


def _evil_counts(program: Program) -> dict[str, str]:
    """The last counter line of the evil relay: mode, frames, altered, replayed, sources."""
    lines = [line for line in program.log_text().splitlines() if " frames=" in line]
    assert lines, f"the evil relay reported no frames:\n{program.tail()}"
    return dict(field.split("=", 1) for field in lines[-1].split("evil-relay: ", 1)[1].split())


def _sources(counts: dict[str, str]) -> dict[str, int]:
    pairs = (item.rsplit(":", 1) for item in counts["sources"].split(",") if item)
    return {node: int(n) for node, n in pairs}


def _tunnel_view(node: Node, peer: Node) -> tuple[int, int, int]:
    """(latest handshake epoch, rx bytes, tx bytes) of `peer` on `node`'s interface, from one
    `wg show dump` (one UAPI read: two separate reads once disagreed under load in CI)."""
    key = peer.tunnel_key()
    done = run_in(node.ns, "wg", "show", node.interface, "dump")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines()[1:]:  # the first line is the interface itself
        fields = line.split("\t")
        if fields[0] == key:
            return int(fields[4]), int(fields[5]), int(fields[6])
    raise AssertionError(f"{peer.name}'s key is not a peer of {node.name}: {done.stdout}")


def _ping_window(src: Node, dst: Node, seconds: int) -> subprocess.Popen[str]:
    ping = ["ping", "-n", "-i", "0.5", "-W", "1", "-w", str(seconds), dst.overlay_ip]
    return subprocess.Popen(
        ["ip", "netns", "exec", src.ns.name, *ping],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_tampering_relay_gets_no_packet_accepted(blocked: tuple[Mesh, Relay, Node, Node]) -> None:
    """Every packet crossing the relay has one byte inverted: for 20 s of pings both ways no
    echo is answered, neither tunnel completes a handshake or counts a received byte from the
    other although both sent and the relay altered frames from both; the honest relay on the
    same config then carries A↔B (the setup works, only the tampering stopped it)."""
    mesh, relay, a, b = blocked
    evil = _start_evil(mesh, relay, "tamper")
    for node in (a, b):
        mesh.join(node)
    ids = {a.name: mesh.control.node_id(a.name), b.name: mesh.control.node_id(b.name)}
    _wait_sessions(evil, *ids.values())
    pings = [_ping_window(a, b, TAMPER_WINDOW_S), _ping_window(b, a, TAMPER_WINDOW_S)]
    outputs = [proc.communicate(timeout=TAMPER_WINDOW_S + 15)[0] for proc in pings]
    for output in outputs:
        assert re.search(r"\b0 received\b", output), output
    counts = _evil_counts(evil)
    sources = _sources(counts)
    assert sources.get(ids["a"], 0) > 0, counts
    assert sources.get(ids["b"], 0) > 0, counts
    assert int(counts["altered"]) == int(counts["frames"]) > 0, counts
    for node, peer in ((a, b), (b, a)):
        handshake, rx, tx = _tunnel_view(node, peer)
        assert (handshake, rx) == (0, 0), f"{node.name} accepted something from {peer.name}"
        assert tx > 0, f"{node.name} sent nothing to {peer.name}"
    evil.stop()
    _restart(relay.program)
    started = time.monotonic()
    wait_for("A pings B through the honest relay", lambda: a.ping(b), RELAY_UP_S, interval=0.0)
    _timing("honest relay back → first ping through it", time.monotonic() - started)
    # Both directions: a ping can be lost while the controllers move from direct-trying back to
    # the relay (CI saw one), so B→A gets the same bound as A→B.
    wait_for("B pings A through the honest relay", lambda: b.ping(a), RELAY_UP_S, interval=0.0)
    wait_for("A's tunnel shows a handshake with B", lambda: _tunnel_view(a, b)[0] > 0, 5)


def test_replayed_frames_are_not_accepted_twice(blocked: tuple[Mesh, Relay, Node, Node]) -> None:
    """Every frame is forwarded twice (the copy 50 ms later): pings through the relay work, and
    none of 20 echo replies arrives twice although the relay replayed every frame of them."""
    mesh, relay, a, b = blocked
    evil = _start_evil(mesh, relay, "replay")
    for node in (a, b):
        mesh.join(node)
    started = time.monotonic()
    wait_for("A pings B through the relay", lambda: a.ping(b), RELAY_UP_S, interval=0.0)
    _timing("replaying relay: joined → first ping", time.monotonic() - started)
    # `status` says `relay` once a path controller has seen a handshake on it (its next tick).
    wait_for("A or B reports relay", lambda: "relay" in (a.path_to(b), b.path_to(a)), 10)
    time.sleep(0.5)  # the copies of the first pings are forwarded and counted
    before = int(_evil_counts(evil)["replayed"])
    done = run_in(a.ns, "ping", "-n", "-c", str(PINGS), "-i", "0.2", "-W", "2", b.overlay_ip)
    assert done.returncode == 0, done.stdout
    assert f"{PINGS} received" in done.stdout, done.stdout
    assert "DUP!" not in done.stdout, done.stdout
    assert "duplicates" not in done.stdout, done.stdout

    def replayed() -> int | None:
        count = int(_evil_counts(evil)["replayed"]) - before
        return count if count >= 2 * PINGS else None  # each request and each reply

    count, _ = wait_for("the relay replayed the pings", replayed, 3)
    print(f"e2e-count frames replayed during {PINGS} pings: {count}")


def _other_relay_block(relay: Relay) -> str:
    pin = spki_pin_of_pem_file(relay.config.parent / "tls" / "relay.crt").to_text()
    return (
        "\n[[relays]]\n"
        f'id = "{OTHER_RELAY}"\n'
        f'url = "wss://{CONTROL_IP}:{OTHER_RELAY_PORT}/v1/relay"\n'
        f'tls_spki_sha256 = "{pin}"\n'
    )


def _metric(sample: dict[str, float], name: str) -> float:
    return sample[f"rustynet_relay_{name}"]


def test_relay_refuses_missing_garbage_and_other_relays_tokens(mesh: Mesh) -> None:
    """From A's namespace with A's own identity: a frame before auth is dropped and counted and
    a garbage token closes 4401; a genuine control token for another listed relay is refused
    like garbage, while A's token for this relay is accepted; /metrics counts every refusal."""
    relay = start_control_with_relay(mesh)
    control_toml = mesh.control.data_dir / "control.toml"
    control_toml.write_text(control_toml.read_text() + _other_relay_block(relay))
    mesh.control.program.stop()
    mesh.control.restart()
    mesh.control.set_policy(ALLOW_ALL_POLICY, mesh.workdir)
    a, b = mesh.add_node("a"), mesh.add_node("b")
    for node in (a, b):
        mesh.join(node)
    a_id, b_id = mesh.control.node_id("a"), mesh.control.node_id("b")
    _wait_sessions(relay.program, a_id, b_id)  # B's session is live: frames for B would go
    done = run_in(
        a.ns,
        PYTHON,
        str(PROBE),
        "--state-dir",
        str(a.state_dir),
        "--passphrase-file",
        str(a.passphrase),
        "--relay-url",
        f"wss://{CONTROL_IP}:{relay.port}/v1/relay",
        "--relay-id",
        relay.relay_id,
        "--relay-pin",
        spki_pin_of_pem_file(relay.config.parent / "tls" / "relay.crt").to_text(),
        "--other-relay-id",
        OTHER_RELAY,
        "--destination",
        b_id,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # The tokens are genuine control tokens for A, differing only in the relay they name.
    assert result["node_id"] == a_id
    assert (result["own_token"]["aud"], result["own_token"]["sub"]) == (relay.relay_id, a_id)
    assert (result["other_token"]["aud"], result["other_token"]["sub"]) == (OTHER_RELAY, a_id)
    assert result["unauthenticated_send"] == "CLOSE 4401"
    assert result["garbage"] == "RelayUnauthorized"
    assert result["other_relay"] == "RelayUnauthorized"
    assert result["own"] == "accepted"
    before, refused, after = result["before"], result["refused"], result["after"]
    unauthenticated = 'frames_dropped_total{reason="unauthenticated"}'
    assert _metric(refused, "auth_failures_total") - _metric(before, "auth_failures_total") == 3
    assert _metric(refused, unauthenticated) - _metric(before, unauthenticated) == 1
    assert _metric(refused, "auth_successes_total") == _metric(before, "auth_successes_total")
    assert _metric(refused, "frames_forwarded_total") == _metric(before, "frames_forwarded_total")
    assert _metric(after, "auth_successes_total") - _metric(refused, "auth_successes_total") == 1
    assert _metric(after, "auth_failures_total") == _metric(refused, "auth_failures_total")
