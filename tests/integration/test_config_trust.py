"""Config files another user could have written are refused by every program that loads one.

A config names the state directory, the socket and its group, the key store and passphrase
file, the database, the TLS key and the trusted root: whoever can write it controls the
program. rustynetd.toml, control.toml, admin.toml and relay.toml are read through one check
(`rustynet.adapters.support.config_file`): not group/world-writable, owned by us or root, a regular
file, in a directory others cannot write to (sticky bit excepted). The TLS private keys those
configs name must be private like key files. Each refusal is tried through the loaders and
through the four console scripts (exit 1, the code of every other config error), with a
message that names the path, what was found and the fix.

Also here: an unreadable passphrase file and an unusable join token file, both clear messages
with exit 1.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from rustynet.adapters.cli import main as cli
from rustynet.adapters.cli import node as node_cli
from rustynet.adapters.config import (
    AdminConfig,
    ConfigError,
    load_admin_config,
    load_control_config,
    load_node_config,
    render_admin_config,
    render_control_config,
)
from rustynet.adapters.relay.config import (
    RelayConfig,
    RelayConfigError,
    load_relay_config,
    render_relay_config,
)
from rustynet.adapters.support.config_file import ConfigFileRefused, read_config_file

from rustynet.domain.keys import KeyFingerprint
from rustynet.domain.tls_pin import SpkiPin
from tests.integration.test_config_files import sample_control_config

BIN = Path(sys.executable).parent
NOBODY = 65534


def _control_text(base: Path) -> str:
    return render_control_config(sample_control_config(base), base)


def _relay_text(base: Path) -> str:
    return render_relay_config(
        RelayConfig(
            relay_id="relay-1",
            url="wss://relay.example.org:8444/v1/relay",
            listen=("127.0.0.1", 8444),
            control_url="https://ctl.example.org:8443",
            root_fingerprint=KeyFingerprint(bytes(range(32))),
            certificate=base / "tls" / "relay.crt",
            private_key=base / "tls" / "relay.key",
        ),
        base,
    )


def _admin_text(base: Path) -> str:
    return render_admin_config(
        AdminConfig("https://127.0.0.1:8443", SpkiPin(bytes(32)), base / "admin.key")
    )


def _node_text(base: Path) -> str:
    return f'state_dir = "state"\nsocket = "{base}/run/rustynetd.sock"\nbackend = "memory"\n'


# name, file name, text, loader, error class
LOADERS: list[tuple[str, str, Callable[[Path], str], Callable[[Path], object], type]] = [
    ("rustynetd", "rustynetd.toml", _node_text, load_node_config, ConfigError),
    ("control", "control.toml", _control_text, load_control_config, ConfigError),
    ("admin", "admin.toml", _admin_text, load_admin_config, ConfigError),
    ("relay", "relay.toml", _relay_text, load_relay_config, RelayConfigError),
]
IDS = [entry[0] for entry in LOADERS]


def _write(tmp_path: Path, name: str, text: Callable[[Path], str], mode: int) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory.chmod(0o755)
    path = directory / name
    path.write_text(text(directory))
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("_n", "name", "text", "load", "error"), LOADERS, ids=IDS)
@pytest.mark.parametrize("mode", [0o644, 0o600, 0o400], ids=["0644", "0600", "0400"])
def test_private_or_read_only_configs_load(
    tmp_path: Path,
    _n: str,
    name: str,
    text: Callable[[Path], str],
    load: Callable[[Path], object],
    error: type,
    mode: int,
) -> None:
    """Positive control: a config only its owner can write loads (world-readable is fine)."""
    load(_write(tmp_path, name, text, mode))


@pytest.mark.parametrize(("_n", "name", "text", "load", "error"), LOADERS, ids=IDS)
@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o666, "group and others"), (0o664, "its group"), (0o646, "others")],
    ids=["0666", "0664", "0646"],
)
def test_config_writable_by_others_is_refused(
    tmp_path: Path,
    _n: str,
    name: str,
    text: Callable[[Path], str],
    load: Callable[[Path], object],
    error: type,
    mode: int,
    who: str,
) -> None:
    """The 0666 config the issue found (and 0664, 0646) is refused before it is parsed."""
    path = _write(tmp_path, name, text, mode)
    with pytest.raises(error) as caught:
        load(path)
    message = str(caught.value)
    assert f"{path}: writable by {who} (mode {mode:04o})" in message
    assert f"chmod go-w {path}" in message


@pytest.mark.parametrize(("_n", "name", "text", "load", "error"), LOADERS, ids=IDS)
def test_config_owned_by_another_user_is_refused(
    tmp_path: Path,
    _n: str,
    name: str,
    text: Callable[[Path], str],
    load: Callable[[Path], object],
    error: type,
) -> None:
    """0644 but owned by another user (who can chmod and rewrite it): refused, naming owners."""
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = _write(tmp_path, name, text, 0o644)
    os.chown(path, NOBODY, -1)
    with pytest.raises(error, match=rf"owned by uid {NOBODY}; only uid 0 .* or root"):
        load(path)


def test_config_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    """A 0777 directory lets anyone rename a file of theirs over it; sticky (1777) does not."""
    path = _write(tmp_path, "rustynetd.toml", _node_text, 0o644)
    path.parent.chmod(0o777)
    with pytest.raises(ConfigError, match=r"directory holding the configuration is writable"):
        load_node_config(path)
    path.parent.chmod(0o1777)
    assert load_node_config(path).backend == "memory"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO in place of the config: refused at once (opened non-blocking, fstat first)."""
    fifo = tmp_path / "relay.toml"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(RelayConfigError, match="is not a regular file"):
        load_relay_config(fifo)


