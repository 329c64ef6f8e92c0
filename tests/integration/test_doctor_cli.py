"""`rustynet doctor` through the installed console script, as an operator runs it.

Each test builds a real state directory (keys written by the real FileKeystore), runs
`.venv/bin/rustynet doctor` as a subprocess with no terminal, and checks the exit code and the
report: 0 when everything passes, 1 naming the problem when a check fails, 2 on usage errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from rustynet.adapters.keystore.encrypted_file import FileKeystore
from rustynet.adapters.keystore.passphrase import CREDENTIAL_NAME

RUSTYNET = Path(sys.executable).parent / "rustynet"
PASSPHRASE = b"correct horse battery staple"


@attrs.frozen
class Run:
    """A finished doctor run."""

    code: int
    stdout: str
    stderr: str

    def report(self) -> dict[str, Any]:
        """The parsed --json document."""
        doc = json.loads(self.stdout)
        assert isinstance(doc, dict)
        return doc

    def check(self, name: str) -> dict[str, Any]:
        """One check from the JSON report."""
        for c in self.report()["checks"]:
            if c["name"] == name:
                assert isinstance(c, dict)
                return c
        raise AssertionError(f"no check {name!r} in {self.stdout}")


def _doctor(*args: str, env_extra: dict[str, str] | None = None) -> Run:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RUSTYNET") and k != "CREDENTIALS_DIRECTORY"
    }
    env.update(env_extra or {})
    proc = subprocess.run(
        [str(RUSTYNET), "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@attrs.frozen
class State:
    """A provisioned node state directory and its systemd-style credentials directory."""

    state: Path
    keys: Path
    creds: Path

    def env(self) -> dict[str, str]:
        """Environment as systemd LoadCredential= sets it."""
        return {"CREDENTIALS_DIRECTORY": str(self.creds)}


@pytest.fixture
def state(tmp_path: Path) -> State:
    """State dir 0700 with one encrypted key, and a 0400 credential holding the passphrase."""
    tmp_path.chmod(0o755)
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    store = FileKeystore(state_dir / "keys", bytearray(PASSPHRASE))
    store.open()
    store.put("node-identity", b"\x42" * 32)
    store.close()
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o500)
    cred = creds / CREDENTIAL_NAME
    cred.write_bytes(PASSPHRASE)
    cred.chmod(0o400)
    return State(state_dir, state_dir / "keys", creds)


def test_console_script_is_installed() -> None:
    """The `rustynet` console script exists next to the interpreter running the tests."""
    assert RUSTYNET.is_file()
    assert os.access(RUSTYNET, os.X_OK)


def test_doctor_passes_on_a_good_setup(state: State) -> None:
    """Private keys + credential passphrase: exit 0 and every check passes, in JSON."""
    run = _doctor("--json", "--state-dir", str(state.state), env_extra=state.env())
    assert run.code == 0, run.stdout + run.stderr
    assert run.report()["ok"] is True
    assert [c["name"] for c in run.report()["checks"]] == [
        "crypto-policy",
        "keystore",
        "keystore-permissions",
        "passphrase-source",
    ]
    keystore = run.check("keystore")
    assert keystore["status"] == "pass"
    assert keystore["details"]["kind"] == "encrypted-file"
    assert keystore["details"]["location"] == str(state.keys)
    assert run.check("crypto-policy")["status"] == "pass"
    assert run.check("keystore-permissions")["status"] == "pass"
    passphrase = run.check("passphrase-source")
    assert passphrase["status"] == "pass"
    assert passphrase["details"]["kind"] == "credential"


def test_doctor_fails_when_the_crypto_policy_denies_an_algorithm_in_use(
    state: State, tmp_path: Path
) -> None:
    """An override denying Ed25519 (which every program signs and verifies with): the
    crypto-policy check fails naming both uses, the report is not ok, exit 1; the other checks
    still run. The same setup without the override passes (the only difference)."""
    override = tmp_path / "crypto-policy-override.toml"
    override.write_text('version = 1\n[[deny]]\nname = "Ed25519"\nreason = "site rule"\n')
    override.chmod(0o600)
    args = ("--json", "--state-dir", str(state.state))
    assert _doctor(*args, env_extra=state.env()).code == 0
    run = _doctor(*args, "--crypto-policy-override", str(override), env_extra=state.env())
    assert run.code == 1, run.stdout + run.stderr
    assert run.report()["ok"] is False
    check = run.check("crypto-policy")
    assert check["status"] == "fail"
    assert check["summary"] == "the crypto policy refuses start-up"
    problems = "\n".join(check["problems"])
    assert str(override) in problems  # the override was read and is named as a source
    assert "Ed25519 is denied (site rule); sign refused" in problems
    assert "Ed25519 is denied (site rule); verify refused" in problems
    assert run.check("keystore-permissions")["status"] == "pass"
    human = _doctor(*args[1:], "--crypto-policy-override", str(override), env_extra=state.env())
    assert human.code == 1
    assert "[FAIL] crypto-policy: the crypto policy refuses start-up" in human.stdout
    assert "some checks FAILED" in human.stdout


def test_doctor_fails_on_a_world_readable_key_file(state: State) -> None:
    """A 0644 key file: exit 1, the report names the file and both modes; mode unchanged."""
    key_file = state.keys / "node-identity"
    key_file.chmod(0o644)
    run = _doctor("--json", "--state-dir", str(state.state), env_extra=state.env())
    assert run.code == 1, run.stdout + run.stderr
    assert run.report()["ok"] is False
    perms = run.check("keystore-permissions")
    assert perms["status"] == "fail"
    problems = perms["problems"]
    assert isinstance(problems, list)
    assert any(str(key_file) in p and "0644" in p and "0600" in p for p in problems)
    assert key_file.stat().st_mode & 0o777 == 0o644


def test_human_report_names_the_problem(state: State) -> None:
    """Without --json the operator sees FAIL, the path and the expected mode; exit 1."""
    state.keys.chmod(0o755)
    run = _doctor("--state-dir", str(state.state), env_extra=state.env())
    assert run.code == 1
    assert "[FAIL] keystore-permissions" in run.stdout
    assert f"{state.keys}: directory mode is not private (found 0755, expected 0700)" in run.stdout


def test_doctor_refuses_a_passphrase_in_the_environment(state: State) -> None:
    """RUSTYNET_PASSPHRASE set: the passphrase check fails (exit 1) and says why."""
    run = _doctor(
        "--json",
        "--state-dir",
        str(state.state),
        env_extra={**state.env(), "RUSTYNET_PASSPHRASE": "hunter2"},
    )
    assert run.code == 1
    check = run.check("passphrase-source")
    assert check["status"] == "fail"
    assert "RUSTYNET_PASSPHRASE" in str(check["problems"])
    assert "hunter2" not in run.stdout + run.stderr


def test_doctor_warns_that_a_passphrase_file_is_weaker(state: State, tmp_path: Path) -> None:
    """A passphrase file passes with a warning saying it is weaker (exit 0)."""
    path = tmp_path / "passphrase"
    path.write_bytes(PASSPHRASE)
    path.chmod(0o600)
    run = _doctor("--json", "--state-dir", str(state.state), "--passphrase-file", str(path))
    assert run.code == 0, run.stdout + run.stderr
    check = run.check("passphrase-source")
    assert check["status"] == "warn"
    assert "weaker" in str(check["problems"])


def test_doctor_fails_on_a_loose_passphrase_file(state: State, tmp_path: Path) -> None:
    """A 0644 passphrase file fails the passphrase check (exit 1)."""
    path = tmp_path / "passphrase"
    path.write_bytes(PASSPHRASE)
    path.chmod(0o644)
    run = _doctor("--json", "--state-dir", str(state.state), "--passphrase-file", str(path))
    assert run.code == 1
    assert run.check("passphrase-source")["status"] == "fail"


def test_doctor_reports_os_keystore_unavailable_on_a_headless_host(tmp_path: Path) -> None:
    """--keystore os with keyring's fail backend: exit 1, naming the backend."""
    run = _doctor("--json", "--state-dir", str(tmp_path), "--keystore", "os")
    if run.code == 0:
        pytest.skip("this host has a real keyring backend")
    assert run.code == 1
    assert "keyring.backends.fail.Keyring" in str(run.check("keystore")["problems"])


@pytest.mark.parametrize(
    "args", [("--keystore", "plaintext"), ("--bogus",), ("--passphrase-fd", "1")]
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    """Unknown options, bad choices and terminal descriptors are usage errors (exit 2)."""
    run = _doctor(*args)
    assert run.code == 2
    assert "usage:" in run.stderr
