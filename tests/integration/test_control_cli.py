"""The operator path end to end: `rustynet-control init/serve` and `rustynet admin ...` as
subprocesses over real TLS, with a simulated node enrolling through the pinned client.

One server serves the whole module (start-up costs seconds); tests run in file order and build
on each other like an operator session: init → keys → API keys → policy → a node enrolls,
verifies its peer map and is revoked → audit → wrong pin → SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from rustynet.adapters.control_client import ControlClient, NodeAuth
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.tls_cert import create_self_signed

from rustynet.domain.enrollment import EnrollmentClient, IssueChallenge
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.key_hierarchy import issue_tunnel_key_binding
from rustynet.domain.keys import (
    SigningKey,
    TunnelKeyScheme,
    TunnelPrivateKey,
    b64decode,
    b64encode,
)
from rustynet.domain.netmap import PeerMapAcceptor, PeerMapTrust
from rustynet.domain.tls_pin import SpkiPin
from rustynet.ports.control_api import ControlRejected

BIN = Path(sys.executable).parent
CONTROL = str(BIN / "rustynet-control")
RUSTYNET = str(BIN / "rustynet")
START_TIMEOUT = 30.0
POLICY = {
    "tagOwners": {"tag:server": [], "tag:client": []},
    "acls": [{"action": "accept", "src": ["tag:client"], "dst": ["tag:server:22"], "proto": "tcp"}],
}

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["HOME"] = "/nonexistent"  # the admin CLI must not fall back to a real ~/.config
    return env


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a console script, capture text output."""
    return subprocess.run(  # noqa: PLW1510 - callers assert on returncode
        list(args), capture_output=True, text=True, timeout=timeout, env=_env()
    )


@attrs.define
class Plane:
    """A live control plane subprocess and what init made."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[str]
    log: list[str]
    reader: threading.Thread

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_toml(self) -> Path:
        return self.data_dir / "admin.toml"

    def admin(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run(RUSTYNET, "admin", "--config", str(config or self.admin_toml), *args)

    def admin_json(self, *args: str) -> object:
        done = self.admin("--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def served(self) -> int:
        return sum("http.request_served" in line for line in list(self.log))

    def pin(self) -> SpkiPin:
        for line in self.admin_toml.read_text().splitlines():
            if line.startswith("spki_pin"):
                return SpkiPin.from_text(line.split("=", 1)[1].strip().strip('"'))
        raise AssertionError("no pin in admin.toml")


def init_listening(data_dir: Path, port: int) -> None:
    """`rustynet-control init` (file key store) for https://127.0.0.1:PORT, listening there."""
    done = run(
        CONTROL,
        "init",
        "--data-dir",
        str(data_dir),
        "--url",
        f"https://127.0.0.1:{port}",
        "--listen",
        f"127.0.0.1:{port}",
        "--keystore",
        "file",
    )
    assert done.returncode == 0, done.stderr


def spawn_until_ready(
    argv: list[str],
) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """Start a server whose stderr is collected by a thread; return once it logs `ready;`."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    log: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "ready;" in line:
                ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if not ready.wait(START_TIMEOUT):
        proc.kill()
        proc.wait()
        raise AssertionError("server did not start:\n" + "".join(log))
    return proc, log, reader


def terminate(proc: subprocess.Popen[str], reader: threading.Thread) -> int | None:
    """SIGTERM (SIGKILL after 10 s) unless it already exited; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(5)
    if proc.stderr is not None:
        proc.stderr.close()
    return proc.returncode


def _start(data_dir: Path, port: int) -> Plane:
    proc, log, reader = spawn_until_ready([CONTROL, "serve", "--data-dir", str(data_dir)])
    return Plane(data_dir, port, proc, log, reader)


def _stop(plane: Plane) -> int | None:
    return terminate(plane.proc, plane.reader)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """init + serve on 127.0.0.1:<free port>; stopped with SIGTERM at the end."""
    data_dir = tmp_path_factory.mktemp("control") / "data"
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    done = run(CONTROL, "init", "--data-dir", str(data_dir), "--url", url, "--keystore", "file")
    assert done.returncode == 0, done.stderr
    assert "keystore.pass" in done.stdout
    assert "theft of the keys directory ALONE" in done.stdout
    started = _start(data_dir, port)
    yield started
    _stop(started)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- init -----------------------------------------------------------------------------------------


def test_init_creates_every_file_private(plane: Plane) -> None:
    """init made config, keys, TLS, database and admin files, secrets 0600, dirs 0700."""
    d = plane.data_dir
    for name in ("admin.key", "keystore.pass", "tls/control.key", "control.toml", "admin.toml"):
        assert _mode(d / name) == 0o600, name
    for name in ("keys", "tls"):
        assert _mode(d / name) == 0o700, name
    assert _mode(d / "control.db") & 0o077 == 0
    assert {p.name for p in (d / "keys").iterdir()} >= {
        "control-root-key",
        "control-signing-key",
        "control-audit-key",
    }
    assert (d / "admin.key").read_text().startswith("rnk_")
    assert "rnk_" not in (d / "admin.toml").read_text()
    assert f"https://127.0.0.1:{plane.port}" in (d / "control.toml").read_text()