def test_missing_and_oversized_files_keep_their_messages(tmp_path: Path) -> None:
    """Absent: `no such file`; over the cap: `larger than`, after reading at most cap+1 bytes."""
    with pytest.raises(ConfigFileRefused, match="no such file"):
        read_config_file(tmp_path / "absent.toml", max_size=10)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * 100)
    big.chmod(0o600)
    with pytest.raises(ConfigFileRefused, match="larger than 10 bytes"):
        read_config_file(big, max_size=10)


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["HOME"] = "/nonexistent"
    return subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_every_entry_point_refuses_a_0666_config_with_exit_1(tmp_path: Path) -> None:
    """rustynetd, rustynet admin, rustynet-control serve and rustynet-relay serve: exit 1 (as
    for any other config error), one line naming the file and the fix, nothing started."""
    node = _write(tmp_path / "n", "rustynetd.toml", _node_text, 0o666)
    admin = _write(tmp_path / "a", "admin.toml", _admin_text, 0o666)
    control = _write(tmp_path / "c", "control.toml", _control_text, 0o666)
    relay = _write(tmp_path / "r", "relay.toml", _relay_text, 0o666)
    runs = {
        node: _run(str(BIN / "rustynetd"), "--config", str(node)),
        admin: _run(str(BIN / "rustynet"), "admin", "--config", str(admin), "nodes", "list"),
        control: _run(str(BIN / "rustynet-control"), "serve", "--data-dir", str(control.parent)),
        relay: _run(str(BIN / "rustynet-relay"), "serve", "--config", str(relay)),
    }
    for path, done in runs.items():
        assert done.returncode == 1, (path, done.stderr)
        assert f"{path}: writable by group and others (mode 0666)" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (node.parent / "state").exists()  # refused before the state dir was made


