"""rustynetd as a process: a real control plane, wireguard-go and nftables, driven by the CLI.

Namespaces: the control plane and the daemons all run inside ONE fresh network namespace
(`ip netns exec`), so the control plane listens on that namespace's 127.0.0.1 and the daemon's
tunnel interface, routes and nftables table live there too, never in the host's namespace. The
CLI (`rustynet --socket ...`) runs in the test's own namespace: the local API is a UNIX socket,
a file, which namespaces do not separate. `rustynet admin` needs TCP, so it runs in the
namespace too.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from rustynet.adapters.cli.node import call
from rustynet.adapters.entropy import OsEntropy

from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.keys import KeyFingerprint
from tests.integration.test_control_cli import (
    CONTROL,
    RUSTYNET,
    _free_port,
    run,
    spawn_until_ready,
    terminate,
)
from tests.netns import Namespace, NetLab, require_root

RUSTYNETD = str(Path(sys.executable).parent / "rustynetd")

pytestmark = [pytest.mark.root, pytest.mark.slow]


@attrs.define
class Control:
    ns: Namespace
    data_dir: Path
    url: str
    proc: subprocess.Popen[str]
    log: list[str]
    reader: threading.Thread

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ns.run(
            RUSTYNET, "admin", "--config", str(self.data_dir / "admin.toml"), *args, check=False
        )

    def join_token(self) -> str:
        done = self.admin("keys", "create", "--ttl", "10m")
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def served(self) -> int:
        return sum("http.request_served" in line for line in list(self.log))


@attrs.define
class Daemon:
    config: Path
    socket: Path
    interface: str
    proc: subprocess.Popen[str] | None = None
    log: list[str] = attrs.Factory(list)
    reader: threading.Thread | None = None

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RUSTYNET, "--socket", str(self.socket), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def status(self) -> dict[str, object]:
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert isinstance(doc, dict)
        return doc


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    """A namespace lab for the module, removed afterwards even on failure."""
    require_root("ip", "wireguard-go", "nft")
    with NetLab() as made:
        yield made


@pytest.fixture(scope="module")
def control(lab: NetLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    """`rustynet-control init` + `serve` inside a fresh namespace (one for the module)."""
    ns = lab.namespace()
    data_dir = tmp_path_factory.mktemp("control") / "data"
    url = f"https://127.0.0.1:{_free_port()}"
    done = run(CONTROL, "init", "--data-dir", str(data_dir), "--url", url, "--keystore", "file")
    assert done.returncode == 0, done.stderr
    proc, log, reader = spawn_until_ready(
        ["ip", "netns", "exec", ns.name, CONTROL, "serve", "--data-dir", str(data_dir)]
    )
    plane = Control(ns, data_dir, url, proc, log, reader)
    yield plane
    terminate(proc, reader)


def _daemon(lab: NetLab, where: Path, name: str) -> Daemon:
    where.mkdir(mode=0o700)
    passphrase = where / "keystore.pass"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o600)
    interface = lab.interface_name()
    socket_path = where / "run" / "rustynetd.sock"
    config = where / "rustynetd.toml"
    config.write_text(
        f'state_dir = "state"\nsocket = "{socket_path}"\ninterface = "{interface}"\n'
        'backend = "userspace"\nkeystore = "file"\npassphrase_file = "keystore.pass"\n'
        'log_level = "info"\n'
    )
    return Daemon(config, socket_path, interface)


def _start(control: Control, daemon: Daemon) -> None:
    daemon.proc, daemon.log, daemon.reader = spawn_until_ready(
        ["ip", "netns", "exec", control.ns.name, RUSTYNETD, "--config", str(daemon.config)]
    )


def _stop(daemon: Daemon) -> int | None:
    assert daemon.proc is not None
    assert daemon.reader is not None
    return terminate(daemon.proc, daemon.reader)


def _wait_connected(daemon: Daemon, timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    doc = daemon.status()
    while time.monotonic() < deadline:
        doc = daemon.status()
        control = doc.get("control")
        if isinstance(control, dict) and control.get("connected"):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"never connected: {doc}\n" + "".join(daemon.log))


def _tables(ns: Namespace) -> str:
    return ns.run("nft", "list", "tables").stdout


def test_daemon_joins_reports_status_and_cleans_up_on_sigterm(
    lab: NetLab, control: Control, tmp_path: Path
) -> None:
    """up --token-file joins; status --json shows node/control/backend/serial; socket 0600;
    a second up is refused; SIGTERM removes interface, routes and the nftables table (exit 0);
    a restart on the same state directory keeps identity and address without a token."""
    daemon = _daemon(lab, tmp_path / "a", "alpha")
    _start(control, daemon)
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    assert daemon.status()["state"] == "not_enrolled"

    token_file = tmp_path / "a" / "token"
    token_file.write_text(control.join_token() + "\n")
    up = daemon.cli("up", "--token-file", str(token_file), "--hostname", "alpha")
    assert up.returncode == 0, up.stderr + "".join(daemon.log)
    doc = _wait_connected(daemon)
    node, ctl = doc["node"], doc["control"]
    assert isinstance(node, dict)
    assert isinstance(ctl, dict)
    assert doc["state"] == "running"
    assert node["name"] == "alpha"
    assert str(node["overlay_ip"]).startswith("100.")
    assert ctl["url"] == control.url
    assert doc["backend"] == "wireguard-userspace"
    assert isinstance(doc["peermap_serial"], int)
    assert doc["peermap_serial"] >= 1
    assert doc["peers"] == []
    ns = control.ns
    assert daemon.interface in ns.links()
    assert str(node["overlay_ip"]) in ns.ip("-o", "addr", "show", "dev", daemon.interface)
    assert f"rustynet-{daemon.interface}" in _tables(ns)
    metrics = call(daemon.socket, "GET", "/metrics")
    assert isinstance(metrics, str)
    assert "rustynet_control_connected 1" in metrics
    assert 'backend="wireguard-userspace"' in metrics

    again = daemon.cli("up", "--token", control.join_token())
    assert again.returncode == 1
    assert "already enrolled" in again.stderr

    assert _stop(daemon) == 0
    assert daemon.interface not in ns.links()
    assert f"rustynet-{daemon.interface}" not in _tables(ns)
    assert daemon.interface not in ns.ip("route", "show", "table", "all")
    assert not daemon.socket.exists()
    assert not Path("/var/run/wireguard", f"{daemon.interface}.sock").exists()

    _start(control, daemon)
    restarted = daemon.status()  # enrolled: the tunnel is up before the socket answers
    assert restarted["node"] == node
    assert restarted["peermap_serial"] == doc["peermap_serial"]
    assert str(node["overlay_ip"]) in ns.ip("-o", "addr", "show", "dev", daemon.interface)
    assert restarted["state"] == "running"
    assert _stop(daemon) == 0
    assert daemon.interface not in ns.links()


def test_foreign_token_is_refused_before_anything_is_sent(
    lab: NetLab, control: Control, tmp_path: Path
) -> None:
    """A token pinning another control plane's TLS key: up fails, no request reaches control,
    and the daemon stays not enrolled with no interface."""
    daemon = _daemon(lab, tmp_path / "b", "bravo")
    _start(control, daemon)
    try:
        entropy = OsEntropy()
        foreign = JoinToken.create(
            control_url=control.url,
            root_fingerprint=KeyFingerprint(entropy.token_bytes(32)),
            tls_spki_sha256=entropy.token_bytes(32),
            entropy=entropy,
        ).to_text()
        served = control.served()
        done = daemon.cli("up", "--token-file", "-", "--hostname", "bravo", stdin=foreign)
        assert done.returncode == 1
        assert "trust" in done.stderr
        assert foreign not in done.stderr
        assert control.served() == served
        assert daemon.status()["state"] == "not_enrolled"
        assert daemon.interface not in control.ns.links()
        assert not any(foreign in line for line in daemon.log)
    finally:
        assert _stop(daemon) == 0


def test_missing_identity_key_stops_start_up(lab: NetLab, control: Control, tmp_path: Path) -> None:
    """An enrolled node whose identity key vanished refuses to start (exit 1), never re-keys."""
    daemon = _daemon(lab, tmp_path / "c", "charlie")
    _start(control, daemon)
    token = control.join_token()
    assert daemon.cli("up", "--token", token, "--hostname", "charlie").returncode == 0
    assert _stop(daemon) == 0
    (tmp_path / "c" / "state" / "keys" / "node.identity").unlink()
    done = subprocess.run(
        ["ip", "netns", "exec", control.ns.name, RUSTYNETD, "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "node.identity" in done.stderr
    assert daemon.interface not in control.ns.links()
    assert (tmp_path / "c" / "state" / "node-state.json").exists()