def test_init_twice_refuses_and_changes_nothing(plane: Plane) -> None:
    """A second init on the same directory exits 1 with a clear message; files unchanged."""
    before = {p: p.read_bytes() for p in plane.data_dir.glob("*") if p.is_file()}
    done = run(CONTROL, "init", "--data-dir", str(plane.data_dir), "--url", plane.url)
    assert done.returncode == 1
    assert "already initialised" in done.stderr
    assert {p: p.read_bytes() for p in before} == before


# --- join keys ------------------------------------------------------------------------------------


def test_keys_create_prints_only_the_join_token(plane: Plane) -> None:
    """stdout is exactly one line, the rnjoin1_ token; list shows the key without its secret."""
    done = plane.admin("keys", "create", "--ttl", "10m")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rnjoin1_")
    token = JoinToken.parse(lines[0])
    listed = plane.admin("keys", "list")
    assert listed.returncode == 0
    assert token.token_id.to_text() in listed.stdout
    assert lines[0] not in listed.stdout


def test_keys_revoke_then_list_shows_revoked(plane: Plane) -> None:
    """A revoked join key is listed as revoked; revoking an unknown id exits 2."""
    token = JoinToken.parse(plane.admin("keys", "create").stdout.strip())
    key_id = token.token_id.to_text()
    assert plane.admin("keys", "revoke", key_id).returncode == 0
    keys = plane.admin_json("keys", "list")
    assert isinstance(keys, list)
    states = {k["id"]: k["state"] for k in keys}
    assert states[key_id] == "revoked"
    missing = plane.admin("keys", "revoke", "rncred_AAAAAAAAAAAAAAAAAAAAAA")
    assert missing.returncode == 2
    assert "not_found" in missing.stderr or "404" in missing.stderr


def test_usage_errors_exit_1(plane: Plane) -> None:
    """Bad arguments and a missing config file are usage errors (exit 1), not server errors."""
    assert plane.admin("keys", "create", "--ttl", "soon").returncode == 1
    assert plane.admin("keys", "frobnicate").returncode == 1
    assert plane.admin("keys", "list", config=plane.data_dir / "absent.toml").returncode == 1


# --- API keys -------------------------------------------------------------------------------------


def _config_with_key(plane: Plane, key: str, where: Path) -> Path:
    key_file = where / "other.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    text = plane.admin_toml.read_text()
    config = where / "other.toml"
    lines = [ln for ln in text.splitlines() if not ln.startswith("key_file")]
    config.write_text("\n".join([*lines, f'key_file = "{key_file}"']) + "\n")
    return config


def test_apikeys_create_list_scope_and_revoke(plane: Plane, tmp_path: Path) -> None:
    """A read-only key may list but not create join keys (exit 2); once revoked it fails."""
    done = plane.admin("apikeys", "create", "--scope", "read-only", "--ttl", "1d")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("rnk_")
    assert len(done.stdout.splitlines()) == 1
    key_id = key.split("_")[1]
    listed = plane.admin_json("apikeys", "list")
    assert isinstance(listed, list)
    assert key_id in {k["id"] for k in listed}
    assert key not in json.dumps(listed)
    config = _config_with_key(plane, key, tmp_path)
    assert plane.admin("keys", "list", config=config).returncode == 0
    forbidden = plane.admin("keys", "create", config=config)
    assert forbidden.returncode == 2
    assert "forbidden" in forbidden.stderr
    assert plane.admin("apikeys", "revoke", key_id).returncode == 0
    revoked = plane.admin("keys", "list", config=config)
    assert revoked.returncode == 2
    assert "unauthorized" in revoked.stderr


# --- policy ---------------------------------------------------------------------------------------