@pytest.mark.parametrize("which", ["control", "relay"])
def test_a_world_readable_tls_key_is_refused(tmp_path: Path, which: str) -> None:
    """The TLS private key the config names must be 0600/0400 and ours, like key files."""
    if which == "control":
        config = _write(tmp_path, "control.toml", _control_text, 0o600)
        argv = [str(BIN / "rustynet-control"), "serve", "--data-dir", str(config.parent)]
        key = config.parent / "tls" / "control.key"
    else:
        config = _write(tmp_path, "relay.toml", _relay_text, 0o600)
        argv = [str(BIN / "rustynet-relay"), "serve", "--config", str(config)]
        key = config.parent / "tls" / "relay.key"
    key.parent.mkdir(mode=0o700)
    key.write_text("not read: refused before loading\n")
    key.chmod(0o644)
    done = _run(*argv)
    assert done.returncode == 1, done.stderr
    assert f"TLS private key {key}: file mode is not private (found 0644" in done.stderr
    key.chmod(0o600)  # positive control: past the check, the (bogus) key is what fails now
    done = _run(*argv)
    assert done.returncode == 1
    assert "file mode is not private" not in done.stderr


@pytest.mark.root
def test_unreadable_passphrase_file_is_a_clear_message(tmp_path: Path) -> None:
    """rustynetd without CAP_DAC_OVERRIDE (a hardened unit) and a passphrase file owned by
    another user: `cannot read the passphrase file (Permission denied)`, exit 1, not a raw
    `[Errno 13]`."""
    if os.geteuid() != 0:
        pytest.skip("needs root (setpriv --bounding-set)")
    config = _write(tmp_path, "rustynetd.toml", _node_text, 0o644)
    passphrase = config.parent / "keystore.pass"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o600)
    os.chown(passphrase, NOBODY, -1)
    config.write_text(
        _node_text(config.parent) + 'keystore = "file"\npassphrase_file = "keystore.pass"\n'
    )
    done = _run(
        "setpriv",
        "--bounding-set=-dac_override,-dac_read_search",
        str(BIN / "rustynetd"),
        "--config",
        str(config),
    )
    assert done.returncode == 1, done.stderr
    assert "Errno" not in done.stderr
    assert (
        f"{passphrase}: cannot read the passphrase file (Permission denied); it must be a "
        "0600/0400 file owned by uid 0" in done.stderr
    )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("--token-file", "{empty}"), None, "empty, expected one join token"),
        (("--token-file", "-"), "\n", "empty, expected one join token"),
        (("--token", ""), None, "--token: empty"),
        (("--token-file", "{absent}"), None, "cannot read: No such file or directory"),
        (("--token-file", "{two}"), None, "expected one join token (rnjoin1_...)"),
    ],
)
def test_an_unusable_join_token_exits_1_like_a_refused_one(
    tmp_path: Path, args: tuple[str, ...], stdin: str | None, message: str
) -> None:
    """Empty, absent or multi-line: exit 1 (the code of a token the daemon refuses), checked
    before the daemon is asked (the socket here does not exist)."""
    (tmp_path / "empty").write_text("")
    (tmp_path / "two").write_text("rnjoin1_a\nrnjoin1_b\n")
    names = {"empty": tmp_path / "empty", "absent": tmp_path / "absent", "two": tmp_path / "two"}
    argv = [a.format(**names) for a in args]
    err = io.StringIO()
    ns = cli.build_parser().parse_args(["--socket", str(tmp_path / "no.sock"), "up", *argv])
    code = node_cli.run_node_command(ns, io.StringIO(), err, io.StringIO(stdin or ""))
    assert code == 1, err.getvalue()
    assert message in err.getvalue()
    assert "cannot reach rustynetd" not in err.getvalue()


def test_empty_token_file_exits_1_from_the_console_script(tmp_path: Path) -> None:
    """The case the issue found, through the installed `rustynet` script: 1, not 2."""
    empty = tmp_path / "token"
    empty.write_text("")
    done = _run(
        str(BIN / "rustynet"),
        "--socket",
        str(tmp_path / "no.sock"),
        "up",
        "--token-file",
        str(empty),
    )
    assert done.returncode == 1, done.stderr
    assert "empty, expected one join token" in done.stderr
