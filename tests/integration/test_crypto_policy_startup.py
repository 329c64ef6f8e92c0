"""Each long-running program refuses to start when the crypto policy denies something it uses.

The setups are otherwise good (an initialised control plane, an initialised relay, a node
daemon on the memory backend): started without the override, each would print `ready;` (the
test fails at once if it does). The override (`--crypto-policy-override`, the operator setting of
docs/threat-model/crypto-policy.md §4) denies one algorithm the program relies on; the program
must exit 1 naming the denied use, and nothing may listen or be created.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rustynet.domain.keys import SigningKey
from tests.doubles import CountingEntropy
from tests.integration.test_control_cli import CONTROL, _env, _free_port, init_listening, run

BIN = Path(sys.executable).parent
RUSTYNETD = str(BIN / "rustynetd")
RELAY = str(BIN / "rustynet-relay")
EXIT_TIMEOUT = 30.0

pytestmark = pytest.mark.slow


def deny(tmp_path: Path, algorithm: str) -> Path:
    """An override (0600, like an operator's) that denies `algorithm`."""
    path = tmp_path / "crypto-policy-override.toml"
    path.write_text(f'version = 1\n[[deny]]\nname = "{algorithm}"\nreason = "site rule"\n')
    path.chmod(0o600)
    return path


def refused(argv: list[str]) -> str:
    """Run a server that must not start: its stderr after it exited 1 by itself.

    Fails at once if it prints `ready;` (the check was skipped) and after EXIT_TIMEOUT if it
    neither exits nor gets ready.
    """
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    timer = threading.Timer(EXIT_TIMEOUT, proc.kill)
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "ready;" in line:
                proc.kill()
                raise AssertionError("started despite the crypto policy:\n" + "".join(lines))
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert code == 1, f"exit {code}:\n" + "".join(lines)
    return "".join(lines)


def assert_refusal(stderr: str, override: Path, problem: str) -> None:
    assert "crypto policy" in stderr
    assert "refuses to start" in stderr
    assert str(override) in stderr  # the override was read, and is named as a source
    assert problem in stderr


def nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_control_serve_refuses_a_policy_denying_its_tls_certificate_algorithm(
    tmp_path: Path,
) -> None:
    """`rustynet-control serve` on an initialised data directory, ECDSA-P256 denied: exit 1."""
    port = _free_port()
    data_dir = tmp_path / "data"
    init_listening(data_dir, port)
    override = deny(tmp_path, "ECDSA-P256")
    stderr = refused(
        [
            CONTROL,
            "serve",
            "--data-dir",
            str(data_dir),
            "--crypto-policy-override",
            str(override),
        ]
    )
    assert stderr.startswith("rustynet-control serve: crypto policy")
    assert_refusal(stderr, override, "ECDSA-P256 is denied (site rule); sign refused")
    assert nothing_listens(port)


def test_rustynetd_refuses_a_policy_denying_its_tunnel_key_agreement(tmp_path: Path) -> None:
    """`rustynetd` (memory backend, file key store), X25519 denied: exit 1, no socket."""
    base = tmp_path / "node"
    base.mkdir(mode=0o700)
    passphrase = base / "keystore.pass"
    passphrase.write_text("correct horse battery staple, policy\n")
    passphrase.chmod(0o600)
    sock = base / "run" / "rustynetd.sock"
    config = base / "rustynetd.toml"
    config.write_text(
        f'state_dir = "{base / "state"}"\nsocket = "{sock}"\nbackend = "memory"\n'
        f'keystore = "file"\npassphrase_file = "{passphrase}"\n'
    )
    config.chmod(0o600)
    override = deny(tmp_path, "X25519")
    stderr = refused(
        [RUSTYNETD, "--config", str(config), "--crypto-policy-override", str(override)]
    )
    assert stderr.startswith("rustynetd: crypto policy")
    assert_refusal(stderr, override, "X25519 is denied (site rule); key-agreement refused")
    assert "[keys.py: tunnel keys]" in stderr
    assert not sock.exists()
    assert not (base / "state").exists()


def test_relay_serve_refuses_a_policy_denying_tls13(tmp_path: Path) -> None:
    """`rustynet-relay serve` on an initialised relay.toml, TLS1.3 denied: exit 1."""
    port = _free_port()
    config = tmp_path / "relay" / "relay.toml"
    config.parent.mkdir(mode=0o700)
    root = SigningKey.generate(CountingEntropy()).public_key.fingerprint().to_text()
    done = run(
        RELAY,
        "init",
        "--config",
        str(config),
        "--url",
        f"wss://127.0.0.1:{port}/v1/relay",
        "--control-url",
        "https://control.example.net:8443",
        "--root-fingerprint",
        root,
        "--id",
        "relay-policy",
        "--listen",
        f"127.0.0.1:{port}",
    )
    assert done.returncode == 0, done.stderr
    override = deny(tmp_path, "TLS1.3")
    stderr = refused(
        [RELAY, "serve", "--config", str(config), "--crypto-policy-override", str(override)]
    )
    assert stderr.startswith("rustynet-relay: crypto policy")
    assert_refusal(stderr, override, "TLS1.3 is denied (site rule); tls refused")
    assert nothing_listens(port)