def test_policy_check_bad_file_exits_2_with_pointer(plane: Plane, tmp_path: Path) -> None:
    """An invalid policy is rejected by the server with a JSON pointer; nothing changes."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"acls": [{"action": "accept", "src": ["tag:nobody"]}]}))
    done = plane.admin("policy", "check", str(bad))
    assert done.returncode == 2
    assert " at /acls/0" in done.stderr
    assert plane.admin("policy", "set", str(bad)).returncode == 2
    unparsable = tmp_path / "broken.json"
    unparsable.write_text("{not json")
    assert plane.admin("policy", "check", str(unparsable)).returncode == 1


def test_policy_set_get_check(plane: Plane, tmp_path: Path) -> None:
    """A valid policy checks, goes live with a version, and reads back."""
    good = tmp_path / "policy.json"
    good.write_text(json.dumps(POLICY))
    assert plane.admin("policy", "check", str(good)).returncode == 0
    done = plane.admin("policy", "set", str(good))
    assert done.returncode == 0, done.stderr
    assert "is live" in done.stdout
    info = plane.admin_json("policy", "get")
    assert isinstance(info, dict)
    assert info["document"] == POLICY
    assert info["version"] >= 1


# --- a node ---------------------------------------------------------------------------------------


async def _enroll(join_text: str, hostname: str) -> tuple[str, NodeAuth, PeerMapAcceptor]:
    """Enroll like a node would: keys, binding, challenge, proof; trust from the join token."""
    entropy = OsEntropy()
    now = datetime.now(UTC)
    token = JoinToken.parse(join_text)
    identity = SigningKey.generate(entropy)
    tunnel = TunnelPrivateKey.generate(entropy, TunnelKeyScheme.X25519).public_key
    binding = issue_tunnel_key_binding(identity, tunnel, now)
    machine = EnrollmentClient(identity, tunnel, hostname)
    machine.start(token.token_id.to_text())
    async with ControlClient(token.control_url, SpkiPin(token.tls_spki_sha256)) as client:
        challenge = await client.enroll(
            join_secret=join_text,
            identity_key=identity.public_key.to_text(),
            tunnel_key=tunnel.to_text(),
            tunnel_key_binding=binding.to_text(),
            hostname=hostname,
        )
        challenge_id, expires_at = challenge["challenge_id"], challenge["expires_at"]
        assert isinstance(challenge_id, str)
        assert isinstance(expires_at, str)
        proof = machine.receive(
            IssueChallenge(b64decode(challenge_id), datetime.fromisoformat(expires_at))
        )
        assert proof is not None
        result = await client.complete_enrollment(
            challenge_id=challenge_id, signature=b64encode(proof.signature)
        )
    node_id, access, trust = result["node_id"], result["access_token"], result["trust"]
    assert isinstance(node_id, str)
    assert isinstance(access, str)
    assert isinstance(trust, dict)
    root, signing = trust["root_certificate"], trust["signing_certificates"]
    assert isinstance(root, str)
    assert isinstance(signing, list)
    pinned = PeerMapTrust.from_texts(
        root, token.root_fingerprint, [str(s) for s in signing], datetime.now(UTC)
    )
    return node_id, NodeAuth(node_id, access), PeerMapAcceptor(pinned, node_id)


async def _peer_map(url: str, pin: SpkiPin, auth: NodeAuth, acceptor: PeerMapAcceptor) -> set[str]:
    async with ControlClient(url, pin) as client:
        response = await client.peer_map(auth, after=acceptor.watermark, timeout=10)
    assert response is not None
    envelope = response["envelope"]
    assert isinstance(envelope, str)
    peer_map = acceptor.accept(envelope, datetime.now(UTC))
    assert peer_map.addressee == auth.node_id
    return {p.id for p in peer_map.peers}


def test_node_enrolls_verifies_peer_map_is_revoked_and_audited(plane: Plane) -> None:
    """Join key from the CLI → node enrolls over pinned TLS → verifies its signed peer map →
    admin tags, shows and revokes it → its token fails → the audit log shows it and verifies."""
    server_key = plane.admin("keys", "create", "--tags", "tag:server").stdout.strip()
    client_key = plane.admin("keys", "create", "--tags", "tag:client").stdout.strip()
    server_id, server_auth, server_acc = asyncio.run(_enroll(server_key, "web1"))
    client_id, client_auth, client_acc = asyncio.run(_enroll(client_key, "laptop"))
    pin = plane.pin()
    assert asyncio.run(_peer_map(plane.url, pin, client_auth, client_acc)) == {server_id}
    assert asyncio.run(_peer_map(plane.url, pin, server_auth, server_acc)) == {client_id}

    nodes = plane.admin("nodes", "list")
    assert nodes.returncode == 0
    assert "web1" in nodes.stdout
    assert "laptop" in nodes.stdout
    shown = plane.admin_json("nodes", "show", "laptop")
    assert isinstance(shown, dict)
    assert shown["id"] == client_id
    tagged = plane.admin("nodes", "tag", "laptop", "--tags", "tag:client,tag:server")
    assert tagged.returncode == 0, tagged.stderr
    shown = plane.admin_json("nodes", "show", client_id)
    assert isinstance(shown, dict)
    assert sorted(shown["tags"]) == ["tag:client", "tag:server"]

    revoked = plane.admin("nodes", "revoke", "laptop")
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(ControlRejected) as caught:
        asyncio.run(_peer_map(plane.url, pin, client_auth, client_acc))
    assert caught.value.status == 401
    assert asyncio.run(_peer_map(plane.url, pin, server_auth, server_acc)) == set()

    audit = plane.admin_json("audit", "list")
    assert isinstance(audit, dict)
    entries = audit["entries"]
    assert isinstance(entries, list)
    actions = [(e["action"], e["target"]) for e in entries]
    assert any(t == client_id and "revoke" in a for a, t in actions), actions
    assert any("enroll" in a for a, _ in actions), actions
    table = plane.admin("audit", "list")
    assert table.returncode == 0
    assert client_id in table.stdout
    verified = plane.admin("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("ok")


# --- trust ----------------------------------------------------------------------------------------


def test_wrong_pin_exits_3_and_no_request_reaches_the_server(plane: Plane, tmp_path: Path) -> None:
    """admin.toml pinned to another key: exit 3, and the server served no request for it."""
    other = create_self_signed(
        plane.url, tmp_path / "o.crt", tmp_path / "o.key", now=datetime.now(UTC)
    )
    text = plane.admin_toml.read_text().replace(plane.pin().to_text(), other.pin.to_text())
    config = tmp_path / "wrong-pin.toml"
    config.write_text(text)
    time.sleep(0.3)  # let earlier access-log lines arrive
    before = plane.served()
    done = plane.admin("keys", "create", config=config)
    assert done.returncode == 3
    assert "not the pinned" in done.stderr
    assert done.stdout == ""
    time.sleep(0.5)
    assert plane.served() == before


def test_unreachable_server_exits_3(plane: Plane, tmp_path: Path) -> None:
    """Nothing listening at the configured URL: exit 3."""
    text = plane.admin_toml.read_text().replace(f":{plane.port}", f":{_free_port()}")
    config = tmp_path / "nowhere.toml"
    config.write_text(text)
    done = plane.admin("nodes", "list", config=config)
    assert done.returncode == 3
    assert "cannot reach" in done.stderr


def test_sigterm_stops_the_server_cleanly(plane: Plane) -> None:
    """SIGTERM → exit 0 within a few seconds, and the data stay valid for a restart."""
    started = time.monotonic()
    plane.proc.send_signal(signal.SIGTERM)
    assert plane.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    again = _start(plane.data_dir, plane.port)
    try:
        verified = again.admin("audit", "verify")
        assert verified.returncode == 0, verified.stderr
        assert again.admin("nodes", "list").returncode == 0
    finally:
        assert _stop(again) == 0


# --- durability ----------------------------------------------------------------------------------


async def _enroll_many(plane: Plane, count: int, kill_after: int) -> tuple[set[str], int]:
    """Create `count` one-time keys, enroll concurrently, SIGKILL the server mid-way.

    Returns (node ids whose enrollment was answered, number of enrollments that failed)."""
    api_key = (plane.data_dir / "admin.key").read_bytes().strip()
    async with ControlClient(plane.url, plane.pin(), api_key=api_key) as admin:
        tokens = [
            str(
                (await admin.create_join_key(reusable=False, uses=None, tags=[], ttl_seconds=600))[
                    "token"
                ]
            )
            for _ in range(count)
        ]
    done: set[str] = set()
    failed = 0
    enough = asyncio.Event()

    async def one(i: int, token: str) -> None:
        nonlocal failed
        try:
            node_id, _, _ = await _enroll(token, f"load{i}")
        except Exception:  # noqa: BLE001 - a killed server fails requests in many ways
            failed += 1
            return
        done.add(node_id)
        if len(done) >= kill_after:
            enough.set()

    tasks = [asyncio.create_task(one(i, t)) for i, t in enumerate(tokens)]
    await asyncio.wait_for(enough.wait(), 30)
    plane.proc.send_signal(signal.SIGKILL)
    await asyncio.gather(*tasks)
    return done, failed


def test_kill_9_during_enrollment_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL under enrollment load, restart: every answered enrollment is a node, every used
    join key has its node (used == nodes), and the audit chain verifies. (The load stays under
    the per-IP enrollment limit: every client here is 127.0.0.1.)"""
    data_dir = tmp_path / "data"
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    init = run(CONTROL, "init", "--data-dir", str(data_dir), "--url", url, "--keystore", "file")
    assert init.returncode == 0, init.stderr
    plane = _start(data_dir, port)
    try:
        answered, _ = asyncio.run(_enroll_many(plane, count=6, kill_after=2))
    finally:
        assert _stop(plane) == -signal.SIGKILL
    again = _start(data_dir, port)
    try:
        nodes = again.admin_json("nodes", "list")
        keys = again.admin_json("keys", "list")
        assert isinstance(nodes, list)
        assert isinstance(keys, list)
        node_ids = {n["id"] for n in nodes}
        assert answered <= node_ids
        used = [k for k in keys if k["state"] in ("used", "exhausted")]
        assert len(used) == len(node_ids)
        verified = again.admin("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        assert _stop(again) == 0
